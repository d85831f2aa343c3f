"""The platform's shared model: its settings, naming and path conventions, firewall rules
and prices. The Pulumi components, the droplets' files (`cloudinit/`), the local cloud and
the deploy tool all read it; it imports none of them."""
