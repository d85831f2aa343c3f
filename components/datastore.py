"""The datastore: one droplet whose engines keep their data on a block volume."""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do
import pulumi_random as random

from cloudinit import datastore as datastore_files

from . import remote

from model import conventions
from model.settings import Settings, SettingsError
from .backups import Backups
from .buckets import spaces_bucket
from .foundation import Foundation

PASSWORD_LENGTH = 32


class Datastore(pulumi.ComponentResource):
    private_ip: pulumi.Output[str]
    passwords: pulumi.Output[dict[str, str]]
    serving: pulumi.Resource   # the push after which its engines take the apps' logins

    def __init__(
        self,
        name: str,
        *,
        base: Foundation,
        jump: remote.SshRoute,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("node-platform:index:Datastore", name, None, opts)
        settings, network, ca, key = base.settings, base.network, base.ca, base.key
        child = pulumi.ResourceOptions(parent=self)
        kept = pulumi.ResourceOptions(parent=self, protect=settings.protect_data)
        self.droplet = network.droplet(
            name,
            role=conventions.DATASTORE,
            size=settings.datastore_size,
            parent=self,
            protect=settings.protect_data,
        )
        self.volume = do.Volume(
            f"{name}-volume",
            name=conventions.volume_name(settings.stack),
            region=settings.region,
            size=settings.volume_size_gb,
            initial_filesystem_type=conventions.VOLUME_FILESYSTEM,
            initial_filesystem_label=conventions.VOLUME_LABEL,
            description=f"{settings.stack} datastore engines' data",
            # Its region stays its creation's, so that the check below sees where it is.
            opts=pulumi.ResourceOptions.merge(kept, pulumi.ResourceOptions(ignore_changes=["region"])),
        )
        made = pulumi.Output.all(volume_id=self.volume.id, region=self.volume.region, image=self.droplet.image,
                                 vpc_ip_range=network.vpc.ip_range)
        attachment = do.VolumeAttachment(
            f"{name}-volume-attachment",
            droplet_id=self.droplet.id.apply(int),
            volume_id=made.apply(lambda found: volume_id_as_made(found, settings)),
            opts=child,
        )
        network.firewall(conventions.DATASTORE, parent=self)
        if settings.backups:
            # The bucket the stack's one backup bucket was: same resource, same name, so an
            # existing stack keeps it and restic/datastore in it.
            self.backup_bucket = spaces_bucket(
                f"{name}-backups", settings=settings, purpose=conventions.DATASTORE, parent=self
            )

        # Alphanumeric: they go into connection URLs and config files unquoted.
        # The app gets one login per engine; the datastore also needs its admin logins.
        passwords = {
            login: random.RandomPassword(
                f"{name}-{login}-password", length=PASSWORD_LENGTH, special=False, opts=child
            ).result
            for login in datastore_files.password_names()
        }
        self.passwords = pulumi.Output.secret(
            pulumi.Output.all(**{engine: passwords[engine] for engine in settings.engines})
        )
        self.private_ip = self.droplet.ipv4_address_private
        route = remote.install_platform(
            name,
            route=remote.route_to(name, droplet=self.droplet, host=self.private_ip, key=key, via=jump, parent=self),
            bundle=network.bundle(conventions.DATASTORE),
            parent=self,
            # After the volume and its attachment: a bigger volumeSizeGb is a new bundle,
            # whose provisioning grows the filesystem once the volume has grown.
            after=[attachment],
        )
        self.route = route
        cert = ca.issue(
            name, dns_names=[conventions.droplet_name(settings.stack, name)], ip_addresses=[self.private_ip],
            parent=self,
        )
        tls = remote.push_identity(
            name, route=route, role=conventions.DATASTORE, settings=settings, cert=cert, parent=self
        )
        # The engines start once the droplet's certificate is there and the passwords are
        # applied to running engines: the same order the pushes always had, now in the graph.
        self.serving = remote.push(
            f"{name}-secrets-push",
            route=route,
            kind="secrets",
            files={"secrets.env": pulumi.Output.secret(pulumi.Output.all(**passwords)).apply(datastore_files.secrets_env)},
            parent=self,
            depends_on=[tls],
        )
        if settings.backups:
            self.backups = Backups(
                f"{name}-backup", settings=settings, role=conventions.DATASTORE, bucket=self.backup_bucket,
                members={name: route}, opts=child,
            )
        self.register_outputs({"private_ip": self.private_ip})


def volume_id_as_made(made: dict, settings: Settings) -> str:
    """The volume's id, once `region`, `image` and `vpcIpRange` are those the stack was made
    with (read from its state: the program keeps each as made, with ignore_changes). A
    changed one stops the program, in the preview, before anything is replaced: a volume
    cannot leave its region, and a new image or range would replace every droplet, the
    datastore's too, whose volume the API attaches to one droplet at a time (the new
    droplet's attachment would fail, half the stack replaced)."""
    replaced = ("a new one would replace every droplet, the datastore's too, whose volume cannot be attached to "
                "the new droplet while the old one holds it")
    problems = []
    if made["region"] and made["region"] != settings.region:
        problems.append(
            f"region: {settings.region!r} is not allowed on this stack: its datastore's volume, with the engines' "
            f"data, is in {made['region']!r}, and a volume cannot leave its region (a new region would start the "
            f"datastore on an empty volume and delete this one). Set region back to {made['region']!r}; a stack "
            f"in {settings.region!r} is a new stack")
    if made["image"] and made["image"] != settings.image:
        problems.append(f"image: {settings.image!r} is not allowed on this stack: its droplets run {made['image']!r}, "
                        f"and {replaced}. Set image back to {made['image']!r}")
    if made["vpc_ip_range"] and made["vpc_ip_range"] != settings.vpc_ip_range:
        problems.append(f"vpcIpRange: {settings.vpc_ip_range!r} is not allowed on this stack: its VPC is "
                        f"{made['vpc_ip_range']!r}, and {replaced}. Set vpcIpRange back to {made['vpc_ip_range']!r}")
    if problems:
        raise pulumi.RunError(str(SettingsError(settings.stack, problems)))
    return made["volume_id"]
