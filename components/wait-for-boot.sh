# The boot gate of components/remote.py: waits until a new droplet takes SSH logins and
# has finished its first boot, then its platform may be pushed. Runs on the
# machine that runs `pulumi up`, with bash and OpenSSH's client.
# Environment: PLATFORM_SSH_KEY (the automation key; never printed), PLATFORM_SSH_LOGIN
# (user@host) and PLATFORM_SSH_JUMP (user@host of the jump host, or empty).
set -u
key=$(mktemp)   # 0600
trap 'rm -f "$key"' EXIT
printf '%s\n' "$PLATFORM_SSH_KEY" > "$key"
options=(@SSH_OPTIONS@ -i "$key" -o IdentitiesOnly=yes)
via=()
if [ -n "${PLATFORM_SSH_JUMP:-}" ]; then
    via=(-o "ProxyCommand=ssh ${options[*]} -W %h:%p $PLATFORM_SSH_JUMP")
fi
# On the droplet: 0 when first boot is done, else what cloud-init is doing.
probe='test -e @FIRST_BOOT_DONE@ || { cloud-init status 2>&1 | tail -n 1; exit 1; }'
wait_seconds=@WAIT_SECONDS@
started=$SECONDS
last_said=$SECONDS
while :; do
    # shellcheck disable=SC2029 # $probe is meant for the droplet's shell
    answer=$(ssh "${options[@]}" "${via[@]}" "$PLATFORM_SSH_LOGIN" "$probe" 2>&1 < /dev/null) && break
    waited=$((SECONDS - started))
    if [ "$waited" -ge "$wait_seconds" ]; then
        echo "$PLATFORM_SSH_LOGIN not ready after ${waited}s: ${answer:-ssh failed}" >&2
        exit 1
    fi
    if [ $((SECONDS - last_said)) -ge 30 ]; then
        echo "waiting for $PLATFORM_SSH_LOGIN (${waited}s): ${answer:-ssh failed}"
        last_said=$SECONDS
    fi
    sleep @RETRY_SECONDS@
done
echo "$PLATFORM_SSH_LOGIN is ready (after $((SECONDS - started))s)"
