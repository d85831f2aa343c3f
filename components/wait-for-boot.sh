# The boot gate of components/remote.py: waits until a new droplet takes SSH logins and
# has finished its first boot, then its platform may be pushed. Runs on the
# machine that runs `pulumi up`, with bash and OpenSSH's client.
# Environment: PLATFORM_SSH_KEY (the automation key; never printed), PLATFORM_SSH_LOGIN
# (user@host), PLATFORM_SSH_JUMP (user@host of the jump host, or empty) and
# PLATFORM_SSH_JUMP_HOST_KEY (the jump host's key, as its own gate recorded it).
# Its stdout is the droplet's host key, recorded at this first contact (trust on first
# use), for every later connection to pin; what it says while it waits goes to stderr.
set -u
umask 077           # ssh refuses a private key others may read
work=$(mktemp -d)   # 0700: the key and the known_hosts files, named relative to it
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
printf '%s\n' "$PLATFORM_SSH_KEY" > key
options=(@SSH_OPTIONS@ -i "$work/key" -o IdentitiesOnly=yes)
via=()
if [ -n "${PLATFORM_SSH_JUMP:-}" ]; then
    # The jump host's key was recorded by its own gate: only that key is accepted (filed
    # under an alias, so the login may be user@host or ssh://user@host:port alike).
    printf 'jump-host %s\n' "$PLATFORM_SSH_JUMP_HOST_KEY" > pinned
    via=(-o "ProxyCommand=ssh ${options[*]} @PINNED_OPTIONS@ -o HostKeyAlias=jump-host -W %h:%p $PLATFORM_SSH_JUMP")
fi
# On the droplet: 0 when first boot is done, else what cloud-init is doing.
probe='test -e @FIRST_BOOT_DONE@ || { cloud-init status 2>&1 | tail -n 1; exit 1; }'
wait_seconds=@WAIT_SECONDS@
started=$SECONDS
last_said=$SECONDS
while :; do
    # Each try starts with no key known: the key kept is the one of the login that found
    # the droplet provisioned (a booting droplet may still be making its keys).
    : > seen
    # shellcheck disable=SC2029 # $probe is meant for the droplet's shell
    answer=$(ssh "${options[@]}" @FIRST_USE_OPTIONS@ "${via[@]}" "$PLATFORM_SSH_LOGIN" "$probe" 2>&1 < /dev/null) && break
    waited=$((SECONDS - started))
    if [ -n "${PLATFORM_SSH_JUMP:-}" ] && [[ "$answer" == *"Host key verification failed"* ]]; then
        echo "$PLATFORM_SSH_JUMP (the jump host) does not have the host key recorded at its first contact:" \
             "refusing to log in through it: $answer" >&2
        exit 1
    fi
    if [ "$waited" -ge "$wait_seconds" ]; then
        echo "$PLATFORM_SSH_LOGIN not ready after ${waited}s: ${answer:-ssh failed}" >&2
        exit 1
    fi
    if [ $((SECONDS - last_said)) -ge 30 ]; then
        echo "waiting for $PLATFORM_SSH_LOGIN (${waited}s): ${answer:-ssh failed}" >&2
        last_said=$SECONDS
    fi
    sleep @RETRY_SECONDS@
done
echo "$PLATFORM_SSH_LOGIN is ready (after $((SECONDS - started))s)" >&2
host_key=$(awk '$2 == "@HOST_KEY_TYPE@" { print $2, $3; exit }' seen)
if [ -z "$host_key" ]; then
    echo "$PLATFORM_SSH_LOGIN: logged in, but no @HOST_KEY_TYPE@ host key was recorded" >&2
    exit 1
fi
echo "$host_key"
