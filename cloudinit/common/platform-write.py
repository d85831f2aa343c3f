#!/usr/bin/python3
"""Writes a file only when it differs: the one home of that rule on a droplet.

    platform-write PATH MODE OWNER:GROUP < CONTENT

The content comes on stdin (a secret never appears in argv). When the file already has
this content, mode and owner, nothing is touched and nothing is printed; otherwise the
new file is written beside it and renamed into place (a reader never sees half a file),
and `changed` is printed. Provisioning (common.sh `write_file`) calls it; platform-push
loads this file and calls `write_if_differs` and `replace`.
"""

import grp
import os
import pwd
import stat
import sys
import tempfile


def ids(owner):
    user, group = owner.split(":")
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def read(path):
    """The file's bytes; None when there is no file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def is_as_asked(path, content, mode, owner):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    return (stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == int(mode, 8)
            and (info.st_uid, info.st_gid) == ids(owner) and read(path) == content)


def replace(path, content, mode, owner):
    """Writes the file beside its place, then renames it there."""
    uid, gid = ids(owner)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".platform-write-")
    try:
        os.fchmod(fd, int(mode, 8))
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_if_differs(path, content, mode, owner):
    """True when the file was written; False when it already was as asked."""
    if is_as_asked(path, content, mode, owner):
        return False
    replace(path, content, mode, owner)
    return True


def main(argv):
    if len(argv) != 3 or not argv[0].startswith("/") or ":" not in argv[2]:
        sys.exit("usage: platform-write PATH MODE OWNER:GROUP < CONTENT")
    path, mode, owner = argv
    if write_if_differs(path, sys.stdin.buffer.read(), mode, owner):
        print("changed")


if __name__ == "__main__":
    main(sys.argv[1:])
