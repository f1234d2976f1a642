"""A run's files on disk, as the review routes and export packages read them: the file an asset
names (only inside the project root or a root the server may write to) and the run's contact sheet."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from kroma.engine.paths import is_within
from kroma.imaging.contact_sheet import contact_sheet
from kroma.projections import projects as project_read
from kroma.projections import runs as read


def project_root_of(services: Any, storage: dict[str, Any], slug: str) -> Path:
    """The project's folder (absolute) from its storage settings (§8.1)."""
    resolved = project_read.resolve_storage(storage, slug, services.settings.workspace)
    return Path(os.path.normpath(resolved["local"]["project_root"]))


def asset_file(services: Any, project_root: Path, asset: dict[str, Any]) -> Path | None:
    """The asset's file on disk, only when it lies inside the project root or a root the server
    may write to (an imported asset row cannot make the server read elsewhere)."""
    uri = asset["storage_uri"] or asset["rel_path"]
    if not uri or "://" in uri:
        return None
    path = Path(uri) if os.path.isabs(uri) else services.settings.app_root / uri
    resolved = path.resolve()
    roots = (project_root.resolve(), *(r.resolve() for r in services.settings.write_roots))
    if not any(is_within(resolved, root) for root in roots) or not resolved.is_file():
        return None
    return resolved


async def contact_sheet_png(services: Any, project_root: Path, run_id: str) -> bytes:
    """Every candidate of every job of the run in a grid: labelled, the winner marked, rejects
    crossed out (each candidate's file after its passes)."""
    assets = {
        a["id"]: a for a in await services.reader.all("SELECT * FROM assets WHERE run_id = ?", (run_id,))
    }
    jobs = []
    for job in await read.jobs_of_run(services.reader, run_id):
        candidates = []
        for c in job["candidates"]:
            asset = assets.get(c["final_asset_id"]) or assets.get(c["output_asset_id"])  # after the passes
            path = asset_file(services, project_root, read.asset_view(asset)) if asset else None
            candidates.append(
                {
                    "label": f"c{c['candidate_index']}",
                    "path": path,
                    "status": c["status"],
                    "winner": job["selected_candidate_index"] == c["candidate_index"],
                    "rank": {
                        "hard_failures": c["rank_hard_failures"],
                        "soft_warnings": c["rank_soft_warnings"],
                        "avg_chroma_exceed": c["rank_avg_chroma_exceed"],
                    },
                }
            )
        jobs.append({"job_key": job["job_key"], "candidates": candidates})

    def render() -> bytes:
        for job in jobs:
            for c in job["candidates"]:
                path = c.pop("path")
                c["image"] = path.read_bytes() if path is not None else None
        return contact_sheet(jobs)

    return await anyio.to_thread.run_sync(render, limiter=services.engine.cpu)
