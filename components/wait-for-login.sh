# Waits until a new droplet takes SSH logins (the login gate of components/remote.py).
# Runs on the machine that runs `pulumi up`, with bash and OpenSSH's client.
# Environment: PLATFORM_SSH_KEY (the automation key; never printed), PLATFORM_SSH_LOGIN
# (user@host) and PLATFORM_SSH_JUMP (user@host of the jump host, or empty).
set -u
key=$(mktemp)   # 0600
trap 'rm -f "$key"' EXIT
printf '%s\n' "$PLATFORM_SSH_KEY" > "$key"
options=(@SSH_OPTIONS@ -i "$key" -o IdentitiesOnly=yes)
via=()
if [ -n "${PLATFORM_SSH_JUMP:-}" ]; then
    # Quoted for ssh's ProxyCommand, which a shell splits.
    via=(-o "ProxyCommand=ssh ${options[*]} -W %h:%p $PLATFORM_SSH_JUMP")
fi
wait_seconds=@WAIT_SECONDS@
started=$SECONDS
last_said=$SECONDS
until answer=$(ssh "${options[@]}" "${via[@]}" "$PLATFORM_SSH_LOGIN" true 2>&1 < /dev/null); do
    waited=$((SECONDS - started))
    if [ "$waited" -ge "$wait_seconds" ]; then
        echo "$PLATFORM_SSH_LOGIN takes no logins after ${waited}s: ${answer:-ssh failed}" >&2
        exit 1
    fi
    if [ $((SECONDS - last_said)) -ge 30 ]; then
        echo "waiting for $PLATFORM_SSH_LOGIN to take logins (${waited}s): ${answer:-ssh failed}"
        last_said=$SECONDS
    fi
    sleep @RETRY_SECONDS@
done
echo "$PLATFORM_SSH_LOGIN takes logins (after $((SECONDS - started))s)"
