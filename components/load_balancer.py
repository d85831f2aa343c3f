"""The load balancer: the only droplet with public ports, and the SSH jump host."""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from cloudinit import load_balancer as lb_files

from . import remote

from model import conventions
from .backups import Backups
from .buckets import spaces_bucket
from .foundation import Foundation


def _in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


class LoadBalancer(pulumi.ComponentResource):
    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        base: Foundation,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("node-platform:index:LoadBalancer", name, None, opts)
        settings, network, ca, key = base.settings, base.network, base.ca, base.key
        child = pulumi.ResourceOptions(parent=self)
        self.droplet = network.droplet(
            name,
            role=conventions.LOAD_BALANCER,
            size=settings.lb_size,
            parent=self,
        )
        # The address DNS points at: it outlives a replacement of the droplet.
        # Its region stays its creation's (the datastore refuses a new one): the public
        # address is not planned for replacement meanwhile.
        self.reserved_ip = do.ReservedIp(f"{name}-ip", region=settings.region,
                                         opts=pulumi.ResourceOptions(parent=self, ignore_changes=["region"]))
        do.ReservedIpAssignment(
            f"{name}-ip-assignment",
            ip_address=self.reserved_ip.ip_address,
            droplet_id=self.droplet.id.apply(int),
            opts=child,
        )
        if settings.dns_zone:
            # The domain's record keeps its resource name; each alias inside the zone gets
            # one named after it (the others are in zones the stack does not manage).
            in_zone = [alias for alias in settings.domain_aliases if _in_zone(alias, settings.dns_zone)]
            for resource, host in [(f"{name}-dns", settings.domain)] + [(f"{name}-dns-{a}", a) for a in in_zone]:
                do.DnsRecord(
                    resource,
                    domain=settings.dns_zone,
                    type="A",
                    name=host.removesuffix(settings.dns_zone).rstrip(".") or "@",
                    value=self.reserved_ip.ip_address,
                    ttl=300,
                    opts=child,
                )
        network.firewall(conventions.LOAD_BALANCER, parent=self)

        self.public_ip = self.reserved_ip.ip_address
        self.private_ip = self.droplet.ipv4_address_private
        # pulumi-command reaches the LB directly and everything else through it (self.route).
        # Pushes to the LB, and every route through it, wait for its platform.
        self.route = remote.install_platform(
            name,
            route=remote.route_to(name, droplet=self.droplet, host=self.droplet.ipv4_address, key=key, parent=self),
            bundle=network.bundle(conventions.LOAD_BALANCER),
            parent=self,
        )
        self._settings = settings
        cert = ca.issue(
            name, dns_names=[conventions.droplet_name(settings.stack, name), settings.domain],
            ip_addresses=[self.private_ip], parent=self,
        )
        remote.push_identity(
            name, route=self.route, role=conventions.LOAD_BALANCER, settings=settings, cert=cert, parent=self
        )
        self.register_outputs({"public_ip": self.public_ip, "private_ip": self.private_ip})

    def send_traffic_to(self, app_server_addresses: list[pulumi.Output[str]], serving: list[pulumi.Resource]) -> None:
        """Push the upstream list; it changes with the pool, the LB droplet never does. It
        waits for `serving`: a new member joins only once it answers, so no request is
        sent to a server still booting."""
        addresses = pulumi.Output.all(*app_server_addresses)
        remote.push(
            f"{self._name}-upstreams-push",
            route=self.route,
            kind="upstreams",
            # The deploy login's jumps go where the requests go: to the members serving.
            files={"upstreams.conf": addresses.apply(lambda ips: lb_files.upstreams(list(ips))),
                   "deploy-permitopen.conf": addresses.apply(lambda ips: lb_files.deploy_permit_open(list(ips)))},
            parent=self,
            depends_on=serving,
        )

    def back_up(self) -> None:
        """Its certificates and configuration, daily, to a bucket of its own: a rebuilt LB
        takes its certificate back before asking Let's Encrypt for one."""
        bucket = spaces_bucket(
            f"{self._name}-backups", settings=self._settings, purpose=conventions.LOAD_BALANCER, parent=self
        )
        Backups(
            f"{self._name}-backup", settings=self._settings, role=conventions.LOAD_BALANCER, bucket=bucket,
            members={self._name: self.route}, opts=pulumi.ResourceOptions(parent=self),
        )
