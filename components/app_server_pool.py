"""The app servers: N identical, stateless droplets; scale by changing appServerCount."""

from __future__ import annotations

import pulumi

from cloudinit import app_server as app_files

from . import remote

from model import conventions
from .backups import Backups
from .buckets import spaces_bucket
from .datastore import Datastore
from .foundation import Foundation
from model.settings import Settings


def app_secret_values(settings: Settings) -> pulumi.Output[dict[str, str]]:
    """appSecrets' values for the .env: a secret Output of their own, so the .env and the
    push carrying it are secret whatever else they hold."""
    return pulumi.Output.secret({name: s.value for name, s in settings.app_secrets.items()})


class AppServerPool(pulumi.ComponentResource):
    private_ips: list[pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        base: Foundation,
        jump: remote.SshRoute,
        datastore: Datastore,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("node-platform:index:AppServerPool", name, None, opts)
        settings, network, ca, key = base.settings, base.network, base.ca, base.key
        app_env = pulumi.Output.all(datastore.private_ip, datastore.passwords, app_secret_values(settings)).apply(
            lambda args: app_files.app_env(args[0], args[1], settings, args[2])
        )
        network.firewall(conventions.APP_SERVER, parent=self)
        # The same sources for every member: archived once, not once per server.
        example_app_archive = app_files.example_app_archive()
        bundle = network.bundle(conventions.APP_SERVER)
        self._settings = settings
        self.droplets = []
        self.private_ips = []
        self.serving: list[pulumi.Resource] = []   # the pushes after which every member serves
        self.routes: dict[str, remote.SshRoute] = {}
        previous: pulumi.Resource | None = None   # the member before: back in the LB's pool
        previous_env: pulumi.Resource | None = None   # the member before: serving with the new .env
        for number in range(1, settings.app_server_count + 1):
            member = f"{name}-{number}"
            droplet = network.droplet(
                member, role=conventions.APP_SERVER, size=settings.app_size, parent=self
            )
            address = droplet.ipv4_address_private
            route = remote.route_to(member, droplet=droplet, host=address, key=key, via=jump, parent=self)
            cert = ca.issue(
                member,
                dns_names=[conventions.droplet_name(settings.stack, member), conventions.app_pool_tls_name(settings.stack)],
                ip_addresses=[address],
                parent=self,
            )
            # A new member is provisioned at once; then one member at a time: a new bundle or
            # certificate reaches a member once the one before it is back in the LB's pool, so
            # the LB always has the others, and sends it nothing meanwhile (remote.drain_for_push).
            first = remote.first_bundle(member, route=route, bundle=bundle, parent=self)
            drain = remote.drain_for_push(
                member, lb=jump, address=address, bundle=bundle, cert=cert, parent=self,
                after=[previous] if previous else [])
            route = remote.install_platform(member, route=route, bundle=bundle, parent=self, after=[first, drain])
            tls = remote.push_identity(
                member, route=route, role=conventions.APP_SERVER, settings=settings, cert=cert, parent=self,
                tls_after=[drain],
            )
            previous = remote.back_in_pool(
                member, lb=jump, address=address, drain=drain, pushes=[route.ready, tls], parent=self)
            # A new .env (appEnv, appSecrets, the datastore's address) reaches one member at a
            # time, once the datastore takes the apps' logins: its apps must start with it
            # before they reload, and a member that served must serve with it, or it gets its
            # old .env back (platform-push); a failure stops the roll with the others serving
            # on the old one.
            env = remote.push(f"{member}-env-push", route=route, kind="env", files={".env": app_env}, parent=self,
                              depends_on=[datastore.serving, *filter(None, [previous_env])])
            previous_env = env
            # The first release, so a new stack serves something; ignored once one is deployed.
            # It starts the apps, which need their environment first: the engine would
            # otherwise run both pushes at once, in either order.
            example_app = remote.push(
                f"{member}-example-app-push",
                route=route,
                kind="example-app",
                files={"example-app.tar.gz.b64": example_app_archive},
                parent=self,
                depends_on=[env],
            )
            # It serves once its certificate and its first release are in place.
            self.serving += [tls, example_app]
            self.droplets.append(droplet)
            self.routes[member] = route
            self.private_ips.append(address)
        self.register_outputs({"private_ips": self.private_ips})

    def back_up(self) -> None:
        """Each server's configuration, daily, to the pool's own bucket (one repository for
        the pool, a series per server). app-1, which shrinking never removes, creates the
        repository; the others' pushes wait for its."""
        bucket = spaces_bucket(
            f"{self._name}-backups", settings=self._settings, purpose=conventions.APP_SERVER, parent=self
        )
        Backups(
            f"{self._name}-backup", settings=self._settings, role=conventions.APP_SERVER, bucket=bucket,
            members=self.routes, opts=pulumi.ResourceOptions(parent=self),
        )
