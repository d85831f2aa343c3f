"""python -m localcloud {up|check|status|shell NAME|lose NAME|down} [--stack S]  (a whole stack)
   python -m localcloud {image|droplets|teardown|leftovers}          (the low layer)"""

import argparse
import json
import os
import sys
from dataclasses import asdict

from . import cloud, image, stack, teardown, tenancy

# The verbs that boot or remove droplets: not while a test run has the local cloud.
CHANGING = ("up", "lose", "down", "teardown")


def changes(pairs: list[str]) -> dict:
    import yaml
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="localcloud")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("up", "boot the stack from the program's plan, run its pushes"),
                       ("check", "prove the basic path from the internet client"),
                       ("status", "the stack's droplets and their cloud-init status"),
                       ("down", "remove the stack's droplets, volumes and firewalls")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--stack", default="staging")
        if name == "up":
            cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="changes",
                             help="a setting for this run, as `pulumi config set` (YAML value), e.g. appServerCount=3")
            cmd.add_argument("--order", choices=stack.ORDERS, default="engine",
                             help="engine: commands start as soon as what they depend on exists, many at once "
                                  "(as `pulumi up`); serial: one at a time once every droplet has booted")
    lose = sub.add_parser("lose", help="destroy one droplet and its volumes, as if lost (the next up rebuilds them)")
    lose.add_argument("name", help="lb, app-1, datastore, ... or the droplet's full name")
    lose.add_argument("--stack", default="staging")
    lose.add_argument("--keep-volumes", action="store_true", help="the volumes survive (the next up attaches them)")
    sh = sub.add_parser("shell", help="a root shell on one of the stack's droplets")
    sh.add_argument("name", help="lb, app-1, datastore, ... or the droplet's full name")
    sh.add_argument("--stack", default="staging")
    sub.add_parser("image", help="build the droplet image (cached)")
    sub.add_parser("droplets", help="every droplet of the local cloud")
    td = sub.add_parser("teardown", help="remove everything, also after a killed run")
    td.add_argument("--keep-volumes", action="store_true")
    sub.add_parser("leftovers", help="list what of ours is still on the machine")
    args = p.parse_args()
    if args.cmd not in CHANGING:
        return run(args)
    with tenancy.alone(f"localcloud {args.cmd}"):
        return run(args)


def run(args) -> int:
    if args.cmd in ("up", "check", "status", "shell", "lose", "down"):
        from . import checks
        plan = stack.plan(args.stack, changes(args.changes)) if args.cmd == "up" else stack.deployed(args.stack)
        if args.cmd == "up":
            result = stack.up(plan, order=args.order)
            return 0 if stack.healthy(result) else 1
        if args.cmd == "check":
            return 0 if checks.check_passed(checks.check(plan), plan) else 1
        if args.cmd == "status":
            print(json.dumps(stack.status(plan), indent=1))
        elif args.cmd == "shell":
            argv = stack.shell_argv(plan.droplet(args.name).name)
            os.execvp(argv[0], argv)
        elif args.cmd == "lose":
            stack.lose(plan, args.name, keep_volumes=args.keep_volumes)
        elif args.cmd == "down":
            stack.down(plan)
    elif args.cmd == "image":
        print(image.build())
    elif args.cmd == "droplets":
        print(json.dumps({n: asdict(i) for n, i in cloud.status().items()}, indent=1))
    elif args.cmd == "teardown":
        teardown.teardown(keep_volumes=args.keep_volumes)
    elif args.cmd == "leftovers":
        print(json.dumps(teardown.leftovers(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
