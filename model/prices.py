"""DigitalOcean list prices, dated, for the stack's cost estimate.

The table is also the list of droplet sizes the settings accept: a size we cannot price is
a size we have not looked at. Check https://www.digitalocean.com/pricing before relying on
a figure; update PRICES_AS_OF with the table.
"""

PRICES_AS_OF = "2025-06-01"
CURRENCY = "USD"

# Monthly price of a droplet by size slug (memory / vCPUs / disk in the slug's family).
DROPLET_MONTHLY = {
    "s-1vcpu-512mb-10gb": 4.00,
    "s-1vcpu-1gb": 6.00,
    "s-1vcpu-2gb": 12.00,
    "s-2vcpu-2gb": 18.00,
    "s-2vcpu-4gb": 24.00,
    "s-4vcpu-8gb": 48.00,
    "s-8vcpu-16gb": 96.00,
    "g-2vcpu-8gb": 63.00,
    "g-4vcpu-16gb": 126.00,
    "c-2": 42.00,
    "c-4": 84.00,
    "m-2vcpu-16gb": 84.00,
}

VOLUME_MONTHLY_PER_GIB = 0.10
# The Spaces subscription: 250 GiB stored and 1 TiB outbound included.
SPACES_MONTHLY = 5.00
# Weekly droplet backups cost this share of the droplet's price.
DROPLET_BACKUP_SHARE = 0.20
# A reserved IP assigned to a droplet is free.
RESERVED_IP_MONTHLY = 0.00


def monthly_estimate(
    *, droplet_sizes: list[str], volume_gib: int, spaces: bool, droplet_backups: bool
) -> dict:
    """The stack's monthly cost, line by line, from the table above."""
    lines = {}
    for size in sorted(set(droplet_sizes)):
        count = droplet_sizes.count(size)
        lines[f"{count} x droplet {size}"] = round(count * DROPLET_MONTHLY[size], 2)
    if droplet_backups:
        lines["droplet backups (weekly)"] = round(
            DROPLET_BACKUP_SHARE * sum(DROPLET_MONTHLY[s] for s in droplet_sizes), 2
        )
    lines[f"volume {volume_gib} GiB"] = round(volume_gib * VOLUME_MONTHLY_PER_GIB, 2)
    lines["reserved IP (assigned)"] = RESERVED_IP_MONTHLY
    if spaces:
        lines["Spaces subscription (backups)"] = SPACES_MONTHLY
    return {
        "currency": CURRENCY,
        "prices_as_of": PRICES_AS_OF,
        "lines": lines,
        "total": round(sum(lines.values()), 2),
    }
