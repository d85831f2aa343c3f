"""localcloud: DigitalOcean-like droplets on one machine, for proving the platform works.

    from localcloud import cloud, firewall, volume, droplet
    cloud.up([cloud.DropletSpec("web-1", user_data, tags=("web",))], vpc_cidr="10.20.0.0/24")
    droplet.exec("web-1", ["curl", "-s", "localhost"])
    cloud.apply_firewalls([firewall.Firewall(...)])
    volume.create("data", 256); volume.attach("web-1", "data")
    teardown.teardown()

Needs root and the Debian packages in config.HOST_PACKAGES.
"""

from .config import HOST_PACKAGES

__all__ = ["HOST_PACKAGES"]
