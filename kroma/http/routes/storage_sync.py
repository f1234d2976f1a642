"""S3 sync on demand (pipeline spec §8.3, beyond the reference, which synced only after a run):
`POST /api/projects/{slug}/storage/s3/sync` and the synced objects' state.

`{dry_run?: bool}` -> `{ok, sync: {destination, uploaded, skipped, bytes, dry_run, files, sync_id},
audit_id}`. `audit_id` is the id of the sync's `storage_sync.started` event; a dry run appends
nothing, so it has no `audit_id` (absent, as optional fields are in the contract, §1.1) and no
`sync_id`, and its `uploaded`/`bytes`/`files` are what it would send. A failure is the contract's
error envelope (400 for the spec's storage messages and refused credentials or a missing bucket,
502 for an unreachable endpoint; see `kroma.storage.s3`); when uploads had started, `sync` (what
was uploaded and recorded before the failure) and `audit_id` are added beside it.
"""

from __future__ import annotations

from litestar import Request, Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.domain.storage_sync import SyncBody
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import limit_param, strict_body
from kroma.projections import storage_sync as read
from kroma.storage.s3 import S3Failure
from kroma.storage.sync import Replayed, SyncFailed, SyncResult, sync_project


@post("/{slug:str}/storage/s3/sync")
async def sync_s3(slug: FromPath[str], data: JSONBody[SyncBody], services: ServicesDep, request: Request) -> Response[bytes]:
    data = await strict_body(request, SyncBody)
    row = await project_row(services, slug)
    dry_run = bool(data.dry_run)
    try:
        result = await sync_project(services, row["id"], dry_run=dry_run, trigger="api")
    except SyncFailed as exc:
        return responses.error(exc, sync=exc.result.view(), audit_id=exc.result.audit_id)
    except S3Failure as exc:  # answered here: its 502 is the endpoint's fault, not an internal error
        return responses.error(exc)
    except Replayed as replay:  # the Idempotency-Key's sync already ran: answer what it recorded
        return await _replayed(services, replay.audit_id)
    await services.settle(await services.store.head())
    if result.audit_id is None:
        return responses.ok(sync=result.view())
    return responses.ok(sync=result.view(), audit_id=result.audit_id)


async def _replayed(services: ServicesDep, audit_id: str) -> Response[bytes]:
    started = await services.store.read_event(audit_id)
    assert started is not None
    await services.settle(await services.store.head())
    found = await read.find_sync(services.reader, started.data["sync_id"])
    assert found is not None
    result = SyncResult(
        destination=found["destination"],
        dry_run=False,
        uploaded=found["uploaded"],
        skipped=found["skipped"],
        bytes=found["bytes"],
        sync_id=found["id"],
    )
    return responses.ok(sync=result.view(), audit_id=audit_id)


@get("/{slug:str}/storage/s3/objects")
async def synced_objects(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    """What each key of the project last received (newest first): path, sha256, ETag, size, the
    assets naming the file, and the sync that sent it."""
    limit = limit_param(request, 500, 5000)
    row = await project_row(services, slug)
    objects = await read.list_objects(services.reader, row["id"], limit)
    return responses.ok(count=len(objects), objects=objects)


router = Router("/api/projects", route_handlers=[sync_s3, synced_objects], tags=["storage"])
