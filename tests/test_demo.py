"""The demo project created by `python3 dev.py serve` on a fresh data folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.demo import DEMO_SLUG, seed_demo
from kroma.http.app import create_app


def test_demo_is_created_once_on_an_empty_log(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), workspace_root=str(tmp_path / "app"))
    first = asyncio.run(seed_demo(settings))
    assert first and first[0] == "POST /api/projects"
    assert asyncio.run(seed_demo(settings)) == []  # the log is no longer empty
    with TestClient(create_app(msgspec.structs.replace(settings, auth_dev_bypass=True))) as client:
        assert client.get("/api/projects").json()["count"] == 1
        assert client.get(f"/api/projects/{DEMO_SLUG}").json()["project"]["name"] == "Demo Comic"
        assert client.get(f"/api/projects/{DEMO_SLUG}/style-guides").json()["count"] == 1


def test_demo_has_a_finished_run_on_the_local_provider_with_its_world(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), workspace_root=str(tmp_path / "app"))
    created = asyncio.run(seed_demo(settings))
    assert f"POST /api/projects/{DEMO_SLUG}/runs/trigger" in created
    with TestClient(create_app(msgspec.structs.replace(settings, auth_dev_bypass=True))) as client:
        runs = client.get(f"/api/projects/{DEMO_SLUG}/runs").json()["runs"]
        assert [(r["run_mode"], r["status"], r["provider_code"]) for r in runs] == [("run", "ok", "local")]
        jobs = client.get(f"/api/projects/{DEMO_SLUG}/runs/{runs[0]['id']}/jobs").json()["jobs"]
        assert [len(j["candidates"]) for j in jobs] == [3, 3]
        assert all(j["status"] == "done" and j["selected_candidate_index"] for j in jobs)
        assert jobs[0]["prompt_text"].startswith("a rain-soaked harbour street at night, in the Harbour Ink style")
        assert "Mara Voss: tall, grey trench coat" in jobs[0]["prompt_text"]
        sheet = client.get(f"/api/projects/{DEMO_SLUG}/runs/{runs[0]['id']}/contact-sheet.png")
        assert sheet.status_code == 200 and sheet.content.startswith(b"\x89PNG")
    assert len(list((tmp_path / "app" / "var" / "projects" / DEMO_SLUG / "outputs").glob("*.png"))) == 6
