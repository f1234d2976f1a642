"""Runs over the real `kroma serve` process: a dry run and a run end to end on the local provider, and
crash safety (SIGKILL mid-run, restart on the same data folder: the run resumes from its last
recorded step and no recorded generation is paid for twice)."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from PIL import Image

from kroma.cli import main
from kroma.imaging.provenance import read_provenance
from tests.e2e.conftest import Server
from tests.fakes.openai_server import FakeOpenAI

SLUG = "demo"
BASE = f"/api/projects/{SLUG}"
ENGINE_TABLES = (
    "runs",
    "run_jobs",
    "run_candidates",
    "assets",
    "quality_reports",
    "cost_events",
    "asset_links",
)


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def setup_project(http: httpx.Client) -> list[str]:
    """The project `demo` with two uploaded scenes; their refs."""
    assert http.post("/api/projects", json={"name": "Demo", "slug": SLUG}).status_code == 200
    files = [
        ("file", ("one.png", png((120, 120, 120)), "image/png")),
        ("file", ("two.png", png((200, 60, 40)), "image/png")),
    ]
    uploaded = http.post(f"{BASE}/assets", files=files)
    assert uploaded.status_code == 200, uploaded.text
    return [a["rel_path"] for a in uploaded.json()["assets"]]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def sse_types(http: httpx.Client, url: str) -> list[str]:
    types = []
    with http.stream("GET", url) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                types.append(line.split(":", 1)[1].strip())
    return types  # the server ended the stream


def test_a_dry_run_then_a_run_end_to_end_over_http(server: Server) -> None:
    root = server.data_dir.parent / "var" / "projects" / SLUG  # the app root is the server's folder
    with httpx.Client(base_url=server.url, timeout=30) as http:
        scenes = setup_project(http)
        body = {"scene_refs": scenes, "candidates": 2, "provider": "local"}

        dry = http.post(f"{BASE}/runs/trigger", json={**body, "mode": "dry"})
        assert dry.status_code == 200, dry.text
        assert "Jobs: 2 (dry/planned)" in dry.json()["pipeline_trigger"]["stdout"]
        dry_id = dry.json()["run_id"]
        detail = http.get(f"{BASE}/runs/{dry_id}").json()
        assert detail["run"]["status"] == "ok" and detail["run"]["run_mode"] == "dry"
        assert [j["status"] for j in detail["jobs"]] == ["planned", "planned"]
        assert sse_types(http, f"{BASE}/runs/{dry_id}/events") == [
            "run.requested",
            "job.planned",
            "job.planned",
        ]
        assert list((root / "outputs").iterdir()) == []  # no provider was called

        run = http.post(f"{BASE}/runs/trigger", json={**body, "mode": "run", "confirm_spend": True})
        assert run.status_code == 200, run.text
        assert "Jobs: 2 (run/completed)" in run.json()["pipeline_trigger"]["stdout"]
        run_id = run.json()["run_id"]
        detail = http.get(f"{BASE}/runs/{run_id}").json()
        assert detail["run"]["status"] == "ok" and detail["run"]["provider_code"] == "local"
        assert [(j["job_key"], j["status"], j["selected_candidate_index"]) for j in detail["jobs"]] == [
            ("style_1_one", "done", 1),
            ("style_2_two", "done", 1),
        ]
        names = sorted(p.name for p in (root / "outputs").iterdir())
        assert names == [
            "style_1_one__c1.png",
            "style_1_one__c2.png",
            "style_2_two__c1.png",
            "style_2_two__c2.png",
        ]
        for job in detail["jobs"]:
            content = http.get(f"{BASE}/assets/{job['final_asset_id']}/content")
            assert content.status_code == 200
            assert content.content == (server.data_dir.parent / job["final_output"]).read_bytes()
            assert read_provenance(content.content)["run_id"] == run_id
        types = sse_types(http, f"{BASE}/runs/{run_id}/events")
        assert types[-1] == "run.completed" and types.count("candidate.generated") == 4
        sheet = http.get(f"{BASE}/runs/{run_id}/contact-sheet.png")
        assert sheet.status_code == 200 and sheet.content.startswith(b"\x89PNG")


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        names = [
            n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in names}
    finally:
        db.close()


def _generated(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    page = http.get("/api/events?type=candidate.generated&limit=1000").json()
    return [e for e in page["events"] if e["data"]["run_id"] == run_id]


def test_a_killed_server_resumes_its_run_without_paying_twice(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with FakeOpenAI(api_key="sk-crash-test", default=("slow", 0.7)) as fake:
        env = {
            "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_IMAGE_MODEL": "gpt-image-1",
            "OPENAI_IMAGE_SIZE": "1024x1536",
            "OPENAI_IMAGE_QUALITY": "high",
            "KROMA_RUN_PROVIDER_CALLS": "1",
        }
        first = start_server(data, **env)
        with httpx.Client(base_url=first.url, timeout=30) as http:
            scenes = setup_project(http)
            body = {
                "mode": "run",
                "confirm_spend": True,
                "scene_refs": scenes,
                "candidates": 3,
                "provider": "openai",
            }
            accepted = http.post(f"{BASE}/runs/trigger", json=body, headers={"Prefer": "respond-async"})
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["run_id"]
            wait_for(lambda: len(_generated(http, run_id)) >= 2)
            at_kill = len(_generated(http, run_id))
        first.kill()
        assert at_kill < 6  # killed mid-run: the rest is the restarted server's work

        second = start_server(data, **env)
        with httpx.Client(base_url=second.url, timeout=30) as http:
            unfinished = ("queued", "running", "canceling")
            run = wait_for(
                lambda: (
                    (r := http.get(f"{BASE}/runs/{run_id}").json()["run"])["status"] not in unfinished and r
                )
            )
            assert run["status"] == "ok"
            generated = _generated(http, run_id)
            events = http.get("/api/events?limit=1000").json()["events"]
            costs = http.get(f"{BASE}/cost-events").json()["cost_events"]
        second.stop()
        requests = fake.edit_requests

    pairs = sorted((e["data"]["job_key"], e["data"]["candidate_index"]) for e in generated)
    assert pairs == [(k, i) for k in ("style_1_one", "style_2_two") for i in (1, 2, 3)]  # each exactly once
    in_flight_at_kill = 1  # KROMA_RUN_PROVIDER_CALLS
    assert len(generated) <= len(requests) <= len(generated) + in_flight_at_kill
    assert {e["data"]["request_id"] for e in generated} <= {r.request_id for r in requests}
    assert len(costs) == 6 and sum(c["total_cost_usd"] for c in costs) == 6 * 0.25
    run_stream = [e["type"] for e in events if e["stream_id"] == f"run:{run_id}"]
    assert run_stream.count("run.started") == 1 and run_stream[-1] == "run.completed"
    started = next(e for e in events if e["type"] == "run.started" and e["data"]["run_id"] == run_id)
    assert {e["metadata"]["causation_id"] for e in generated} == {started["event_id"]}  # resumed too
    assert run_stream.count("job.winner_selected") == 2 and run["finished_at"]
    outputs = tmp_path / "var" / "projects" / SLUG / "outputs"
    for e in generated:  # every file on disk is the recorded generation's
        chunks = read_provenance((outputs / Path(e["data"]["output"]).name).read_bytes())
        assert chunks["candidate_id"] == e["data"]["candidate_id"]

    readmodels = data / "readmodels.db"
    before = _dump(readmodels)
    db = sqlite3.connect(readmodels)
    with db:
        for table in ENGINE_TABLES:
            db.execute(f"DELETE FROM {table}")
    db.close()
    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert all(before[t] for t in ENGINE_TABLES) and _dump(readmodels) == before
