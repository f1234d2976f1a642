"""S3 sync of a project's folder (pipeline spec §8.3): the request, the events a sync appends, and
the S3 settings checks with the spec's messages.

One sync is one stream `storage_sync:<sync_id>`; every event carries `project_id`:

| type                      | data                                                                  |
|---------------------------|-----------------------------------------------------------------------|
| `storage_sync.started`    | SyncStarted: destination, endpoint, why (api, cli, run, export), what  |
|                           | it will send (files, bytes) and how many files were already in sync    |
| `asset.synced`            | AssetSynced: one uploaded file: key, ETag, size, sha256 of the bytes   |
|                           | sent, the project-relative path and the assets that name the file      |
| `storage_sync.completed`  | SyncEnded: uploaded, skipped, bytes                                    |
| `storage_sync.failed`     | SyncEnded plus the error (what was uploaded before it is recorded)     |

`asset.synced` is appended after S3 acknowledged the object (PutObject or CompleteMultipartUpload),
one event per file, so an interrupted sync has recorded exactly what reached the bucket, and the
next sync sends only files whose sha256 differs from the last recorded upload of their key (or
that were never sent). A dry run appends nothing.

The run engine's post-run sync (§4.9 step 6) records its outcome on the run's own stream, after
the run's end, so it never changes the run's outcome:

| type                       | data                                                               |
|----------------------------|--------------------------------------------------------------------|
| `run.storage_synced`       | RunStorageSynced: sync id, destination, uploaded, skipped, bytes   |
| `run.storage_sync_failed`  | RunStorageSyncFailed: the error and the trigger's stderr line      |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from kroma.domain.errors import ValidationError
from kroma.events.envelope import Metadata, NewEvent

SYNC_STARTED = "storage_sync.started"
ASSET_SYNCED = "asset.synced"
SYNC_COMPLETED = "storage_sync.completed"
SYNC_FAILED = "storage_sync.failed"
SYNC_ENDS = (SYNC_COMPLETED, SYNC_FAILED)
RUN_STORAGE_SYNCED = "run.storage_synced"
RUN_STORAGE_SYNC_FAILED = "run.storage_sync_failed"
RUN_SYNC_OUTCOMES = (RUN_STORAGE_SYNCED, RUN_STORAGE_SYNC_FAILED)

S3_DISABLED = "S3 storage is disabled for this project. Enable via set-project-storage-s3."
S3_NO_BUCKET = "S3 bucket is not configured for this project."
# The reference's post-run line (§4.9 step 7), kept word for word for clients that parse stderr.
POST_RUN_PREFIX = "Rust post-run finalize skipped: "


def sync_stream(sync_id: str) -> str:
    return f"storage_sync:{sync_id}"


class SyncBody(msgspec.Struct, kw_only=True):
    """`POST .../storage/s3/sync`: `{dry_run?: bool}`."""

    dry_run: bool | None = None


@dataclass(frozen=True)
class S3Target:
    """Where a project's files go: `s3://{bucket}/{prefix}/{project id}/` (§8.3 step 2)."""

    project_id: str
    bucket: str
    prefix: str  # trimmed, without leading/trailing "/"; may be empty
    region: str
    profile: str
    endpoint_url: str

    @property
    def base_key(self) -> str:
        return f"{self.prefix}/{self.project_id}/" if self.prefix else f"{self.project_id}/"

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.base_key}"

    def key(self, relative: str) -> str:
        """The object key of a project-relative path (`/` separators)."""
        return self.base_key + relative


def s3_target(resolved: dict[str, Any], project_id: str) -> S3Target:
    """The project's destination from its resolved storage (`resolve_storage`), or the spec's 400s:
    disabled first, then an empty bucket."""
    s3 = resolved["s3"]
    if not s3["enabled"]:
        raise ValidationError(S3_DISABLED, code="s3_disabled")
    bucket = (s3["bucket"] or "").strip()
    if not bucket:
        raise ValidationError(S3_NO_BUCKET, code="s3_not_configured")
    return S3Target(
        project_id=project_id,
        bucket=bucket,
        prefix=(s3["prefix"] or "").strip().strip("/"),
        region=(s3["region"] or "").strip(),
        profile=(s3["profile"] or "").strip(),
        endpoint_url=(s3["endpoint_url"] or "").strip(),
    )


class SyncStarted(msgspec.Struct, kw_only=True):
    sync_id: str
    project_id: str
    destination: str
    bucket: str
    endpoint_url: str
    trigger: str  # api | cli | run | export
    files: int  # to upload
    bytes: int  # to upload
    skipped: int  # already in sync
    run_id: str | None = None


class AssetSynced(msgspec.Struct, kw_only=True):
    sync_id: str
    project_id: str
    path: str  # relative to the project root, `/` separators
    key: str
    bucket: str
    endpoint_url: str
    etag: str
    size: int
    sha256: str  # of the bytes sent
    asset_ids: list[str] = []  # the assets whose file this is
    multipart: bool = False
    parts: int = 1
    reused_parts: int = 0  # parts an interrupted multipart upload had already stored


class SyncEnded(msgspec.Struct, kw_only=True, omit_defaults=True):
    sync_id: str
    project_id: str
    status: str  # completed | failed
    uploaded: int
    skipped: int
    bytes: int
    error: str | None = None
    error_code: str | None = None
    error_kind: str | None = None


def sync_event(kind: str, data: msgspec.Struct, meta: Metadata) -> NewEvent:
    sync_id = data.sync_id  # type: ignore[attr-defined]
    return NewEvent(sync_stream(sync_id), kind, data, meta)
