"""The stack's network: one VPC, role tags, and the cloud firewall of each role.

Every droplet is created here, so each one lands in the VPC with its stack and role
tags; firewalls attach by tag, so a new app server is covered the moment it exists.
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

import cloudinit

from model import conventions, firewalls
from .remote import AutomationKey
from model.settings import Settings


# How long a droplet's deletion may take: its clean shutdown, then the delete itself.
DROPLET_DELETE_TIMEOUT = "10m"


class Network(pulumi.ComponentResource):
    def __init__(
        self, name: str, *, settings: Settings, key: AutomationKey, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("node-platform:index:Network", name, None, opts)
        self._settings = settings
        self._key = key
        self._user_data: dict[str, pulumi.Output[str]] = {}
        self._bundles: dict[str, cloudinit.Bundle] = {}
        child = pulumi.ResourceOptions(parent=self)
        self.vpc = do.Vpc(
            f"{name}-vpc",
            name=conventions.vpc_name(settings.stack, settings.region, settings.vpc_ip_range),
            region=settings.region,
            ip_range=settings.vpc_ip_range,
            # Its range and region stay its creation's: the datastore refuses new ones
            # (datastore.py), and the VPC is not planned for replacement meanwhile.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ip_range", "region"]),
        )
        self.stack_tag = do.Tag(f"{name}-stack-tag", name=conventions.stack_tag(settings.stack), opts=child)
        self.role_tags = {
            role: do.Tag(f"{name}-{role}-tag", name=conventions.role_tag(settings.stack, role), opts=child)
            for role in conventions.ROLES
        }
        # Registered with the account so DigitalOcean e-mails no root password; the
        # droplets' users and keys themselves come from cloud-init.
        self.account_key = do.SshKey(
            f"{name}-automation-key",
            name=f"{settings.stack}-automation",
            public_key=key.public_key_openssh,
            opts=child,
        )
        self.register_outputs({"vpc_id": self.vpc.id})

    def droplet(
        self,
        name: str,
        *,
        role: str,
        size: str,
        parent: pulumi.Resource,
        protect: bool = False,
    ) -> do.Droplet:
        """A droplet of `role`, booting the role's cloud-config (the same for every member)."""
        settings = self._settings
        return do.Droplet(
            name,
            name=conventions.droplet_name(settings.stack, name),
            image=settings.image,
            size=size,
            region=settings.region,
            vpc_uuid=self.vpc.id,
            tags=[self.stack_tag.name, self.role_tags[role].name],
            ssh_keys=[self.account_key.fingerprint],
            user_data=self.user_data(role),
            monitoring=True,
            backups=settings.droplet_backups,
            # Deleted (replaced, or scaled in) only after a clean shutdown: the provider waits
            # for it within the delete timeout, 60 s unless told, and each of systemd's units
            # may take 90 s to stop (the datastore's engines flushing).
            graceful_shutdown=True,
            # The image and region stay those each was made with: the datastore refuses new
            # ones (datastore.py), and no droplet is planned for replacement meanwhile.
            opts=pulumi.ResourceOptions(parent=parent, protect=protect, ignore_changes=["image", "region"],
                                        custom_timeouts=pulumi.CustomTimeouts(delete=DROPLET_DELETE_TIMEOUT)),
        )

    def user_data(self, role: str) -> pulumi.Output[str]:
        """The role's cloud-config, once per role (every member boots the same). It names
        the stack and no setting: a changed setting must not replace a droplet."""
        if role not in self._user_data:
            stack = self._settings.stack
            self._user_data[role] = self._key.public_key_openssh.apply(
                lambda key: cloudinit.first_boot(role, stack, key)
            )
        return self._user_data[role]

    def bundle(self, role: str) -> cloudinit.Bundle:
        """The role's platform bundle, rendered once per role: rendering is most of the
        program's own time, and every member gets the same."""
        if role not in self._bundles:
            self._bundles[role] = cloudinit.bundle(role, self._settings)
        return self._bundles[role]

    def firewall(self, role: str, *, parent: pulumi.Resource) -> do.Firewall:
        """The role's cloud firewall, from the matrix in `firewalls`."""
        settings = self._settings
        rules = firewalls.inbound_rules(
            role, stack=settings.stack, admin_cidrs=settings.admin_cidrs, engines=settings.engines
        )
        return do.Firewall(
            f"{role}-firewall",
            name=f"{settings.stack}-{role}",
            tags=[self.role_tags[role].name],
            inbound_rules=[
                do.FirewallInboundRuleArgs(
                    protocol=rule.protocol,
                    port_range=str(rule.port),
                    source_addresses=list(rule.from_cidrs) or None,
                    source_tags=list(rule.from_tags) or None,
                )
                for rule in rules
            ],
            outbound_rules=[
                do.FirewallOutboundRuleArgs(
                    protocol=rule.protocol,
                    port_range=None if rule.protocol == "icmp" else "1-65535",
                    destination_addresses=list(rule.to_cidrs),
                )
                for rule in firewalls.OUTBOUND
            ],
            opts=pulumi.ResourceOptions(parent=parent, depends_on=list(self.role_tags.values())),
        )
