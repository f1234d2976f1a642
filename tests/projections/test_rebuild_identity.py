"""A mixed workload through the API, then a full rebuild: every read model comes out identical."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from litestar.testing import TestClient


def dump(path: str) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_rebuild_of_every_projection_gives_identical_read_models(client: TestClient) -> None:
    for i in range(5):
        client.post("/api/projects", json={"name": f"Project {i}", "description": "x" * i})
        client.put(f"/api/projects/project_{i}/storage/local", json={"base_dir": f"dir{i}"})
        client.put(f"/api/projects/project_{i}/storage/s3", json={"enabled": i % 2 == 0, "bucket": f"b{i}"})
        client.post("/api/projects", json={"name": f"Project {i} renamed", "slug": f"project_{i}"})
    services = client.app.state.services
    path = services.settings.readmodels_db
    live = dump(path)
    assert live["projects"] and live["project_storage"]
    client.blocking_portal.call(services.runner.rebuild)
    assert dump(path) == live
    assert Path(path).exists()
