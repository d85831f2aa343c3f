"""What every role's component builds on: created once per stack, handed to each part."""

from __future__ import annotations

from dataclasses import dataclass

from .network import Network
from .pki import InternalCA
from .remote import AutomationKey
from model.settings import Settings


@dataclass(frozen=True)
class Foundation:
    settings: Settings
    key: AutomationKey  # pulumi-command's SSH key, in every droplet's first boot
    network: Network  # the VPC, tags and firewalls; creates every droplet
    ca: InternalCA  # issues each droplet's certificate
