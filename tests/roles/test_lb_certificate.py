"""The LB's certificate: the retry units, the deploy hook that keeps the old certificate
when nginx rejects the new one, and platform-certificate against pebble as the domain,
the ACME server and the e-mail change (run in private namespaces)."""

from __future__ import annotations

import json

import cloudinit
import mockcloud
from model import conventions as c

from render_helpers_lb_app import in_namespace, issue, make_ca, put, require, run, self_signed
from role_checks import sandboxed
from lb_sandbox import initial_upstreams, lb_files, lb_tree, rendered_domain


def test_systemd_units_for_the_certificate_retry():
    files = lb_files()
    service = files["/etc/systemd/system/platform-certificate.service"]
    timer = files["/etc/systemd/system/platform-certificate.timer"]
    assert f"ExecStart={c.CERTIFICATE_COMMAND}" in service and "Type=oneshot" in service
    assert "OnUnitInactiveSec=" in timer and "WantedBy=timers.target" in timer
    certbot = files[c.CERTIFICATE_COMMAND]
    for flag in ("certonly", "--webroot", '--server "$ACME_DIRECTORY"', '--email "$ACME_EMAIL"',
                 "--agree-tos", "--non-interactive", f"--deploy-hook {c.CERTIFICATE_DEPLOY_HOOK}"):
        assert flag in certbot


def test_deploy_hook_keeps_the_old_certificate_when_nginx_rejects_the_new_one(tmp_path):
    """Run the real hook in a namespace: a broken lineage must leave the links as they were."""
    ca = make_ca(tmp_path / "ca", "ca")
    root = lb_tree(tmp_path, lb_files(), initial_upstreams(), ca.cert)
    good = self_signed(tmp_path / "good", "good", rendered_domain())
    lineage = "/etc/letsencrypt/live/platform"
    put(root, f"{lineage}/fullchain.pem", "not a certificate\n")
    put(root, f"{lineage}/privkey.pem", good.key)
    put(root, "/etc/platform/tls/public/self-signed.crt", good.cert)
    put(root, "/etc/platform/tls/public/self-signed.key", good.key)
    put(root, c.LOCK_COMMAND, lb_files()[c.LOCK_COMMAND])
    (root / "upper" / c.LOCK_COMMAND.lstrip("/")).chmod(0o755)
    hook = tmp_path / "hook.sh"
    hook.write_text(lb_files()[c.CERTIFICATE_DEPLOY_HOOK])
    hook.chmod(0o755)
    script = (
        "set -e; cd /etc/platform/tls/public; rm -f fullchain.pem privkey.pem; "
        "ln -s /etc/platform/tls/public/self-signed.crt fullchain.pem; "
        "ln -s /etc/platform/tls/public/self-signed.key privkey.pem; "
        f"if RENEWED_LINEAGE={lineage} bash {hook}; then echo HOOK-PASSED; fi; readlink fullchain.pem"
    )
    result = run(in_namespace(root, ["sh", "-c", script]))
    assert "HOOK-PASSED" not in result.stdout, result.stdout + result.stderr
    assert result.stdout.strip().endswith("/etc/platform/tls/public/self-signed.crt"), result.stdout + result.stderr
    assert "kept the previous certificate" in result.stderr


# --- domain, acmeDirectory and acmeEmail changed on a running LB -------------------------------


def test_a_new_domain_gets_a_new_certificate_and_the_old_one_serves_until_then(tmp_path):
    """The rendered platform-certificate against pebble (the local ACME server, validation
    off) in a private namespace: a first certificate for one domain; the domain changed
    while the ACME server is down (the old certificate stays linked); then a new one for the
    new domain; the e-mail changed (the account is updated); nothing more to ask."""
    require("pebble")
    require("certbot")
    stages = {name: mockcloud.stack_settings("staging", backups=False, **change) for name, change in {
        "first": {"domain": "first.example.test"},
        "second": {"domain": "second.example.test"},
        "email": {"domain": "second.example.test", "acmeEmail": "new-ops@example.test"},
        "alias": {"domain": "second.example.test", "acmeEmail": "new-ops@example.test",
                  "domainAliases": ["www.second.example.test"]},
        "unaliased": {"domain": "second.example.test", "acmeEmail": "new-ops@example.test"},
    }.items()}
    directory = "https://127.0.0.1:14000/dir"
    ca = make_ca(tmp_path / "ca", "ca")
    tls = issue(ca, tmp_path / "ca", "pebble", dns=["localhost"], ips=["127.0.0.1"])
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": str(tls.cert), "privateKey": str(tls.key), "httpPort": 5002, "tlsPort": 5001,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    files = cloudinit.rendered_files(c.LOAD_BALANCER, stages["first"])
    (tmp_path / "certificate.sh").write_text(files[c.CERTIFICATE_COMMAND])
    (tmp_path / "lock.py").write_text(files[c.LOCK_COMMAND])
    for name, s in stages.items():
        env = cloudinit.role_env(c.LOAD_BALANCER, s, cloudinit.config_files(c.LOAD_BALANCER, s))
        (tmp_path / f"{name}.env").write_text(env.replace(f"ACME_DIRECTORY={s.acme_directory}",
                                                          f"ACME_DIRECTORY={directory}"))
    live = f"/etc/letsencrypt/live/{c.LB_CERT_NAME}"
    script = f"""
ip link set lo up
mount -t tmpfs tmpfs /var/www && mkdir -p {c.ACME_WEBROOT}
export REQUESTS_CA_BUNDLE={ca.cert} PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_WFE_NONCEREJECT=0
install -D -m 0755 {tmp_path}/certificate.sh {c.CERTIFICATE_COMMAND}
install -D -m 0755 {tmp_path}/lock.py {c.LOCK_COMMAND}
# certbot's deploy hook without nginx: it switches the links, as the real one does.
mkdir -p $(dirname {c.LB_PUBLIC_CERT_PATH})
printf '#!/bin/sh\\nln -sfn "$RENEWED_LINEAGE/fullchain.pem" {c.LB_PUBLIC_CERT_PATH}\\necho "hook: $RENEWED_LINEAGE"\\n' > {c.CERTIFICATE_DEPLOY_HOOK}
chmod 0755 {c.CERTIFICATE_DEPLOY_HOOK}
pebble_up() {{ pebble -config {tmp_path}/pebble.json >>{tmp_path}/pebble.log 2>&1 & for _ in $(seq 50); do curl -s --cacert {ca.cert} {directory} >/dev/null && return; sleep 0.2; done; echo "pebble did not start"; }}
stage() {{
    cp {tmp_path}/$1.env {c.PLATFORM_ETC}/platform.env
    {c.CERTIFICATE_COMMAND} current; echo "== $1 current before: $?"
    {c.CERTIFICATE_COMMAND} >>{tmp_path}/certbot.out 2>&1; echo "== $1 asked: $?"
    {c.CERTIFICATE_COMMAND} current; echo "== $1 current after: $?"
    echo "== $1 serves: $(openssl x509 -noout -ext subjectAltName -in {c.LB_PUBLIC_CERT_PATH} | tail -1 | tr -d ' ') via $(readlink {c.LB_PUBLIC_CERT_PATH})"
    echo "== $1 account updates: $(grep -c 'e-mail address was updated to new-ops@example.test' {tmp_path}/certbot.out)"
}}
mkdir -p {c.PLATFORM_ETC}
pebble_up
stage first
# The ACME server unreachable (not restarted: pebble forgets its accounts when it restarts).
iptables -I INPUT -p tcp --dport 14000 -j REJECT
stage second
iptables -D INPUT -p tcp --dport 14000 -j REJECT
stage second
stage email
stage email
stage alias
stage unaliased
cat {tmp_path}/certbot.out | grep -v '^ *$' | tail -40
"""
    result = sandboxed(tmp_path, script, network=True, timeout=240)
    out = result.stdout + result.stderr
    lines = [l for l in out.splitlines() if l.startswith("== ")]
    serves = lambda name: f"DNS:{name}.example.test via {live}/fullchain.pem"  # noqa: E731
    expected = [
        "== first current before: 1", "== first asked: 0", "== first current after: 0",
        f"== first serves: {serves('first')}",
        # The ACME server is down: no new certificate, and the old one still serves.
        "== second current before: 1", "== second asked: 1", "== second current after: 1",
        f"== second serves: {serves('first')}",
        "== second current before: 1", "== second asked: 0", "== second current after: 0",
        f"== second serves: {serves('second')}",
        "== email current before: 0", "== email asked: 0", "== email current after: 0",
        f"== email serves: {serves('second')}",
        "== email current before: 0", "== email asked: 0", "== email current after: 0",
        f"== email serves: {serves('second')}",
        # An alias added, then removed: each a new certificate with exactly those names.
        "== alias current before: 1", "== alias asked: 0", "== alias current after: 0",
        f"== alias serves: DNS:second.example.test,DNS:www.second.example.test via {live}/fullchain.pem",
        "== unaliased current before: 1", "== unaliased asked: 0", "== unaliased current after: 0",
        f"== unaliased serves: {serves('second')}",
    ]
    got = [l for l in lines if " account updates: " not in l]
    assert got == expected, out
    # The account is told the new address once, when acmeEmail changed.
    updates = [l.rsplit(" ", 1)[1] for l in lines if " account updates: " in l]
    assert updates == ["0", "0", "0", "1", "1", "1", "1"], out


def provisioning_holds_the_lock(t, meanwhile: str) -> str:
    """Shell: provisioning's stand-in takes the droplet lock, runs `meanwhile` a second
    later and lets go; the script goes on once the lock is held (`wait` for its end)."""
    return (f"{c.LOCK_COMMAND} run provision sh -c 'touch {t}/holding; sleep 1; {meanwhile}' &\n"
            f"until [ -e {t}/holding ]; do sleep 0.05; done")


# Shell: each take and release of the droplet lock, in order, as `== took|released HOLDER`.
LOCK_TAKES = f"sed -n 's/^[^ ]* \\(took\\|released\\) droplet lock: \\([a-z-]*\\) .*/== \\1 \\2/p' {c.DROPLET_LOCK_LOG}"


def test_a_certificate_run_waits_for_the_droplet_lock_and_reads_the_settings_left_by_its_holder(tmp_path):
    """The timer may start platform-certificate while provisioning writes new settings and
    nginx files: it waits for provisioning's hold, then reads the settings it left (here a
    name added: the certificate in place is no longer as asked)."""
    domain_only = mockcloud.stack_settings("staging", backups=False)
    aliased = mockcloud.stack_settings("staging", backups=False, domainAliases=[f"www.{domain_only.domain}"])
    files = cloudinit.rendered_files(c.LOAD_BALANCER, domain_only)
    (tmp_path / "certificate.sh").write_text(files[c.CERTIFICATE_COMMAND])
    (tmp_path / "lock.py").write_text(files[c.LOCK_COMMAND])
    for name, s in (("old", domain_only), ("new", aliased)):
        (tmp_path / f"{name}.env").write_text(
            cloudinit.role_env(c.LOAD_BALANCER, s, cloudinit.config_files(c.LOAD_BALANCER, s)))
    live = f"/etc/letsencrypt/live/{c.LB_CERT_NAME}"
    cert = self_signed(tmp_path / "cert", "cert", domain_only.domain)
    t = tmp_path
    script = f"""
install -D -m 0755 {t}/certificate.sh {c.CERTIFICATE_COMMAND}
install -D -m 0755 {t}/lock.py {c.LOCK_COMMAND}
mkdir -p {c.PLATFORM_ETC} {live} /etc/letsencrypt/renewal && cp {t}/old.env {c.PLATFORM_ETC}/platform.env
cp {cert.cert} {live}/fullchain.pem
echo "server = {domain_only.acme_directory}" > /etc/letsencrypt/renewal/{c.LB_CERT_NAME}.conf
{c.CERTIFICATE_COMMAND} current; echo "== before: $?"
{provisioning_holds_the_lock(t, f"cp {t}/new.env {c.PLATFORM_ETC}/platform.env")}
{c.CERTIFICATE_COMMAND} current; echo "== during: $?"
wait
{LOCK_TAKES}
"""
    result = sandboxed(tmp_path, script)
    lines = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert lines == ["== before: 0", "== during: 1",
                     "== took certificate", "== released certificate",     # the run before
                     "== took provision", "== released provision",
                     "== took certificate", "== released certificate"], result.stdout + result.stderr


def test_a_renewal_waits_for_the_droplet_lock_before_it_reloads_nginx(tmp_path):
    """certbot.timer's renewal runs the deploy hook outside any hold: it waits for a
    provisioning run changing nginx's files, then checks and reloads. The hook run by
    platform-certificate (inside its hold) does not wait for its own run. nginx, the
    reload and systemctl (the backup it starts) are stand-ins that say when they ran."""
    files = lb_files()
    t = tmp_path
    (t / "hook.sh").write_text(files[c.CERTIFICATE_DEPLOY_HOOK])
    (t / "lock.py").write_text(files[c.LOCK_COMMAND])
    lineage = f"/etc/letsencrypt/live/{c.LB_CERT_NAME}"
    script = f"""
export PATH=/usr/local/sbin:$PATH
install -D -m 0755 {t}/hook.sh {c.CERTIFICATE_DEPLOY_HOOK}
install -D -m 0755 {t}/lock.py {c.LOCK_COMMAND}
printf '#!/bin/sh\\necho "nginx $*" >> {t}/order\\n' > /usr/local/sbin/nginx
printf '#!/bin/sh\\necho "systemctl $*" >> {t}/order\\n' > /usr/local/sbin/systemctl
printf '#!/bin/sh\\necho reload >> {t}/order\\n' > {c.NGINX_RELOAD_COMMAND}
chmod 0755 /usr/local/sbin/nginx /usr/local/sbin/systemctl {c.NGINX_RELOAD_COMMAND}
mkdir -p $(dirname {c.LB_PUBLIC_CERT_PATH})
{provisioning_holds_the_lock(t, f'echo "provisioning wrote nginx files" >> {t}/order')}
RENEWED_LINEAGE={lineage} {c.CERTIFICATE_DEPLOY_HOOK}; echo "== renewal: $?"
wait
RENEWED_LINEAGE={lineage} timeout 20 {c.LOCK_COMMAND} run certificate {c.CERTIFICATE_DEPLOY_HOOK}; echo "== certificate run: $?"
sed 's/^/== /' {t}/order
{LOCK_TAKES}
echo "== serves $(readlink {c.LB_PUBLIC_CERT_PATH})"
"""
    result = sandboxed(tmp_path, script)
    lines = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert lines == ["== renewal: 0", "== certificate run: 0",
                     "== provisioning wrote nginx files", *[
                         "== nginx -t -q", "== reload", f"== systemctl start --no-block {c.BACKUP_UNIT}.service"] * 2,
                     "== took provision", "== released provision",
                     "== took certificate-renewal", "== released certificate-renewal",
                     "== took certificate", "== released certificate",
                     f"== serves {lineage}/fullchain.pem"], result.stdout + result.stderr
