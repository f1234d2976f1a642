"""Export packages (pipeline spec §8.4): create one, download it. The list and detail routes
(contract routes 27-28) live in `runs`, where this module's POST is mounted beside the list (one
router per path).

`POST .../exports` `{include?: "winners"|"all", run_id?: str, upload_s3?: bool}` ->
`{ok, export, audit_id}` (+ `sync` with `upload_s3`); `audit_id` is the `export.created` event.
An `include` other than winners/all is a 400 before the project lookup; an unknown `run_id` is
404 "Run not found". When the S3 upload fails the export is still recorded: the answer is the
sync's error envelope with `export_id` and `audit_id` beside it.

`GET .../exports/{exportId}/content` streams the package (`application/gzip`, ETag = its sha256).
"""

from __future__ import annotations

from litestar import Request, Response, Router, get, post
from litestar.datastructures import ETag
from litestar.params import FromPath, JSONBody
from litestar.response import File

from kroma.domain.errors import NotFound
from kroma.domain.exports import ExportBody, validate_export
from kroma.exports import UploadFailed, create_export
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import strict_body
from kroma.projections import runs as read
from kroma.run_files import asset_file, project_root_of

EXPORT_NOT_FOUND = "Project export not found"


@post("/{slug:str}/exports")
async def create_export_route(
    slug: FromPath[str], data: JSONBody[ExportBody], services: ServicesDep, request: Request
) -> Response[bytes]:
    data = await strict_body(request, ExportBody)
    export_request = validate_export(data)
    row = await project_row(services, slug)
    try:
        made = await create_export(services, row["id"], export_request)
    except UploadFailed as exc:
        return responses.error(exc, export_id=exc.export.export["id"], audit_id=exc.export.audit_id)
    extra = {"sync": made.sync.view()} if made.sync is not None else {}
    return responses.ok(export=made.export, audit_id=made.audit_id, **extra)


@get("/{slug:str}/exports/{export_id:str}/content")
async def export_content(slug: FromPath[str], export_id: FromPath[str], services: ServicesDep, request: Request) -> Response:
    """The package's bytes (a download); `If-None-Match` with its sha256 answers 304."""
    row = await project_row(services, slug, EXPORT_NOT_FOUND)
    export = await read.find_row(services.reader, "project_exports", row["id"], export_id)
    if export is None:
        raise NotFound(EXPORT_NOT_FOUND)
    storage = await services.reader.one("SELECT * FROM project_storage WHERE project_id = ?", (row["id"],))
    path = asset_file(services, project_root_of(services, storage or {}, row["slug"]), export)
    if path is None:
        raise NotFound("Export file not found")
    etag = export["checksum_sha256"]
    if etag and request.headers.get("if-none-match", "").strip().strip('"') == etag:
        return Response(b"", status_code=304, headers={"ETag": f'"{etag}"'})
    return File(
        path,
        media_type="application/gzip",
        content_disposition_type="attachment",
        filename=path.name,
        etag=ETag(value=etag) if etag else None,
    )


router = Router("/api/projects", route_handlers=[export_content], tags=["exports"])
