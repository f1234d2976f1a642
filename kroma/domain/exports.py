"""Export packages (pipeline spec §8.4; contract §3.7): the request, and the `export.created` event.

An export is one stream `export:<id>` holding `export.created`, appended once the package file is
complete on disk: its data is the `project_exports` row (ExportRecord's fields: status
`completed`, format `tar.gz`, the package's path, size and sha256) plus a summary manifest (the
package's own `manifest.json` lists every file with its checksum and provenance).
"""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.domain.errors import ValidationError
from kroma.events.envelope import Metadata, NewEvent

EXPORT_CREATED = "export.created"
INCLUDES = ("winners", "all")
SCHEMA_VERSION = "kroma.export.v1"


def export_stream(export_id: str) -> str:
    return f"export:{export_id}"


class ExportBody(msgspec.Struct, kw_only=True):
    """`POST .../exports`: `{include?: "winners"|"all", run_id?: str, upload_s3?: bool}`."""

    include: str | None = None
    run_id: str | None = None
    upload_s3: bool | None = None


class ExportRequest(msgspec.Struct, frozen=True):
    include: str  # winners | all
    run_id: str | None
    upload_s3: bool


def validate_export(body: ExportBody) -> ExportRequest:
    """Enum and blank checks, before any lookup (contract §8.1)."""
    include = (body.include or "").strip().lower() or "winners"
    if include not in INCLUDES:
        raise ValidationError(f"Field 'include' must be one of: {', '.join(INCLUDES)}")
    run_id = (body.run_id or "").strip() or None
    return ExportRequest(include=include, run_id=run_id, upload_s3=bool(body.upload_s3))


class ExportCreated(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The row of `project_exports`; created_at and completed_at are the event's own time."""

    id: str
    project_id: str
    status: str
    export_format: str
    storage_uri: str
    rel_path: str
    file_size_bytes: int
    checksum_sha256: str
    manifest_json: Any
    run_id: str | None = None


def export_created(record: ExportCreated, meta: Metadata) -> NewEvent:
    return NewEvent(export_stream(record.id), EXPORT_CREATED, record, meta)
