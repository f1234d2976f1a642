"""Export packages (pipeline spec §8.4): a project's results as one `.tar.gz`.

`create_export` writes `<project root>/exports/<slug>_<stamp>_<id8>.tar.gz` (never outside the
roots the server may write to; `.partial` until complete, so a sync never sends half a package)
holding one folder `<slug>_<stamp>/` with:
- `runs/<run id>/<job key>/winner.<ext>`: each job's final output (its winner's file after the
  post-process passes); with `include: "all"` also `candidate_<k>.<ext>` for every other candidate
  (rejected ones from `archive/bad/` included);
- `runs/<run id>/contact-sheet.png`: each run's contact sheet;
- `settings.json`: the project's settings export (contract §4.1, the `bootstrap` object of
  GET .../bootstrap-prompt: importable again with bootstrap-import);
- `manifest.json`: every other file with its sha256, size, role and provenance (run, job,
  candidate, asset, prompt, provider, model, source path), the runs, and any file an asset names
  that is no longer on disk (`missing`).

Members carry the export's time as their mtime and no owner, and the gzip header no name or time
but the export's, so the bytes depend only on the content. Then `export.created` records the
package (path, size, sha256, a summary manifest); with `upload_s3` the package goes to the
project's S3 destination through the incremental sync (its key is the one a full sync would use).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from kroma.domain import bootstrap
from kroma.domain import exports as dom
from kroma.domain.errors import KromaError, NotFound, ValidationError
from kroma.domain.handling import current_request
from kroma.engine.paths import display_path, writable_root
from kroma.projections import runs as read
from kroma.projections.bootstrap import read_snapshot
from kroma.run_files import asset_file, contact_sheet_png, project_root_of
from kroma.storage.sync import SyncResult, sync_project

EXPORTS_DIR = "exports"
PARTIAL = ".partial"
_json = msgspec.json.Encoder(order="sorted")


@dataclass
class Member:
    """One file of the package: its name inside the package folder and where its bytes come from."""

    name: str
    source: Path | bytes
    role: str  # winner | candidate | contact_sheet | settings
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Export:
    export: dict[str, Any]  # the `project_exports` row as the API shows it
    audit_id: str
    path: Path
    sync: SyncResult | None = None


def _format_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _ext(path: Path) -> str:
    return path.suffix.lower() or ".bin"


async def _runs(services: Any, project_id: str, run_id: str | None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM runs WHERE project_id = ? AND run_mode = 'run'"
    params: tuple[Any, ...] = (project_id,)
    if run_id is not None:
        sql += " AND id = ?"
        params += (run_id,)
    rows = await services.reader.all(sql + " ORDER BY created_at, position", params)
    if run_id is not None and not rows:
        raise NotFound("Run not found")
    return [read.run_view(row) for row in rows]


def _latest_assets(assets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """candidate id -> the candidate's newest asset (its file after the last pass)."""
    latest: dict[str, dict[str, Any]] = {}
    for asset in sorted(assets, key=lambda a: a["position"]):
        if asset["candidate_id"]:
            latest[asset["candidate_id"]] = asset
    return latest


async def _run_members(
    services: Any, project_root: Path, run: dict[str, Any], include: str, missing: list[dict[str, Any]]
) -> list[Member]:
    rows = await services.reader.all("SELECT * FROM assets WHERE run_id = ?", (run["id"],))
    by_id = {a["id"]: a for a in rows}
    latest = _latest_assets(rows)
    members: list[Member] = []
    for job in await read.jobs_of_run(services.reader, run["id"]):
        base = {
            "run_id": run["id"],
            "job_id": job["id"],
            "job_key": job["job_key"],
            "prompt": job["prompt_text"],
            "provider": run["provider_code"],
            "model": run["model_name"],
        }
        selected = job["selected_candidate_index"]
        folder = f"runs/{run['id']}/{job['job_key'] or job['id']}"
        for c in job["candidates"]:
            winner = selected is not None and c["candidate_index"] == selected
            if not winner and include != "all":
                continue
            asset = by_id.get(job["final_asset_id"]) if winner else None
            asset = asset or by_id.get(c["final_asset_id"]) or latest.get(c["id"]) or by_id.get(c["output_asset_id"])
            provenance = {
                **base,
                "candidate_id": c["id"],
                "candidate_index": c["candidate_index"],
                "status": c["status"],
                "asset_id": asset["id"] if asset else "",
                "source_path": (asset["rel_path"] or asset["storage_uri"]) if asset else "",
            }
            role = "winner" if winner else "candidate"
            path = asset_file(services, project_root, read.asset_view(asset)) if asset else None
            if path is None:
                missing.append({"role": role, "provenance": provenance})
                continue
            name = f"{folder}/winner{_ext(path)}" if winner else f"{folder}/candidate_{c['candidate_index']}{_ext(path)}"
            members.append(Member(name, path, role, provenance))
    sheet = await contact_sheet_png(services, project_root, run["id"])
    members.append(Member(f"runs/{run['id']}/contact-sheet.png", sheet, "contact_sheet", {"run_id": run["id"]}))
    return members


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_package(
    target: Path, top: str, members: list[Member], manifest: dict[str, Any], mtime: int
) -> tuple[dict[str, Any], int, str]:
    """Write the package (via `<target>.partial`, renamed when complete); (the manifest with every
    member's checksum, the package's size, its sha256). A member whose file vanished meanwhile is
    listed under `missing`."""
    partial = target.with_name(target.name + PARTIAL)
    target.parent.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    try:
        with (
            partial.open("wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=mtime) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for member in members:
                try:
                    data = member.source if isinstance(member.source, bytes) else member.source.read_bytes()
                except OSError:
                    manifest["missing"].append({"role": member.role, "provenance": member.provenance})
                    continue
                _add(tar, f"{top}/{member.name}", data, mtime)
                entry = {"path": member.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                entry["role"] = member.role
                if member.provenance:
                    entry["provenance"] = member.provenance
                files.append(entry)
            manifest["files"] = files
            _add(tar, f"{top}/manifest.json", msgspec.json.format(_json.encode(manifest), indent=2), mtime)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    digest = hashlib.sha256()
    size = 0
    with target.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return manifest, size, digest.hexdigest()


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What `export.created` keeps of the manifest (the package holds the whole of it)."""
    roles: dict[str, int] = {}
    for entry in manifest["files"]:
        roles[entry["role"]] = roles.get(entry["role"], 0) + 1
    return {
        "schema_version": manifest["schema_version"],
        "include": manifest["include"],
        "package": manifest["package"],
        "runs": [run["id"] for run in manifest["runs"]],
        "files": len(manifest["files"]) + 1,  # and manifest.json
        "roles": roles,
        "bytes": sum(entry["size"] for entry in manifest["files"]),
        "missing": len(manifest["missing"]),
    }


async def create_export(
    services: Any, project_id: str, request: dom.ExportRequest, *, trigger: str = "api"
) -> Export:
    """Build, write and record one package (see the module doc). Raises the run's 404 for an unknown
    `run_id`, a 400 when the project root is outside the write roots; an S3 failure of
    `upload_s3` is raised after the export was recorded (`exc.export_id` names it)."""
    state, _version = await services.commands.load_project(project_id)
    if state is None:
        raise NotFound("Project not found")
    project_root = project_root_of(services, state.storage, state.slug)
    if not writable_root(project_root, services.settings.write_roots):
        raise ValidationError(
            f"Project root '{project_root}' is outside the folders this server may write to"
            " (settings: storage.allowed_roots)"
        )
    await services.settle(await services.store.head())
    runs = await _runs(services, project_id, request.run_id)
    export_id = services.clock.new_id()
    now = services.clock.now().replace(microsecond=0)
    stamp = _format_time(now)
    top = f"{state.slug}_{stamp}"
    target = project_root / EXPORTS_DIR / f"{top}_{export_id[:8]}.tar.gz"
    missing: list[dict[str, Any]] = []
    members: list[Member] = []
    for run in runs:
        members += await _run_members(services, project_root, run, request.include, missing)
    project = {"id": state.id, "slug": state.slug, "name": state.name, "description": state.description}
    settings = bootstrap.build_export(await read_snapshot(services.reader, project), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    members.append(Member("settings.json", msgspec.json.format(_json.encode(settings), indent=2), "settings"))
    manifest: dict[str, Any] = {
        "schema_version": dom.SCHEMA_VERSION,
        "export_id": export_id,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "include": request.include,
        "package": top,
        "project": {"id": state.id, "slug": state.slug, "name": state.name},
        "runs": [
            {k: run[k] for k in ("id", "status", "provider_code", "model_name", "created_at", "finished_at")}
            for run in runs
        ],
        "missing": missing,
    }
    manifest, size, checksum = await anyio.to_thread.run_sync(
        write_package, target, top, members, manifest, int(now.timestamp())
    )
    shown = display_path(target, services.settings.app_root)
    record = dom.ExportCreated(
        id=export_id,
        project_id=project_id,
        run_id=request.run_id,
        status="completed",
        export_format="tar.gz",
        storage_uri=shown,
        rel_path=shown,
        file_size_bytes=size,
        checksum_sha256=checksum,
        manifest_json=summary(manifest),
    )
    ctx = current_request.get()
    appended = await services.store.append(
        [dom.export_created(record, services.commands.metadata(export_id))],
        idempotency_key=ctx.idempotency_key if trigger == "api" else None,
        fingerprint=ctx.fingerprint,
    )
    await services.settle(appended.last_position)
    if appended.replayed:  # this request already made its export: keep that one only
        await anyio.Path(target).unlink(missing_ok=True)
        first = await services.store.read_event(appended.event_ids[0])
        export_id = first.data["id"] if first is not None else export_id
    row = await read.find_row(services.reader, "project_exports", project_id, export_id)
    assert row is not None
    outcome = Export(row, appended.event_ids[0], target)
    if request.upload_s3 and not appended.replayed:
        try:
            outcome.sync = await sync_project(services, project_id, trigger="export", only=[target])
        except KromaError as exc:
            raise UploadFailed(exc, outcome) from None
    return outcome


class UploadFailed(KromaError):
    """The package was written and recorded, but its S3 upload failed (the error is the sync's)."""

    def __init__(self, error: KromaError, export: Export) -> None:
        super().__init__(error.message, status=error.status, kind=error.kind, code=error.code)
        self.export = export
