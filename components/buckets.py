"""The stack's Spaces buckets: one per role for its backups, one for the release archive.

Each gets a key granted on it alone (components/backups.py, release_archive.py), so the
key on a droplet reaches its own role's bucket and nothing else: root on an app server
cannot delete the datastore's backups or replace an archived release.
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from model import conventions
from model.settings import Settings


def spaces_bucket(name: str, *, settings: Settings, purpose: str, parent: pulumi.Resource | None = None) -> do.SpacesBucket:
    """A private, versioned bucket (purpose: a role or conventions.RELEASES), protected
    with the stack's data (protectData)."""
    bucket = do.SpacesBucket(
        name,
        name=conventions.bucket_name(settings.stack, settings.domain, purpose),
        region=settings.spaces_region,
        acl="private",
        versioning=do.SpacesBucketVersioningArgs(enabled=True),
        # A bucket holding objects (or old versions) cannot be deleted: an unprotected
        # stack's destroy empties it first, so it goes in one command; a protected
        # one's bucket stays (protect refuses its deletion, and it is never emptied).
        force_destroy=not settings.protect_data,
        lifecycle_rules=[
            do.SpacesBucketLifecycleRuleArgs(
                enabled=True,
                abort_incomplete_multipart_upload_days=1,
                # Retention itself is the backup tool's (or the deploy's); this only clears what it deleted.
                noncurrent_version_expiration=do.SpacesBucketLifecycleRuleNoncurrentVersionExpirationArgs(
                    days=conventions.BUCKET_NONCURRENT_DAYS
                ),
            )
        ],
        # Named from the domain at creation, for a name unique among every account's; a
        # later domain change keeps the bucket and what it holds. Its region is its
        # creation's too: the provider moves a bucket by making a new one and deleting the
        # old, with every backup and release in it (and bucket names are global, so the
        # new one could not even take the name while the old one exists).
        opts=pulumi.ResourceOptions(parent=parent, protect=settings.protect_data, ignore_changes=["name", "region"]),
    )
    bucket.region.apply(lambda region: _warn_if_elsewhere(bucket, region, settings))
    return bucket


def _warn_if_elsewhere(bucket: do.SpacesBucket, region: str | None, settings: Settings) -> None:
    if region and region != settings.spaces_region:
        pulumi.log.warn(
            f"spacesRegion: the bucket stays in {region}, where it was made, not in {settings.spaces_region}: "
            f"moving it would delete it with what it holds. Buckets are made in spacesRegion (empty: region) "
            f"only when they are created", resource=bucket)
