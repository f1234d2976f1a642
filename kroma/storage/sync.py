"""Incremental S3 sync of a project's folder (pipeline spec §8.3, without the `aws` CLI).

`sync_project` gives these guarantees:
- It sends every regular file under the project root (symlinks and unfinished `*.partial` files
  left out) whose sha256 differs from the last recorded upload of its key, or that was never sent
  to this endpoint and bucket; every other file is `skipped`.
- Each file is recorded (`asset.synced`, with the ETag S3 answered and the sha256 of the bytes sent)
  only after S3 stored it: a failure or an interruption leaves recorded exactly what reached the
  bucket, so the next sync sends the rest (and a large file's interrupted multipart upload goes on
  from the parts already stored).
- At most `s3_concurrency` PUTs (objects or parts) are in flight; files over
  `s3_multipart_threshold` go up in parts of `s3_multipart_chunk` bytes.
- Before it records anything it checks that the endpoint answers, the credentials are accepted
  and the bucket exists (HeadBucket): a wrong setting fails cleanly with nothing appended.
- A dry run does all the checks and lists what it would send, and appends nothing.
- One sync per project at a time in this process (a second waits, then finds the work done).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from kroma.domain import storage_sync as dom
from kroma.domain.errors import KromaError, NotFound, ValidationError
from kroma.domain.handling import current_request
from kroma.engine.paths import is_within
from kroma.events.envelope import Metadata
from kroma.projections import projects as project_read
from kroma.projections import storage_sync as read
from kroma.storage import s3

PARTIAL_SUFFIX = ".partial"  # a file still being written (an export package): never sent
HASH_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    path: Path
    relative: str  # to the project root, `/` separators
    size: int
    sha256: str


@dataclass
class SyncResult:
    destination: str
    dry_run: bool
    uploaded: int = 0
    skipped: int = 0
    bytes: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)  # sent (or, dry, to send)
    sync_id: str | None = None
    audit_id: str | None = None  # the `storage_sync.started` event; None for a dry run

    def view(self) -> dict[str, Any]:
        """The answer's `sync` object."""
        return {
            "destination": self.destination,
            "dry_run": self.dry_run,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "files": self.files,
            **({"sync_id": self.sync_id} if self.sync_id else {}),
        }


class SyncFailed(KromaError):
    """The sync stopped on an S3 (or local) failure after it had started recording: `result` holds
    what was uploaded and recorded before it."""

    def __init__(self, error: KromaError, result: SyncResult) -> None:
        super().__init__(error.message, status=error.status, kind=error.kind, code=error.code)
        self.result = result


Progress = Callable[[str, int], None]  # ("planned", total bytes) | ("bytes", n) | ("file", 1)


@dataclass(frozen=True)
class Limits:
    concurrency: int
    threshold: int
    chunk: int

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(
            max(1, int(settings.s3_concurrency)),
            max(0, int(settings.s3_multipart_threshold)),
            max(1, int(settings.s3_multipart_chunk)),
        )


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _project_lock(project_id: str) -> asyncio.Lock:
    per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(project_id, asyncio.Lock())


# -- the local side --------------------------------------------------------------------------------


def scan(root: Path, only: list[Path] | None = None) -> list[tuple[str, Path]]:
    """(relative path, absolute path) of every regular file under root, sorted; symlinks, names
    that are not UTF-8 and unfinished `*.partial` files are left out. With `only`, just those
    files (when they lie under root)."""
    found: list[tuple[str, Path]] = []
    if only is not None:
        candidates = [p for p in only if is_within(p, root) and p != root]
    else:
        candidates = []
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            candidates.extend(Path(folder) / name for name in sorted(names))
    for path in candidates:
        if path.is_symlink() or not path.is_file() or path.name.endswith(PARTIAL_SUFFIX):
            continue
        relative = path.relative_to(root).as_posix()
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:
            continue
        found.append((relative, path))
    found.sort()
    return found


def _hash(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def describe(files: list[tuple[str, Path]]) -> list[LocalFile]:
    described = []
    for relative, path in files:
        try:
            size, sha = _hash(path)
        except OSError:  # gone meanwhile: nothing to send
            continue
        described.append(LocalFile(path, relative, size, sha))
    return described


# -- the sync --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    target: dom.S3Target
    root: Path
    send: list[tuple[LocalFile, str]]  # (file, reason: new | changed)
    skipped: int
    asset_ids: dict[str, list[str]]  # relative path -> assets naming the file


async def _plan(services: Any, project_id: str, only: list[Path] | None) -> _Plan:
    state, _version = await services.commands.load_project(project_id)
    if state is None:
        raise NotFound("Project not found")
    resolved = project_read.resolve_storage(state.storage, state.slug, services.settings.workspace)
    target = dom.s3_target(resolved, project_id)
    root = local_root(resolved)
    await services.settle(await services.store.head())  # every earlier upload is in the read model
    recorded = await read.synced_objects(services.reader, project_id, target.endpoint_url, target.bucket)
    files = await anyio.to_thread.run_sync(lambda: describe(scan(root, only)))
    send: list[tuple[LocalFile, str]] = []
    for f in files:
        last = recorded.get(target.key(f.relative))
        if last != f.sha256:
            send.append((f, "new" if last is None else "changed"))
    return _Plan(target, root, send, len(files) - len(send), await _asset_ids(services, project_id, root))


def local_root(resolved: dict[str, Any]) -> Path:
    """The project root, which must be an existing folder (§8.3 step 3)."""
    root = Path(os.path.normpath(resolved["local"]["project_root"]))
    if not root.exists():
        raise ValidationError(f"Local project root not found: {root}", code="local_root_missing")
    if not root.is_dir():
        raise ValidationError(f"Local project root is not a directory: {root}", code="local_root_missing")
    return root


async def _asset_ids(services: Any, project_id: str, root: Path) -> dict[str, list[str]]:
    rows = await services.reader.all(
        "SELECT id, rel_path, storage_uri FROM assets WHERE project_id = ? ORDER BY position", (project_id,)
    )
    return _by_path(rows, services.settings.app_root, root)


def _by_path(rows: list[dict[str, Any]], app_root: Path, root: Path) -> dict[str, list[str]]:
    """Project-relative path -> the ids of the assets naming that file."""
    found: dict[str, list[str]] = {}
    for row in rows:
        uri = row["storage_uri"] or row["rel_path"]
        if not uri or "://" in uri:
            continue
        path = Path(os.path.normpath(uri if os.path.isabs(uri) else app_root / uri))
        if is_within(path, root) and path != root:
            found.setdefault(path.relative_to(root).as_posix(), []).append(row["id"])
    return found


def _listed(f: LocalFile, key: str, reason: str) -> dict[str, Any]:
    return {"path": f.relative, "key": key, "size": f.size, "sha256": f.sha256, "reason": reason}


async def sync_project(
    services: Any,
    project_id: str,
    *,
    dry_run: bool = False,
    trigger: str = "api",
    run_id: str | None = None,
    only: list[Path] | None = None,
    progress: Progress | None = None,
    meta: Metadata | None = None,
) -> SyncResult:
    """Sync the project's folder (or only the given files) to its S3 destination. Raises the
    spec's 400s for disabled or unconfigured storage and a missing root, an `s3_error` when the
    bucket cannot be used (nothing appended), and SyncFailed when an upload fails after the sync
    was recorded as started (the uploads before it stay recorded)."""
    async with _project_lock(project_id):
        plan = await _plan(services, project_id, only)
        target = plan.target
        result = SyncResult(destination=target.destination, dry_run=dry_run, skipped=plan.skipped)
        result.files = [_listed(f, target.key(f.relative), why) for f, why in plan.send]
        limits = Limits.of(services.settings)
        requests = anyio.Semaphore(limits.concurrency)
        try:
            async with s3.open_bucket(target, requests) as bucket:
                await bucket.check()
                if dry_run:
                    result.uploaded = len(plan.send)
                    result.bytes = sum(f.size for f, _ in plan.send)
                    return result
                await _record_start(services, plan, result, trigger, run_id, meta)
                if progress is not None:
                    progress("planned", sum(f.size for f, _ in plan.send))
                result.files = []
                await _upload_all(services, bucket, plan, result, limits, progress, meta)
        except Replayed:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, KromaError) else s3.s3_error(exc, target)
            await _fail(services, plan, result, error, meta)  # raises SyncFailed once recorded
            raise error from None
        ended = dom.SyncEnded(
            sync_id=result.sync_id or "",
            project_id=project_id,
            status="completed",
            uploaded=result.uploaded,
            skipped=result.skipped,
            bytes=result.bytes,
        )
        await services.store.append([dom.sync_event(dom.SYNC_COMPLETED, ended, _meta(services, result, meta))])
        return result


def _meta(services: Any, result: SyncResult, meta: Metadata | None) -> Metadata:
    return meta or services.commands.metadata(result.sync_id or "")


async def _record_start(
    services: Any, plan: _Plan, result: SyncResult, trigger: str, run_id: str | None, meta: Metadata | None
) -> None:
    """`storage_sync.started` (its id is the audit_id), carrying the request's Idempotency-Key."""
    result.sync_id = services.clock.new_id()
    started = dom.SyncStarted(
        sync_id=result.sync_id,
        project_id=plan.target.project_id,
        destination=plan.target.destination,
        bucket=plan.target.bucket,
        endpoint_url=plan.target.endpoint_url,
        trigger=trigger,
        files=len(plan.send),
        bytes=sum(f.size for f, _ in plan.send),
        skipped=plan.skipped,
        run_id=run_id,
    )
    ctx = current_request.get()
    appended = await services.store.append(
        [dom.sync_event(dom.SYNC_STARTED, started, _meta(services, result, meta))],
        idempotency_key=ctx.idempotency_key if trigger == "api" else None,
        fingerprint=ctx.fingerprint,
    )
    result.audit_id = appended.event_ids[0]
    if appended.replayed:  # this request already ran (its response was never stored): not again
        raise Replayed(appended.event_ids[0])


class Replayed(Exception):
    """The request's Idempotency-Key was already used by a sync: `audit_id` is that sync's start."""

    def __init__(self, audit_id: str) -> None:
        super().__init__(audit_id)
        self.audit_id = audit_id


async def _upload_all(
    services: Any,
    bucket: s3.Bucket,
    plan: _Plan,
    result: SyncResult,
    limits: Limits,
    progress: Progress | None,
    meta: Metadata | None,
) -> None:
    files_in_flight = anyio.Semaphore(limits.concurrency)
    target = plan.target

    def part_done(size: int) -> None:
        if progress is not None:
            progress("bytes", size)

    async def one(f: LocalFile) -> None:
        try:
            key = target.key(f.relative)
            sent = await bucket.upload(
                f.path, key, threshold=limits.threshold, chunk=limits.chunk, part_done=part_done
            )
            synced = dom.AssetSynced(
                sync_id=result.sync_id or "",
                project_id=target.project_id,
                path=f.relative,
                key=key,
                bucket=target.bucket,
                endpoint_url=target.endpoint_url,
                etag=sent.etag,
                size=sent.size,
                sha256=sent.sha256,
                asset_ids=plan.asset_ids.get(f.relative, []),
                multipart=sent.multipart,
                parts=sent.parts,
                reused_parts=sent.reused_parts,
            )
            await services.store.append([dom.sync_event(dom.ASSET_SYNCED, synced, _meta(services, result, meta))])
            result.uploaded += 1
            result.bytes += sent.size
            result.files.append({"path": f.relative, "key": key, "size": sent.size, "sha256": sent.sha256, "etag": sent.etag})
            if progress is not None:
                progress("file", 1)
        finally:
            files_in_flight.release()

    try:
        async with anyio.create_task_group() as tg:
            for f, _reason in plan.send:
                await files_in_flight.acquire()
                tg.start_soon(one, f)
    except BaseExceptionGroup as group:
        raise _first(group) from None
    result.files.sort(key=lambda item: item["path"])


def _first(group: BaseExceptionGroup) -> BaseException:
    """The failure that stopped a task group (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


async def _fail(services: Any, plan: _Plan, result: SyncResult, error: KromaError, meta: Metadata | None) -> None:
    """Record the failure of a sync that was recorded as started (nothing for one that was not)."""
    if result.sync_id is None or result.dry_run:
        return
    ended = dom.SyncEnded(
        sync_id=result.sync_id,
        project_id=plan.target.project_id,
        status="failed",
        uploaded=result.uploaded,
        skipped=result.skipped,
        bytes=result.bytes,
        error=error.message,
        error_code=error.code,
        error_kind=error.kind,
    )
    with anyio.CancelScope(shield=True):
        await services.store.append([dom.sync_event(dom.SYNC_FAILED, ended, _meta(services, result, meta))])
    result.files.sort(key=lambda item: item["path"])
    raise SyncFailed(error, result)
