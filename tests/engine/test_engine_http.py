"""The run engine through the HTTP API (in process, real SQLite files): a requested run becomes images
and every step is an event (pipeline spec §4-§6, §9; runs part 2).

Scenes are small Pillow images uploaded through `POST .../assets`; the prompt (and so the local
provider's look) and the output guard come from a manifest named in `config/pipeline.settings.toml`
under the app root. The OpenAI provider runs against `tests.fakes.openai_server.FakeOpenAI`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient
from PIL import Image

from kroma.cli import main
from kroma.config import Settings
from kroma.http.app import create_app
from kroma.imaging.provenance import read_provenance
from tests.fakes.openai_server import FakeOpenAI

SLUG = "demo"
BASE = f"/api/projects/{SLUG}"
PROJECT_DISPLAY = f"var/projects/{SLUG}"
# The local provider's sepia look has a chroma delta of about 1.2-3.2, varying with the seed: over
# a threshold of 0.5 every candidate gets a soft warning and its excess decides the winner (§6.4).
SEPIA_LIMIT = 0.5
SEPIA = {
    "prompts": {"style_base": "Warm sepia ink drawing."},
    "output_guard": {"max_chroma_delta": SEPIA_LIMIT},
}
COLOUR = {"prompts": {"style_base": "Colour ink drawing."}}  # the scene's own colour is washed in
GRAY = (128, 128, 128)
RED = (200, 40, 40)
STAMP = r"\d{10}-\d{3}"  # files.stamp(): <unix seconds>-<milliseconds>


# -- helpers -------------------------------------------------------------------------------------


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def app_root(tmp_path: Path) -> Path:
    return tmp_path / "app"


def project_root(tmp_path: Path) -> Path:
    return app_root(tmp_path) / "var" / "projects" / SLUG


def configure(tmp_path: Path, manifest: dict[str, Any]) -> None:
    """The app settings layer naming a manifest file (spec §1.1, §3.1)."""
    config = app_root(tmp_path) / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "m.json").write_text(json.dumps(manifest))
    (config / "pipeline.settings.toml").write_text('[pipeline]\nmanifest_path = "config/m.json"\n')


def create_project(client: TestClient) -> dict[str, Any]:
    response = client.post("/api/projects", json={"name": "Demo Project", "slug": SLUG})
    assert response.status_code == 200, response.text
    return response.json()["project"]


def upload(client: TestClient, **scenes: tuple[int, int, int]) -> list[str]:
    """Upload one flat PNG per name; the scene refs (project-root relative) in the given order."""
    files = [("file", (f"{name}.png", png(color), "image/png")) for name, color in scenes.items()]
    response = client.post(f"{BASE}/assets", files=files)
    assert response.status_code == 200, response.text
    return [a["rel_path"] for a in response.json()["assets"]]


def trigger(
    client: TestClient, scenes: list[str], candidates: int, headers: dict | None = None, **extra: Any
) -> Any:
    body = {"mode": "run", "confirm_spend": True, "scene_refs": scenes, "candidates": candidates, **extra}
    return client.post(f"{BASE}/runs/trigger", json=body, headers=headers or {})


def all_events(client: TestClient, types: str | None = None) -> list[dict[str, Any]]:
    query = f"&type={types}" if types else ""
    page = client.get(f"/api/events?limit=1000{query}").json()
    assert page["count"] < 1000
    return page["events"]


def run_events(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    """The run's stream plus what the engine recorded elsewhere for it (assets, links), in log order."""
    return [
        e
        for e in all_events(client)
        if e["stream_id"] == f"run:{run_id}" or e["metadata"].get("correlation_id") == run_id
    ]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def listed(client: TestClient, path: str, key: str) -> list[dict[str, Any]]:
    return client.get(f"{BASE}/{path}?limit=2000").json()[key]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def chroma(path: Path) -> float:
    """Spec §6.2, computed here independently of kroma.imaging.qa."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float((np.abs(r - g).mean() + np.abs(r - b).mean() + np.abs(g - b).mean()) / 3)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def demo(client: TestClient) -> dict[str, Any]:
    return create_project(client)


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A FakeOpenAI the engine reaches through OPENAI_API_KEY / OPENAI_BASE_URL."""
    with FakeOpenAI(api_key="sk-engine-test") as fake:
        monkeypatch.setenv("OPENAI_API_KEY", fake.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        for name in ("OPENAI_IMAGE_MODEL", "OPENAI_IMAGE_SIZE", "OPENAI_IMAGE_QUALITY"):
            monkeypatch.delenv(name, raising=False)
        yield fake


# -- a completed run: events, files, read models -----------------------------------------------


@pytest.fixture
def sepia_run(client: TestClient, demo: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """3 jobs x 3 candidates on the local provider, all at once (jobs and candidates concurrent)."""
    configure(tmp_path, SEPIA)
    scenes = upload(client, alpha=GRAY, beta=(120, 130, 140), gamma=(160, 150, 140))
    response = trigger(client, scenes, 3)
    assert response.status_code == 200, response.text
    body = response.json()
    return {"body": body, "run_id": body["run_id"], "events": run_events(client, body["run_id"])}


def test_synchronous_trigger_waits_for_the_run_and_answers_like_the_reference(sepia_run: dict) -> None:
    body = sepia_run["body"]
    assert set(body) == {"ok", "pipeline_trigger", "run_id", "audit_id"}
    trig = body["pipeline_trigger"]
    assert trig["mode"] == "run" and trig["status_code"] == 0 and trig["stderr"] == ""
    assert trig["adapter"] == "rust_native"
    lines = trig["stdout"].split("\n")
    assert lines[1:4] == [f"Project: {SLUG}", f"Project root: {PROJECT_DISPLAY}", "Jobs: 3 (run/completed)"]
    assert lines[0].startswith(f"Run log: {PROJECT_DISPLAY}/runs/run_")
    # the answer came after the run's end: its final event is already in the log
    assert sepia_run["events"][-1]["type"] == "run.completed"
    assert sepia_run["events"][-1]["data"]["status"] == "ok"
    requested = of_type(sepia_run["events"], "run.requested")[0]
    assert requested["event_id"] == body["audit_id"]


def test_every_step_is_recorded_once_in_order(sepia_run: dict) -> None:
    events = sepia_run["events"]
    run_stream = [e["type"] for e in events if e["stream_id"] == f"run:{sepia_run['run_id']}"]
    assert run_stream[:5] == ["run.requested", "job.planned", "job.planned", "job.planned", "run.started"]
    assert run_stream[-1] == "run.completed" and run_stream.count("run.completed") == 1
    generated = of_type(events, "candidate.generated")
    checked = of_type(events, "candidate.checked")
    pairs = sorted((e["data"]["job_key"], e["data"]["candidate_index"]) for e in generated)
    keys = ["style_1_alpha", "style_2_beta", "style_3_gamma"]
    assert pairs == [(k, i) for k in keys for i in (1, 2, 3)]
    assert len(checked) == 9 and not of_type(events, "candidate.rejected")
    assert sorted(e["data"]["job_key"] for e in of_type(events, "job.winner_selected")) == keys
    assert len(of_type(events, "cost.recorded")) == 9 and len(of_type(events, "asset_link.created")) == 9
    # per candidate: generated before checked; per job: every check before the outcome
    position = {(e["type"], e["data"].get("candidate_id")): e["position"] for e in events}
    for e in checked:
        assert position[("candidate.generated", e["data"]["candidate_id"])] < e["position"]
    for outcome in of_type(events, "job.winner_selected"):
        job_checks = [e["position"] for e in checked if e["data"]["job_id"] == outcome["data"]["job_id"]]
        assert max(job_checks) < outcome["position"]


def test_each_event_names_its_cause(sepia_run: dict) -> None:
    events = sepia_run["events"]
    by_id = {e["event_id"]: e for e in events}
    requested = of_type(events, "run.requested")[0]
    started = of_type(events, "run.started")[0]
    assert started["metadata"]["causation_id"] == requested["event_id"]
    engine = [e for e in events if e["position"] > started["position"]]
    for e in engine:
        cause = by_id.get(e["metadata"].get("causation_id"))
        assert cause is not None and cause["position"] < e["position"], e["type"]
        assert e["metadata"]["correlation_id"] == sepia_run["run_id"]
    generated = {e["data"]["candidate_id"]: e for e in of_type(events, "candidate.generated")}
    for e in of_type(events, "candidate.checked"):
        assert e["metadata"]["causation_id"] == generated[e["data"]["candidate_id"]]["event_id"]
    for e in of_type(events, "job.winner_selected"):
        cause = by_id[e["metadata"]["causation_id"]]
        assert cause["type"] == "candidate.checked" and cause["data"]["job_id"] == e["data"]["job_id"]
    # what a step writes beside its main event shares that event's cause
    for kind in ("asset.recorded", "cost.recorded", "asset_link.created"):
        for e in of_type(events, kind):
            siblings = [
                s
                for s in events
                if s["metadata"].get("causation_id") == e["metadata"]["causation_id"]
                and s["type"] in ("candidate.generated", "job.winner_selected")
            ]
            assert siblings, kind
    completed = of_type(events, "run.completed")[0]
    assert by_id[completed["metadata"]["causation_id"]]["type"] == "job.winner_selected"


def test_outputs_are_named_by_job_and_candidate_and_carry_provenance(sepia_run: dict, tmp_path: Path) -> None:
    root = project_root(tmp_path)
    names = sorted(p.name for p in (root / "outputs").iterdir())
    keys = ["style_1_alpha", "style_2_beta", "style_3_gamma"]
    assert names == sorted(f"{k}__c{i}.png" for k in keys for i in (1, 2, 3))
    prompt = of_type(sepia_run["events"], "job.planned")[0]["data"]["prompt"]
    for e in of_type(sepia_run["events"], "candidate.generated"):
        d = e["data"]
        path = root / "outputs" / f"{d['job_key']}__c{d['candidate_index']}.png"
        assert d["output"] == f"{PROJECT_DISPLAY}/outputs/{path.name}"
        chunks = read_provenance(path.read_bytes())
        assert chunks["run_id"] == sepia_run["run_id"] and chunks["job_id"] == d["job_id"]
        assert chunks["candidate_id"] == d["candidate_id"]
        assert chunks["candidate_index"] == str(d["candidate_index"])
        assert chunks["prompt"] == prompt and "sepia" in prompt
        assert chunks["provider"] == d["provider"] == "local" and chunks["model"] == d["model"]
        assert chunks["seed"] == str(d["seed"]) and json.loads(chunks["parameters"]) == d["parameters"]
        with Image.open(path) as image:
            assert (d["width"], d["height"], d["mime_type"]) == (*image.size, "image/png")
        assert d["sha256"] == sha256(path)
    seeds = [e["data"]["seed"] for e in of_type(sepia_run["events"], "candidate.generated")]
    assert len(set(seeds)) == 9  # every candidate is its own call


def test_ranks_and_winners_are_the_specs_for_the_files_written(sepia_run: dict, tmp_path: Path) -> None:
    """Recomputed here from the files (§6.2-§6.4): the chroma delta, the rank, and the winner as the
    minimum of (hard failures, soft warnings, avg chroma exceed, candidate index)."""
    events = sepia_run["events"]
    root = app_root(tmp_path)
    checked = of_type(events, "candidate.checked")
    decided_by_excess = []
    for job in of_type(events, "job.winner_selected"):
        mine = sorted(
            (e["data"] for e in checked if e["data"]["job_id"] == job["data"]["job_id"]),
            key=lambda d: d["candidate_index"],
        )
        keys = []
        for d in mine:
            delta = chroma(root / d["final_output"])
            recorded = d["output_guard"]["files"][0]["chroma_delta"]
            assert recorded == pytest.approx(delta, abs=6e-5)
            soft = 1 if delta > SEPIA_LIMIT else 0
            exceed = round(max(0.0, recorded - SEPIA_LIMIT), 4)
            assert d["rank"] == {
                "hard_failures": 0,
                "soft_warnings": soft,
                "avg_chroma_exceed": pytest.approx(exceed),
            }
            assert d["status"] == "done" and d["report"]["summary"]["soft_warnings"] == soft
            keys.append((0, soft, exceed, d["candidate_index"]))
        winner = min(keys)[3]
        decided_by_excess.append(len({k[2] for k in keys}) == len(keys))
        assert job["data"]["selected_candidate"] == winner
        assert (
            job["data"]["final_output"]
            == f"{PROJECT_DISPLAY}/outputs/{job['data']['job_key']}__c{winner}.png"
        )
    assert any(decided_by_excess), "the excesses differ, so the rank (not the index) chose a winner"


def test_read_models_show_the_run_jobs_candidates_and_winners(client: TestClient, sepia_run: dict) -> None:
    run_id = sepia_run["run_id"]
    detail = client.get(f"{BASE}/runs/{run_id}").json()
    run = detail["run"]
    assert run["status"] == "ok" and run["run_mode"] == "run" and run["provider_code"] == "local"
    assert run["model_name"] == "kroma-ink-1" and run["image_size"] == "48x32"
    assert run["started_at"] and run["finished_at"]
    outcomes = {e["data"]["job_id"]: e["data"] for e in of_type(sepia_run["events"], "job.winner_selected")}
    assert [j["job_key"] for j in detail["jobs"]] == ["style_1_alpha", "style_2_beta", "style_3_gamma"]
    for job in detail["jobs"]:
        outcome = outcomes[job["id"]]
        assert job["status"] == "done" and job["selected_candidate_index"] == outcome["selected_candidate"]
        assert (
            job["final_asset_id"] == outcome["final_asset_id"]
            and job["final_output"] == outcome["final_output"]
        )
        assert [c["candidate_index"] for c in job["candidates"]] == [1, 2, 3]
        assert {c["status"] for c in job["candidates"]} == {"done"}
        for c in job["candidates"]:
            assert c["output_path"] == c["final_output_path"] and c["output_asset_id"] == c["final_asset_id"]
            assert (
                c["meta_json"]["candidate_index"] == c["candidate_index"]
                and c["meta_json"]["status"] == "done"
            )
        assert job["meta_json"]["selected_candidate"] == outcome["selected_candidate"]
    assert client.get(f"{BASE}/runs/{run_id}/jobs").json()["jobs"] == detail["jobs"]


def test_assets_links_costs_and_quality_reports_have_their_shapes(
    client: TestClient, sepia_run: dict, tmp_path: Path
) -> None:
    run_id = sepia_run["run_id"]
    assets = [a for a in listed(client, "assets", "assets") if a["run_id"] == run_id]
    outputs = [a for a in assets if a["kind"] == "candidate_output"]
    finals = [a for a in assets if a["kind"] == "job_final_output"]
    assert len(outputs) == 9 and len(finals) == 3 and len(assets) == 12
    for a in assets:
        path = app_root(tmp_path) / a["rel_path"]
        assert a["storage_uri"] == a["rel_path"] and a["storage_backend"] == "local"
        assert a["sha256"] == sha256(path) and a["mime_type"] == "image/png"
        assert (a["width"], a["height"]) == (48, 32)
    for final in finals:
        winner = next(o for o in outputs if o["rel_path"] == final["rel_path"])
        assert final["sha256"] == winner["sha256"] and final["candidate_id"] == ""
        assert final["metadata_json"]["selected_candidate"] >= 1

    links = [
        link
        for link in listed(client, "asset-links", "asset_links")
        if link["child_asset_id"] in {f["id"] for f in finals}
    ]
    assert len(links) == 9 and {link["link_type"] for link in links} == {"derived_from"}
    by_id = {a["id"]: a for a in assets}
    for link in links:
        parent, child = by_id[link["parent_asset_id"]], by_id[link["child_asset_id"]]
        assert parent["kind"] == "candidate_output" and parent["job_id"] == child["job_id"]

    costs = [c for c in listed(client, "cost-events", "cost_events") if c["run_id"] == run_id]
    assert len(costs) == 9
    for cost in costs:
        assert (cost["provider_code"], cost["model_name"], cost["event_type"]) == (
            "local",
            "kroma-ink-1",
            "image_generation",
        )
        assert (cost["units"], cost["unit_cost_usd"], cost["total_cost_usd"], cost["currency"]) == (
            1.0,
            0.0,
            0.0,
            "USD",
        )
        assert cost["meta_json"]["candidate_index"] in (1, 2, 3)

    reports = [r for r in listed(client, "quality-reports", "quality_reports") if r["run_id"] == run_id]
    candidate_reports = [r for r in reports if r["asset_id"]]
    run_scope = [r for r in reports if not r["asset_id"]]
    assert len(candidate_reports) == 9 and len(run_scope) == 1
    assert run_scope[0]["summary_json"]["scope"] == "run"
    assert run_scope[0]["summary_json"]["output_guard"]["enabled"] is True
    for r in candidate_reports:
        summary = r["summary_json"]
        assert r["report_type"] == "output_guard" and r["grade"] == ""
        assert set(summary) == {"status", "rank", "output_path", "final_output_path", "output_guard"}
        assert summary["rank"]["soft_warnings"] == r["soft_warnings"] and r["hard_failures"] == 0
        assert by_id[r["asset_id"]]["rel_path"] == summary["final_output_path"]


def test_run_log_document_is_the_references_run_log(client: TestClient, sepia_run: dict) -> None:
    document = client.get(f"{BASE}/runs/{sepia_run['run_id']}/log").json()
    assert document["ok"] is True and document["mode"] == "run" and document["project"] == SLUG
    assert (document["model"], document["size"], document["quality"]) == ("kroma-ink-1", "48x32", "standard")
    assert document["output_guard"] == {
        "enabled": True,
        "enforce_grayscale": False,
        "max_chroma_delta": SEPIA_LIMIT,
        "fail_on_chroma_exceed": False,
    }
    assert document["generation"] == {"candidates": 3, "max_candidates": 6}
    assert document["storage"]["project_root"] == PROJECT_DISPLAY
    outcomes = {e["data"]["job_key"]: e["data"] for e in of_type(sepia_run["events"], "job.winner_selected")}
    assert [j["id"] for j in document["jobs"]] == ["style_1_alpha", "style_2_beta", "style_3_gamma"]
    for job in document["jobs"]:
        selected = outcomes[job["id"]]["selected_candidate"]
        assert job["status"] == "done" and job["selected_candidate"] == selected
        assert job["final_output"] == job["output"] == outcomes[job["id"]]["final_output"]
        assert job["planned_generation"] == {"candidates": 3} and "failure_reason" not in job
        assert [c["candidate_index"] for c in job["candidates"]] == [1, 2, 3]
        for c in job["candidates"]:
            assert c["status"] == "done" and c["final_output"] == c["output"]
            assert set(c["rank"]) == {"hard_failures", "soft_warnings", "avg_chroma_exceed"}
            assert (
                c["output_guard"]["summary"]["total_files"] == 1 and c["output_guard"]["bad_archive"] is None
            )
        assert job["output_guard"] == job["candidates"][selected - 1]["output_guard"]


def test_asset_content_is_served_with_its_sha256_as_etag_and_304_when_unchanged(
    client: TestClient, sepia_run: dict, tmp_path: Path
) -> None:
    asset = next(a for a in listed(client, "assets", "assets") if a["kind"] == "job_final_output")
    url = f"{BASE}/assets/{asset['id']}/content"
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (app_root(tmp_path) / asset["rel_path"]).read_bytes()
    assert (
        response.headers["etag"].strip('"') == asset["sha256"] == hashlib.sha256(response.content).hexdigest()
    )
    again = client.get(url, headers={"If-None-Match": f'"{asset["sha256"]}"'})
    assert again.status_code == 304 and again.content == b""
    other = client.get(url, headers={"If-None-Match": '"not-the-digest"'})
    assert other.status_code == 200 and other.content == response.content
    assert client.get(f"{BASE}/assets/nope/content").status_code == 404


def test_contact_sheet_is_a_png_with_a_cell_per_candidate(client: TestClient, sepia_run: dict) -> None:
    response = client.get(f"{BASE}/runs/{sepia_run['run_id']}/contact-sheet.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as sheet:
        assert sheet.format == "PNG"
        width, height = sheet.size
    assert 3 * 150 <= width <= 10_000 and 3 * 150 <= height <= 10_000  # 3 rows of 3 thumbnails
    assert client.get(f"{BASE}/runs/nope/contact-sheet.png").status_code == 404


def _sse(client: TestClient, url: str, headers: dict[str, str] | None = None) -> list[tuple[int, str, dict]]:
    seen: list[tuple[int, str, dict]] = []
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id, kind = 0, ""
        for line in response.iter_lines():
            if line.startswith("id:"):
                event_id = int(line.split(":", 1)[1])
            elif line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                seen.append((event_id, kind, json.loads(line.split(":", 1)[1])))
    return seen  # the loop ends only because the server ended the stream


def test_run_events_stream_as_sse_ends_after_the_final_event_and_resumes(
    client: TestClient, sepia_run: dict
) -> None:
    run_id = sepia_run["run_id"]
    url = f"{BASE}/runs/{run_id}/events"
    stream = [e for e in sepia_run["events"] if e["stream_id"] == f"run:{run_id}"]
    seen = _sse(client, url)
    assert [(i, k) for i, k, _ in seen] == [(e["position"], e["type"]) for e in stream]
    assert seen[-1][1] == "run.completed" and seen[-1][2]["data"] == stream[-1]["data"]
    middle = stream[len(stream) // 2]["position"]
    resumed = _sse(client, url, {"Last-Event-ID": str(middle)})
    assert [i for i, _, _ in resumed] == [e["position"] for e in stream if e["position"] > middle]
    assert client.get(f"{BASE}/runs/nope/events").status_code == 404


def test_run_events_stream_follows_a_live_run_to_its_end(
    make_client: Callable[..., TestClient], openai_env: FakeOpenAI
) -> None:
    openai_env.default = ("slow", 0.4)
    client = make_client(run_provider_calls=1)
    create_project(client)
    scenes = upload(client, a=GRAY)
    body = trigger(client, scenes, 2, headers={"Prefer": "respond-async"}, provider="openai").json()
    opened = time.monotonic()
    seen = _sse(client, f"{BASE}/runs/{body['run_id']}/events")
    assert time.monotonic() - opened >= 0.5  # it waited for the calls made after it opened
    kinds = [kind for _, kind, _ in seen]
    assert kinds[:2] == ["run.requested", "job.planned"] and kinds[-1] == "run.completed"
    assert kinds.count("candidate.generated") == 2 and kinds.count("job.winner_selected") == 1
    assert [i for i, _, _ in seen] == sorted(i for i, _, _ in seen)


# -- ties, causation under sequential jobs ------------------------------------------------------


def test_equal_ranks_go_to_the_lowest_index_whatever_finishes_first(client: TestClient, demo: dict) -> None:
    """The default (noir) prompt renders neutral grays: every rank is zero, so §6.4's last tie-break
    (the earliest candidate) decides, although the candidates ran concurrently."""
    scenes = upload(client, one=GRAY, two=RED)
    body = trigger(client, scenes, 4).json()
    events = run_events(client, body["run_id"])
    assert {
        e["data"]["output_guard"]["files"][0]["chroma_delta"] for e in of_type(events, "candidate.checked")
    } == {0.0}
    assert [e["data"]["selected_candidate"] for e in of_type(events, "job.winner_selected")] == [1, 1]


def test_generation_is_caused_by_run_started_even_when_jobs_run_one_at_a_time(
    make_client: Callable[..., TestClient],
) -> None:
    """Job 2 starts generating after job 1's outcome is recorded; its generations are still caused
    by run.started, not by another job's job.winner_selected (was a bug before da83322)."""
    client = make_client(run_jobs_in_flight=1)
    create_project(client)
    body = trigger(client, upload(client, one=GRAY, two=RED), 2).json()
    events = run_events(client, body["run_id"])
    started = of_type(events, "run.started")[0]["event_id"]
    causes = {
        e["data"]["job_key"]: e["metadata"]["causation_id"] for e in of_type(events, "candidate.generated")
    }
    assert causes == {"style_1_one": started, "style_2_two": started}


# -- the output guard's rejects ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("guard", "reason"),
    [
        ({"enforce_grayscale": True, "max_chroma_delta": 0}, "not_grayscale_like"),
        ({"fail_on_chroma_exceed": True, "max_chroma_delta": 0}, "chroma_exceeds_threshold"),
    ],
)
def test_rejects_move_to_archive_bad_fail_their_job_and_the_trigger_answers_400(
    client: TestClient, demo: dict, tmp_path: Path, guard: dict, reason: str
) -> None:
    configure(tmp_path, {**COLOUR, "output_guard": guard})
    response = trigger(client, upload(client, plain=GRAY, red=RED), 2)
    assert response.status_code == 400
    body = response.json()
    assert body == {
        "ok": False,
        "error": f"Pipeline command failed: Output guard failed for 1 job(s). Bad outputs moved to {PROJECT_DISPLAY}/archive/bad",
        "error_kind": "provider",
        "error_code": "pipeline_command_failed",
        "run_id": body["run_id"],
    }
    events = run_events(client, body["run_id"])
    root = project_root(tmp_path)
    rejected = of_type(events, "candidate.rejected")
    assert sorted(e["data"]["candidate_index"] for e in rejected) == [1, 2]
    for e in rejected:
        d = e["data"]
        assert d["from"] == f"{PROJECT_DISPLAY}/outputs/style_2_red__c{d['candidate_index']}.png"
        name = Path(d["bad_archive"]).name
        assert d["bad_archive"] == f"{PROJECT_DISPLAY}/archive/bad/{name}"
        assert re.fullmatch(rf"style_2_red__c{d['candidate_index']}_bad_{STAMP}\.png", name)
        assert (root / "archive" / "bad" / name).is_file()
    assert sorted(p.name for p in (root / "outputs").iterdir()) == [
        "style_1_plain__c1.png",
        "style_1_plain__c2.png",
    ]
    for e in of_type(events, "candidate.checked"):
        d = e["data"]
        failed = d["job_id"] == rejected[0]["data"]["job_id"]
        assert d["status"] == ("failed_output_guard" if failed else "done")
        assert d["report"]["files"][0]["hard_fail_reasons"] == ([reason] if failed else [])
        assert d["rank"]["hard_failures"] == (1 if failed else 0) and (d["final_output"] is None) == failed
    failed_job = of_type(events, "job.failed")
    assert [e["data"]["failure_reason"] for e in failed_job] == ["all_candidates_failed_output_guard"]
    assert [e["data"]["job_key"] for e in of_type(events, "job.winner_selected")] == ["style_1_plain"]
    end = events[-1]
    assert (
        end["type"] == "run.completed"
        and end["data"]["status"] == "failed"
        and end["data"]["failed_jobs"] == 1
    )

    run = client.get(f"{BASE}/runs/{body['run_id']}").json()
    assert run["run"]["status"] == "failed"
    bad_job = next(j for j in run["jobs"] if j["job_key"] == "style_2_red")
    assert bad_job["status"] == "failed_output_guard" and bad_job["selected_candidate_index"] is None
    assert bad_job["final_asset_id"] == "" and {c["status"] for c in bad_job["candidates"]} == {
        "failed_output_guard"
    }
    assets = {a["id"]: a for a in listed(client, "assets", "assets")}
    for c in bad_job["candidates"]:  # the asset row follows its file into the archive
        asset = assets[c["output_asset_id"]]
        assert asset["rel_path"].startswith(f"{PROJECT_DISPLAY}/archive/bad/")
        assert sha256(app_root(tmp_path) / asset["rel_path"]) == asset["sha256"]
        assert c["meta_json"]["output_guard"]["bad_archive"] == asset["rel_path"]
        served = client.get(f"{BASE}/assets/{asset['id']}/content")
        assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == asset["sha256"]
    assert not [
        a for a in assets.values() if a["kind"] == "job_final_output" and a["job_id"] == bad_job["id"]
    ]
    links = listed(client, "asset-links", "asset_links")
    assert len(links) == 2 and not {link["parent_asset_id"] for link in links} & {
        c["output_asset_id"] for c in bad_job["candidates"]
    }

    document = client.get(f"{BASE}/runs/{body['run_id']}/log").json()
    logged = next(j for j in document["jobs"] if j["id"] == "style_2_red")
    assert (
        logged["status"] == "failed_output_guard"
        and logged["failure_reason"] == "all_candidates_failed_output_guard"
    )
    assert logged["selected_candidate"] is None and logged["final_output"] is None and "output" not in logged
    assert all("final_output" not in c and c["output_guard"]["bad_archive"] for c in logged["candidates"])


def test_a_rerun_moves_the_file_already_at_an_output_path_to_archive_replaced(
    client: TestClient, demo: dict, tmp_path: Path
) -> None:
    scenes = upload(client, solo=GRAY)
    first = trigger(client, scenes, 1).json()
    output = project_root(tmp_path) / "outputs" / "style_1_solo.png"  # one candidate: no __c suffix
    first_sha = sha256(output)
    second = trigger(client, scenes, 1).json()
    assert second["ok"] is True and second["run_id"] != first["run_id"]
    replaced = list((project_root(tmp_path) / "archive" / "replaced").iterdir())
    assert len(replaced) == 1
    assert re.fullmatch(rf"style_1_solo_replaced_{STAMP}\.png", replaced[0].name)
    assert sha256(replaced[0]) == first_sha
    assert read_provenance(replaced[0].read_bytes())["run_id"] == first["run_id"]
    assert read_provenance(output.read_bytes())["run_id"] == second["run_id"]
    second_final = [
        a
        for a in listed(client, "assets", "assets")
        if a["run_id"] == second["run_id"] and a["kind"] == "job_final_output"
    ]
    assert [a["sha256"] for a in second_final] == [sha256(output)]


def test_an_asset_whose_file_was_replaced_still_serves_the_bytes_its_etag_names(
    client: TestClient, demo: dict, tmp_path: Path
) -> None:
    """The first run's asset rows follow their file into archive/replaced/, so its content (and its
    ETag) stay its own bytes after a rerun wrote the same output name (was a bug before da83322: the
    second run's bytes were served under the first run's ETag, and 304 answered to it)."""
    scenes = upload(client, solo=GRAY)
    first = trigger(client, scenes, 1).json()
    trigger(client, scenes, 1)
    first_assets = [a for a in listed(client, "assets", "assets") if a["run_id"] == first["run_id"]]
    assert sorted(a["kind"] for a in first_assets) == ["candidate_output", "job_final_output"]
    for asset in first_assets:
        assert asset["rel_path"].startswith(f"{PROJECT_DISPLAY}/archive/replaced/style_1_solo_replaced_")
        assert sha256(app_root(tmp_path) / asset["rel_path"]) == asset["sha256"]
        response = client.get(f"{BASE}/assets/{asset['id']}/content")
        assert response.status_code == 200
        served = hashlib.sha256(response.content).hexdigest()
        assert served == asset["sha256"] == response.headers["etag"].strip('"')
        assert read_provenance(response.content)["run_id"] == first["run_id"]


# -- asynchronous trigger and cancel ---------------------------------------------------------


def test_respond_async_answers_202_at_once_and_the_run_still_ends(client: TestClient, demo: dict) -> None:
    scenes = upload(client, a=GRAY, b=RED)
    response = trigger(client, scenes, 2, headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"ok", "run_id", "audit_id", "pipeline_trigger"} and body["ok"] is True
    assert body["pipeline_trigger"]["mode"] == "run" and "Jobs: 2 (run/" in body["pipeline_trigger"]["stdout"]
    run_url = f"{BASE}/runs/{body['run_id']}"
    run = wait_for(
        lambda: (r := client.get(run_url).json()["run"])["status"] not in ("queued", "running") and r
    )
    assert run["status"] == "ok" and run["finished_at"]
    assert [j["status"] for j in client.get(run_url).json()["jobs"]] == ["done", "done"]


def _slow_run(client: TestClient, fake: FakeOpenAI, candidates: int) -> tuple[str, str]:
    """An openai run on a fake answering every call after 0.5 s, started without waiting; returns
    (run id, cancel audit id) once it has been canceled after its first generation."""
    fake.default = ("slow", 0.5)
    create_project(client)
    body = trigger(
        client, upload(client, a=GRAY), candidates, headers={"Prefer": "respond-async"}, provider="openai"
    ).json()
    run_id = body["run_id"]
    wait_for(lambda: of_type(run_events(client, run_id), "candidate.generated"))
    canceled = client.post(f"{BASE}/runs/{run_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["run"]["status"] == "canceled"  # the answer waits for the end
    return run_id, canceled.json()["audit_id"]


def test_cancel_stops_the_run_as_canceled_and_a_finished_run_cannot_be_canceled(
    make_client: Callable[..., TestClient], openai_env: FakeOpenAI
) -> None:
    client = make_client(run_provider_calls=1)
    run_id, audit_id = _slow_run(client, openai_env, 4)
    events = run_events(client, run_id)
    assert events[-1]["type"] == "run.canceled" and events[-1]["data"]["status"] == "canceled"
    assert events[-1]["metadata"]["causation_id"] == audit_id
    assert of_type(events, "run.cancel_requested")[0]["event_id"] == audit_id
    assert not of_type(events, "job.winner_selected") and not of_type(events, "job.failed")
    assert not of_type(events, "run.completed") and not of_type(events, "run.failed")
    assert client.get(f"{BASE}/runs/{run_id}").json()["run"]["status"] == "canceled"
    again = client.post(f"{BASE}/runs/{run_id}/cancel")
    assert again.status_code == 400
    assert again.json()["error"] == "Run has already finished (status: canceled)"
    assert client.post(f"{BASE}/runs/nope/cancel").status_code == 404


def test_a_waiting_trigger_whose_run_is_canceled_answers_400_run_canceled(
    make_client: Callable[..., TestClient], openai_env: FakeOpenAI
) -> None:
    openai_env.default = ("slow", 0.4)
    client = make_client(run_provider_calls=1)
    create_project(client)
    scenes = upload(client, a=GRAY)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(trigger, client, scenes, 2, None, provider="openai")
        generated = wait_for(
            lambda: of_type(all_events(client, "candidate.generated"), "candidate.generated")
        )
        run_id = generated[0]["data"]["run_id"]
        assert client.post(f"{BASE}/runs/{run_id}/cancel").status_code == 200
        response = waiting.result(timeout=15)
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "error": "Run was canceled",
        "error_kind": "validation",
        "error_code": "run_canceled",
        "run_id": run_id,
    }


def test_cancel_starts_no_provider_call_after_it_is_recorded(
    make_client: Callable[..., TestClient], openai_env: FakeOpenAI
) -> None:
    """Candidates still waiting for a provider slot when the cancel lands make no call (was a bug
    before da83322: every queued candidate still called, and paid for, the provider)."""
    client = make_client(run_provider_calls=1)
    run_id, _audit = _slow_run(client, openai_env, 4)
    events = run_events(client, run_id)
    cancel_at = of_type(events, "run.cancel_requested")[0]["position"]
    before = [e for e in of_type(events, "candidate.generated") if e["position"] < cancel_at]
    in_flight = 1  # run_provider_calls
    assert len(openai_env.edit_requests) <= len(before) + in_flight


def test_a_finished_or_dry_run_cannot_be_canceled(client: TestClient, demo: dict) -> None:
    scenes = upload(client, a=GRAY)
    done = trigger(client, scenes, 1).json()
    response = client.post(f"{BASE}/runs/{done['run_id']}/cancel")
    assert response.status_code == 400 and response.json()["error"] == "Run has already finished (status: ok)"
    dry = client.post(f"{BASE}/runs/trigger", json={"mode": "dry", "scene_refs": scenes}).json()
    response = client.post(f"{BASE}/runs/{dry['run_id']}/cancel")
    assert response.status_code == 400 and "dry run" in response.json()["error"]


def test_jobs_and_candidates_run_concurrently_within_the_provider_call_limit(
    make_client: Callable[..., TestClient], openai_env: FakeOpenAI
) -> None:
    """3 jobs x 2 candidates, each call 0.5 s, 4 calls allowed at once: the fake sees exactly 4 calls
    in flight together, from different jobs and from one job's candidates, and the winners are the
    sequential order's."""
    openai_env.default = ("slow", 0.5)
    spans: list[tuple[float, float, str]] = []
    answer = openai_env._answer

    def timed(handler: Any, record: Any, body: bytes) -> None:
        started = time.monotonic()
        answer(handler, record, body)
        spans.append((started, time.monotonic(), record.files[0].filename))

    openai_env._answer = timed  # type: ignore[method-assign]
    client = make_client(run_provider_calls=4)
    create_project(client)
    response = trigger(client, upload(client, a=GRAY, b=RED, c=GRAY), 2, provider="openai")
    assert response.status_code == 200, response.text
    assert len(spans) == 6

    def overlapping(span: tuple[float, float, str]) -> list[tuple[float, float, str]]:
        return [o for o in spans if o[0] <= span[0] < o[1]]  # in flight when `span` started

    assert max(len(overlapping(s)) for s in spans) == 4
    pairs = {(o[2], s[2]) for s in spans for o in overlapping(s) if o is not s}
    assert any(a != b for a, b in pairs), "two jobs' calls were in flight together"
    assert any(a == b for a, b in pairs), "two candidates of one job were in flight together"
    events = run_events(client, response.json()["run_id"])
    assert [e["data"]["selected_candidate"] for e in of_type(events, "job.winner_selected")] == [1, 1, 1]


def test_a_run_requested_while_no_engine_runs_is_worked_when_one_starts(tmp_path: Path) -> None:
    values = {
        "data_dir": str(tmp_path / "data"),
        "workspace_root": str(app_root(tmp_path)),
        "auth_dev_bypass": True,
    }
    with TestClient(create_app(Settings(**values, run_engine=False))) as client:
        create_project(client)
        response = trigger(client, upload(client, a=GRAY, b=RED), 2, headers={"Prefer": "respond-async"})
        assert response.status_code == 202
        run_id = response.json()["run_id"]
        time.sleep(0.2)
        assert client.get(f"{BASE}/runs/{run_id}").json()["run"]["status"] == "queued"
        assert not list((project_root(tmp_path) / "outputs").iterdir())
    with TestClient(create_app(Settings(**values))) as client:
        run = wait_for(
            lambda: (r := client.get(f"{BASE}/runs/{run_id}").json()["run"])["status"] == "ok" and r
        )
        assert run["finished_at"]
        events = run_events(client, run_id)
        assert len(of_type(events, "run.started")) == 1 and len(of_type(events, "candidate.generated")) == 4
        assert len(list((project_root(tmp_path) / "outputs").iterdir())) == 4


# -- the OpenAI provider through the engine ------------------------------------------------


def test_openai_runs_send_the_references_request_and_record_call_and_cost(
    client: TestClient, demo: dict, openai_env: FakeOpenAI, tmp_path: Path
) -> None:
    scene, style = upload(client, scene=GRAY, style=RED)
    openai_env.enqueue(("status", 429, {"Retry-After": "0"}))  # one call is retried once
    response = trigger(client, [scene], 2, provider="openai", style_refs=[style])
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert [r.status for r in openai_env.edit_requests].count(429) == 1
    requests = [r for r in openai_env.edit_requests if r.status == 200]
    assert len(requests) == 2
    prompt = of_type(run_events(client, run_id), "job.planned")[0]["data"]["prompt"]
    for request in openai_env.edit_requests:
        assert request.authorization == f"Bearer {openai_env.api_key}"
        assert request.field_names == [
            "model",
            "size",
            "quality",
            "prompt",
            "output_format",
            "input_fidelity",
            "image[]",
            "image[]",
        ]
        assert request.form == {
            "model": "gpt-image-1",
            "size": "1024x1536",
            "quality": "high",
            "prompt": prompt,
            "output_format": "png",
            "input_fidelity": "high",
        }
        assert [(f.filename, f.content_type) for f in request.files] == [
            ("scene.png", "image/png"),
            ("style.png", "image/png"),
        ]
        assert request.files[0].data == (project_root(tmp_path) / scene).read_bytes()
    events = run_events(client, run_id)
    generated = of_type(events, "candidate.generated")
    assert sorted(e["data"]["request_id"] for e in generated) == sorted(r.request_id for r in requests)
    for e in generated:
        d = e["data"]
        assert (d["provider"], d["model"], d["size"], d["quality"]) == (
            "openai",
            "gpt-image-1",
            "1024x1536",
            "high",
        )
        assert d["parameters"]["output_format"] == "png" and d["parameters"]["input_images"] == 2
        assert d["cost_usd"] == 0.25 and isinstance(d["seed"], int)
        chunks = read_provenance((app_root(tmp_path) / d["output"]).read_bytes())
        assert (chunks["provider"], chunks["model"], chunks["run_id"]) == ("openai", "gpt-image-1", run_id)
    assert sorted(e["data"]["attempts"] for e in generated) == [1, 2]
    costs = of_type(events, "cost.recorded")
    assert [(c["data"]["provider_code"], c["data"]["total_cost_usd"]) for c in costs] == [
        ("openai", 0.25)
    ] * 2
    assert sorted(c["data"]["meta_json"]["request_id"] for c in costs) == sorted(
        r.request_id for r in requests
    )
    listed_costs = listed(client, "cost-events", "cost_events")
    assert sum(c["total_cost_usd"] for c in listed_costs) == 0.5
    assert {(c["model_name"], c["unit_cost_usd"]) for c in listed_costs} == {("gpt-image-1", 0.25)}
    run = client.get(f"{BASE}/runs/{run_id}").json()["run"]
    assert (run["provider_code"], run["model_name"], run["image_size"], run["image_quality"]) == (
        "openai",
        "gpt-image-1",
        "1024x1536",
        "high",
    )


def test_openai_key_and_base_url_can_come_from_the_projects_secret_and_account(
    client: TestClient, demo: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAI(api_key="sk-project-secret") as fake:
        secret = {"provider_code": "openai", "secret_name": "api_key", "secret_value": fake.api_key}
        assert client.post(f"{BASE}/secrets", json=secret).status_code == 200
        account = {"provider_code": "openai", "base_url": fake.base_url}
        assert client.post(f"{BASE}/provider-accounts", json=account).status_code == 200
        response = trigger(client, upload(client, a=GRAY), 1, provider="openai")
        assert response.status_code == 200, response.text
        assert [r.status for r in fake.edit_requests] == [200]
        assert fake.edit_requests[0].authorization == f"Bearer {fake.api_key}"


@pytest.mark.parametrize(
    ("script", "attempts", "message"),
    [
        ([("status", 500, {"Retry-After": "0"})] * 4, 4, "HTTP 500: "),  # retried until it gives up
        ([("no_image",)], 1, "API returned no image payload"),  # not retried
    ],
)
def test_a_provider_failure_fails_the_run_and_the_trigger_answers_400(
    client: TestClient, demo: dict, openai_env: FakeOpenAI, script: list, attempts: int, message: str
) -> None:
    openai_env.enqueue(*script)
    response = trigger(client, upload(client, a=GRAY), 1, provider="openai")
    assert response.status_code == 400
    body = response.json()
    assert body["error"].startswith(message) and "sk-engine-test" not in body["error"]
    assert (body["error_kind"], body["error_code"]) == ("validation", "planning_preflight_failed")
    assert len(openai_env.edit_requests) == attempts
    events = run_events(client, body["run_id"])
    assert events[-1]["type"] == "run.failed" and events[-1]["data"]["error"] == body["error"]
    assert not of_type(events, "candidate.generated") and not of_type(events, "cost.recorded")
    assert client.get(f"{BASE}/runs/{body['run_id']}").json()["run"]["status"] == "failed"


# -- rebuild ------------------------------------------------------------------------------------

ENGINE_TABLES = (
    "runs",
    "run_jobs",
    "run_candidates",
    "assets",
    "quality_reports",
    "cost_events",
    "asset_links",
)


def _dump(path: str) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        names = [
            n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in names}
    finally:
        db.close()


def test_projection_rebuild_reproduces_every_read_model_of_the_runs(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path / "data"), workspace_root=str(app_root(tmp_path)), auth_dev_bypass=True
    )
    configure(tmp_path, {**COLOUR, "output_guard": {"enforce_grayscale": True, "max_chroma_delta": 0}})
    with TestClient(create_app(settings)) as client:
        create_project(client)
        scenes = upload(client, plain=GRAY, red=RED)
        ok_run = trigger(client, scenes[:1], 2).json()
        failed_run = trigger(client, scenes, 3).json()
        assert ok_run["ok"] is True and failed_run["error_code"] == "pipeline_command_failed"
        reads = [
            f"{BASE}/runs",
            f"{BASE}/assets",
            f"{BASE}/asset-links",
            f"{BASE}/quality-reports",
            f"{BASE}/cost-events",
            *(
                f"{BASE}/runs/{r['run_id']}{tail}"
                for r in (ok_run, failed_run)
                for tail in ("", "/jobs", "/log")
            ),
        ]
        answers = {url: client.get(url).json() for url in reads}
        before = _dump(settings.readmodels_db)
    assert all(before[t] for t in ENGINE_TABLES)
    db = sqlite3.connect(settings.readmodels_db)
    with db:
        for table in ENGINE_TABLES:
            db.execute(f"DELETE FROM {table}")
    db.close()

    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", settings.data_dir])
    assert result.exit_code == 0, result.output
    assert _dump(settings.readmodels_db) == before
    with TestClient(create_app(settings)) as client:
        assert {url: client.get(url).json() for url in reads} == answers
