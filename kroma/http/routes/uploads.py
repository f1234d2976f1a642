"""`POST /api/projects/{slug}/assets`: images a client sends for runs (beyond the reference, whose
clients had to put files on the server's disk by hand).

Each `file` part must decode as an image; all are checked before any is written, and all are
recorded in one atomic batch of `asset.uploaded` events (or none). Files land in
`<project root>/inputs/` under a sanitized name; an existing name gets a numbered suffix.
The size limit (settings `storage.upload_max_bytes`) applies to the whole request body, read in
chunks, so memory stays bounded by it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath

from kroma.domain.assets import AssetUploaded, asset_uploaded
from kroma.domain.errors import KromaError, ValidationError
from kroma.domain.handling import Decision
from kroma.engine.paths import display_path
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.http.routes.pipeline import ensure_writable, project_root_of
from kroma.imaging.provenance import sniff_image
from kroma.projections import runs as read

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
              "image/bmp": "bmp", "image/tiff": "tiff"}


class TooLarge(KromaError):
    status = 413
    code = "payload_too_large"


def sanitize_filename(name: str, mime: str) -> str:
    """A safe file name: the base name only, `[A-Za-z0-9._-]` kept (others become `_`), no leading
    dot, and an extension that names the decoded format."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).lstrip(".") or "upload"
    stem, dot, ext = base.rpartition(".")
    wanted = EXTENSIONS.get(mime, "img")
    if not dot or not stem:
        stem, ext = base, ""
    if ext.lower() not in {wanted, "jpeg" if wanted == "jpg" else wanted, "tif" if wanted == "tiff" else wanted}:
        ext = wanted
    return f"{stem[:120]}.{ext}"


def _claim(folder: Path, name: str) -> Path:
    """Create the file exclusively: `name`, else `stem-1.ext`, `stem-2.ext`, ... (never overwrite)."""
    stem, _, ext = name.rpartition(".")
    for n in range(10_000):
        path = folder / (name if n == 0 else f"{stem}-{n}.{ext}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
    raise ValidationError(f"Too many files named '{name}'")


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"Upload exceeds the size limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"Upload exceeds the size limit of {limit} bytes")
    return bytes(body)


async def _file_parts(request: Request, limit: int) -> list[tuple[str, bytes]]:
    content_type, options = request.content_type
    if content_type != "multipart/form-data" or "boundary" not in options:
        raise ValidationError("Request must be multipart/form-data with one or more 'file' parts")
    body = await _bounded_body(request, limit)

    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    from litestar._multipart import parse_multipart_form  # the framework's own parser

    form: dict[str, Any] = await parse_multipart_form(
        stream=once(), boundary=options["boundary"].encode(), multipart_form_part_limit=1000
    )
    files = []
    try:
        parts = form.get("file")
        parts = parts if isinstance(parts, list) else [] if parts is None else [parts]
        for part in parts:
            if not isinstance(part, UploadFile):
                raise ValidationError("Field 'file' must be a file")
            files.append((part.filename or "upload", await part.read()))
    finally:  # every file part, named `file` or not, holds a spooled temporary file
        for value in form.values():
            for part in value if isinstance(value, list) else [value]:
                if isinstance(part, UploadFile):
                    await part.close()
    if not files:
        raise ValidationError("Field 'file' is required")
    return files


@post("/{slug:str}/assets", request_max_body_size=None)
async def upload_assets(slug: FromPath[str], request: Request, services: ServicesDep) -> Response[bytes]:
    files = await _file_parts(request, services.settings.upload_max_bytes)
    described = []
    for name, data in files:
        try:
            mime, width, height = await anyio.to_thread.run_sync(sniff_image, data)
        except ValueError as exc:
            raise ValidationError(f"File '{name}' is not an image: {exc}") from None
        described.append((name, data, mime, width, height))
    row = await project_row(services, slug)
    state = await project_state(services, slug)
    project_root = project_root_of(services, state.storage, row["slug"])
    ensure_writable(services, project_root, code="validation_error")
    folder = project_root / "inputs"
    written: list[Path] = []
    try:
        await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
        for name, data, mime, _w, _h in described:
            path = await anyio.to_thread.run_sync(_claim, folder, sanitize_filename(name, mime))
            written.append(path)
            await anyio.Path(path).write_bytes(data)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise

    app_root = services.settings.app_root

    def decide(meta: Metadata) -> Decision:
        events = []
        for path, (name, data, mime, width, height) in zip(written, described, strict=True):
            record = AssetUploaded(
                id=services.clock.new_id(),
                project_id=state.id,
                kind="upload",
                asset_kind="upload",
                rel_path=path.relative_to(project_root).as_posix(),
                storage_uri=display_path(path, app_root),
                storage_backend="local",
                mime_type=mime,
                width=width,
                height=height,
                sha256=hashlib.sha256(data).hexdigest(),
                metadata_json={"original_filename": name, "size_bytes": len(data)},
                size_bytes=len(data),
                original_filename=name,
            )
            events.append(asset_uploaded(record, meta))
        return Decision(events, {e.stream_id: 0 for e in events}, [e.data.id for e in events])

    async def attempt(meta: Metadata) -> Decision:
        return decide(meta)

    try:
        outcome = await services.commands.execute(attempt)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    await services.settle(outcome.append.last_position)
    assets = [await read.find_row(services.reader, "assets", state.id, asset_id) for asset_id in outcome.result]
    return responses.ok(assets=assets, audit_id=outcome.audit_id)

