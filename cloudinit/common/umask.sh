# Managed by platform-provision: files an operator creates in a login shell (and with sudo
# from it: sudo keeps the stricter umask) are not readable by other users. Only login
# shells read this: the program's pushes and the deploy tool run commands, not logins, and
# keep the system's 022, which the services' files rely on.
umask 027
