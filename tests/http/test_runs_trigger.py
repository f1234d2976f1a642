"""`POST /api/projects/{slug}/runs/trigger` end to end over HTTP (pipeline spec §1-§3, §4.7-§4.8;
contract §3.4, §7 pipeline_trigger_endpoints): validation order and messages, the response, the
events one trigger appends, the project's world in the prompt, manifest planning through the
settings layers, path resolution and escapes, the allowed write roots, the run-log document, the
read models and their rebuild."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient
from PIL import Image

from kroma.cli import main
from kroma.config import Settings
from kroma.engine.providers.local import LocalProvider
from kroma.engine.providers.openai import OpenAIProvider
from kroma.http.app import create_app
from tests.http.log_seed import assert_error

BASE = "/api/projects/demo"
TRIGGER = f"{BASE}/runs/trigger"
MISSING = "/api/projects/nope/runs/trigger"

STYLE_BASE = (
    "Preserve geometry and perspective. Apply one coherent noir drawing hand. No text, no logos, no watermark."
)
TIME_DAY = "Daylight scene with clear readability and stable contrast family."
TIME_NIGHT = "Night scene with controlled deep shadows, no topology changes."
WEATHER_CLEAR = "Dry clear atmosphere. No rain streaks, no snow particles, no diagonal sky hatching."
WEATHER_RAIN = "Visible wet surfaces, puddles, and reflection cues; no style drift."
NO_INVENTION = "Do not invent new object categories."
DEFAULT_PROMPT = f"{STYLE_BASE} {NO_INVENTION}"
NO_POSTPROCESS = {
    "upscale": False,
    "upscale_backend": None,
    "color": False,
    "color_profile": None,
    "bg_remove": False,
    "bg_remove_backends": [],
    "bg_refine_openai": False,
    "bg_refine_openai_required": False,
    "pipeline_order": ["generate"],
}
DEFAULT_GUARD = {"enabled": True, "enforce_grayscale": False, "max_chroma_delta": 2.0, "fail_on_chroma_exceed": False}
RUN_FOLDERS = ("outputs", "runs", "archive/bad", "archive/replaced")


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider a run picks depends on an OpenAI key in the environment: keep it out."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@contextmanager
def module_client(tmp_path: Path, slug: str | None = "demo") -> Iterator[TestClient]:
    """A client shared by a module's cases (one app start instead of one per case), laid out as the
    `client` fixture's: app root `tmp_path/"app"`, optionally with a project."""
    settings = Settings(data_dir=str(tmp_path / "data"), workspace_root=str(tmp_path / "app"), auth_dev_bypass=True)
    with TestClient(create_app(settings)) as client:
        if slug is not None:
            assert client.post("/api/projects", json={"name": slug.title(), "slug": slug}).status_code == 200
        yield client


@pytest.fixture(scope="module")
def bare_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One client with no project at all, for the checks that must precede the project lookup."""
    with module_client(tmp_path_factory.mktemp("bare"), slug=None) as client:
        yield client


def app_root(tmp_path: Path) -> Path:
    return tmp_path / "app"


def project_root(tmp_path: Path) -> Path:
    return tmp_path / "app" / "var" / "projects" / "demo"


def image_bytes(color: str = "red", size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def write_image(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color))
    return path


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def head(client: TestClient) -> int:
    """The log's last position (the API's paging cursor after reading everything)."""
    after = 0
    while True:
        page = client.get("/api/events", params={"after": after, "limit": 1000}).json()
        if page["count"] == 0:
            return after
        after = page["next_after"]


def events_of(client: TestClient, *types: str) -> list[dict[str, Any]]:
    answer = client.get("/api/events", params={"type": ",".join(types), "limit": 1000}).json()
    return answer["events"]


def trigger(client: TestClient, body: dict[str, Any], url: str = TRIGGER) -> dict[str, Any]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def run_log(client: TestClient, run_id: str, base: str = BASE) -> dict[str, Any]:
    response = client.get(f"{base}/runs/{run_id}/log")
    assert response.status_code == 200, response.text
    return response.json()


def planned(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    """The run's `job.planned` event data, in planned order."""
    return [e["data"] for e in events_of(client, "job.planned") if e["data"]["run_id"] == run_id]


def job_ids(client: TestClient, body: dict[str, Any]) -> list[str]:
    return [job["id"] for job in run_log(client, trigger(client, body)["run_id"])["jobs"]]


def prompt_of(client: TestClient, body: dict[str, Any]) -> str:
    prompts = {job["prompt"] for job in run_log(client, trigger(client, body)["run_id"])["jobs"]}
    assert len(prompts) == 1, "one prompt for every job of a run"
    return prompts.pop()


def folders_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


# -- validation order and messages (§2.2-§2.3), all before the project lookup ------------------------

INVALID = ("invalid_request", "validation")
VALIDATION_CASES: list[tuple[str, dict[str, Any], str, tuple[str, str]]] = [
    ("bad mode first", {"mode": "fast", "project_root": "/x", "scene_refs": []},
     "Field 'mode' must be one of: dry, run", ("invalid_mode", "validation")),
    ("mode is trimmed and case-insensitive, else invalid", {"mode": " dryish ", "scene_refs": ["a.png"]},
     "Field 'mode' must be one of: dry, run", ("invalid_mode", "validation")),
    ("project_root before the refs", {"project_root": "/x", "scene_refs": []},
     "Field 'project_root' is managed by project storage and cannot be overridden", INVALID),
    ("empty scene_refs before exclusivity", {"scene_refs": [], "input": "in"},
     "Field 'scene_refs' must not be empty", INVALID),
    ("blank scene_refs item", {"scene_refs": ["a.png", "  "], "input": "in"},
     "Field 'scene_refs' must not contain empty values", INVALID),
    ("both sources before style_refs", {"scene_refs": ["a.png"], "input": "in", "style_refs": []},
     "Provide only one of: input, scene_refs", INVALID),
    ("no source before style_refs", {"style_refs": [], "stage": "bad"},
     "Provide one of: input, scene_refs", INVALID),
    ("blank input counts as absent", {"input": "   "},
     "Provide one of: input, scene_refs", INVALID),
    ("empty style_refs before stage", {"scene_refs": ["a.png"], "style_refs": [], "stage": "bad"},
     "Field 'style_refs' must not be empty", INVALID),
    ("blank style_refs item", {"scene_refs": ["a.png"], "style_refs": [""], "stage": "bad"},
     "Field 'style_refs' must not contain empty values", INVALID),
    ("stage before time", {"scene_refs": ["a.png"], "stage": "colour", "time": "dusk"},
     "Field 'stage' must be one of: style, time, weather", INVALID),
    ("time before weather", {"input": "in", "stage": "weather", "time": "dusk", "weather": "snow"},
     "Field 'time' must be one of: day, night", INVALID),
    ("weather before candidates", {"scene_refs": ["a.png"], "stage": "weather", "weather": "snow", "candidates": 9},
     "Field 'weather' must be one of: clear, rain", INVALID),
    ("candidates above 6 before the stage rules", {"scene_refs": ["a.png"], "candidates": 9, "time": "night"},
     "Field 'candidates' must be between 1 and 6", INVALID),
    ("candidates below 1", {"scene_refs": ["a.png"], "candidates": 0},
     "Field 'candidates' must be between 1 and 6", INVALID),
    ("provider is one of local, openai", {"scene_refs": ["a.png"], "provider": "fal"},
     "Field 'provider' must be one of: local, openai", INVALID),
    ("time without a stage", {"scene_refs": ["a.png"], "time": "night", "mode": "run"},
     "Field 'time' requires stage 'time' or 'weather'", INVALID),
    ("time with stage style", {"scene_refs": ["a.png"], "stage": "style", "time": "day"},
     "Field 'time' requires stage 'time' or 'weather'", INVALID),
    ("weather with stage time", {"scene_refs": ["a.png"], "stage": "time", "weather": "rain", "mode": "run"},
     "Field 'weather' requires stage 'weather'", INVALID),
    ("run without confirmation last", {"scene_refs": ["a.png"], "mode": "run"},
     "Run mode requires explicit spend confirmation", ("spend_confirmation_required", "policy")),
    ("run with confirm_spend false", {"input": "in", "mode": " RUN ", "confirm_spend": False},
     "Run mode requires explicit spend confirmation", ("spend_confirmation_required", "policy")),
]


@pytest.mark.parametrize(
    ("body", "message", "code_kind"),
    [pytest.param(body, message, code_kind, id=name) for name, body, message, code_kind in VALIDATION_CASES],
)
def test_trigger_validation_first_failure_wins_before_the_project_lookup(
    bare_client: TestClient, body: dict[str, Any], message: str, code_kind: tuple[str, str]
) -> None:
    code, kind = code_kind
    assert_error(bare_client.post(MISSING, json=body), 400, message, code, kind)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"scene_refs": ["a.png"]}, id="minimal dry body"),
        pytest.param({"mode": "  ", "scene_refs": [" a.png "], "stage": "", "time": " ", "weather": ""},
                     id="blank strings count as absent"),
        pytest.param({"mode": "DRY", "input": "in", "stage": "WEATHER", "time": "Night", "weather": "RAIN"},
                     id="enums are case-insensitive"),
        pytest.param({"mode": "run", "confirm_spend": True, "scene_refs": ["a.png"], "stage": "time", "time": "day"},
                     id="confirmed run"),
        pytest.param({"scene_refs": ["a.png"], "style_refs": None, "input": None, "unknown_field": 1},
                     id="nulls absent, unknown fields ignored"),
    ],
)
def test_a_valid_trigger_on_a_missing_project_is_404(bare_client: TestClient, body: dict[str, Any]) -> None:
    assert_error(bare_client.post(MISSING, json=body), 404, "Project not found")


@pytest.mark.parametrize("confirm", ["true", "1", 1])
def test_a_string_is_not_a_spend_confirmation(bare_client: TestClient, confirm: Any) -> None:
    response = bare_client.post(MISSING, json={"mode": "run", "confirm_spend": confirm, "scene_refs": ["a.png"]})
    assert response.status_code == 400, response.text


def test_candidates_as_a_string_is_rejected(bare_client: TestClient) -> None:
    response = bare_client.post(MISSING, json={"candidates": "2", "scene_refs": ["a.png"]})
    assert response.status_code == 400, response.text


def test_wrong_json_types_are_400_envelopes(bare_client: TestClient) -> None:
    response = bare_client.post(MISSING, json={"candidates": 2.5, "scene_refs": ["a.png"]})
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert response.json()["error_code"] == "validation_error"
    bad = bare_client.post(MISSING, content=b"{", headers={"content-type": "application/json"})
    assert_error(bad, 400, "Request body is not valid JSON")


def test_validation_failures_append_nothing_and_create_no_folders(client: TestClient, project: dict, tmp_path: Path) -> None:
    before = head(client)
    for body in ({"mode": "fast"}, {"scene_refs": []}, {"scene_refs": ["a.png"], "mode": "run"}):
        assert client.post(TRIGGER, json=body).status_code == 400
    assert head(client) == before
    assert not project_root(tmp_path).exists()


def test_a_slug_the_pipeline_refuses_is_400_after_the_lookup(client: TestClient, tmp_path: Path) -> None:
    created = client.post("/api/projects", json={"name": "Alpha Project"}).json()["project"]
    assert created["slug"] == "alpha_project"
    before = head(client)
    response = client.post("/api/projects/Alpha%20Project/runs/trigger", json={"scene_refs": ["a.png"]})
    assert_error(response, 400, "Invalid project slug for pipeline run", "invalid_project_slug")
    assert head(client) == before
    # the lookup still comes first: an unknown project with such a slug is a 404
    response = client.post("/api/projects/No%20Such/runs/trigger", json={"scene_refs": ["a.png"]})
    assert_error(response, 404, "Project not found")


# -- response, events, folders (§2.4, §2.5) ----------------------------------------------------------


def test_dry_run_answers_the_five_stdout_lines_with_run_and_audit_ids(client: TestClient, project: dict) -> None:
    answer = trigger(client, {"scene_refs": ["scenes/one.png", "scenes/two.png"]})
    assert set(answer) == {"ok", "pipeline_trigger", "run_id", "audit_id"}
    result = answer["pipeline_trigger"]
    assert set(result) == {"mode", "status_code", "stdout", "stderr", "adapter"}
    assert (result["mode"], result["status_code"], result["stderr"], result["adapter"]) == ("dry", 0, "", "rust_native")

    lines = result["stdout"].split("\n")
    assert len(lines) == 5
    match = re.fullmatch(r"Run log: (var/projects/demo/runs/run_\d+-\d{3}\.json)", lines[0])
    assert match, lines[0]
    log_path = match.group(1)
    assert lines[1:4] == ["Project: demo", "Project root: var/projects/demo", "Jobs: 2 (dry/planned)"]
    summary = {
        "run_log_path": log_path,
        "project_slug": "demo",
        "project_root": "var/projects/demo",
        "jobs": 2,
        "mode": "dry",
    }
    expected = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    assert lines[4] == f"KROMA_PIPELINE_SUMMARY_JSON: {expected}"

    run = client.get(f"{BASE}/runs/{answer['run_id']}").json()["run"]
    assert run["run_log_path"] == log_path


def test_audit_id_is_the_run_requested_event(client: TestClient, project: dict) -> None:
    answer = trigger(client, {"scene_refs": ["a.png"]})
    event = client.get(f"/api/events/{answer['audit_id']}").json()["event"]
    assert event["type"] == "run.requested"
    assert event["data"]["run_id"] == answer["run_id"]
    assert event["data"]["project_id"] == project["id"]
    assert event["stream_id"] == f"run:{answer['run_id']}"


def test_one_trigger_appends_run_requested_and_every_job_planned_in_one_batch(
    client: TestClient, project: dict
) -> None:
    before = head(client)
    answer = trigger(client, {"scene_refs": ["s1.png", "s2.png", "s3.png"]})
    appended = events_of(client, "run.requested", "job.planned")
    mine = [e for e in appended if e["position"] > before]
    assert [e["type"] for e in mine] == ["run.requested", "job.planned", "job.planned", "job.planned"]
    assert [e["position"] for e in mine] == list(range(before + 1, before + 5))
    assert head(client) == before + 4, "nothing else was appended"
    assert {e["stream_id"] for e in mine} == {f"run:{answer['run_id']}"}
    assert [e["stream_version"] for e in mine] == [1, 2, 3, 4]
    assert len({e["metadata"]["correlation_id"] for e in mine}) == 1
    assert len({e["recorded_at"] for e in mine}) == 1, "one append records one timestamp"
    jobs = [e["data"] for e in mine[1:]]
    assert [(j["index"], j["job_key"], j["run_id"]) for j in jobs] == [
        (1, "style_1_s1", answer["run_id"]),
        (2, "style_2_s2", answer["run_id"]),
        (3, "style_3_s3", answer["run_id"]),
    ]
    assert mine[0]["data"]["jobs"] == 3


def test_dry_run_creates_the_run_folders_and_calls_no_provider(
    client: TestClient, project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for cls in (LocalProvider, OpenAIProvider):
        original = cls.generate

        async def spy(self: Any, request: Any, _original: Callable = original, _name: str = cls.__name__) -> Any:
            calls.append(_name)
            return await _original(self, request)

        monkeypatch.setattr(cls, "generate", spy)
    write_image(project_root(tmp_path) / "scenes" / "a.png")

    for provider in ("local", "openai"):
        answer = trigger(client, {"scene_refs": ["scenes/a.png"], "provider": provider})
        stream = events_of(client, "run.started", "candidate.generated", "run.completed", "run.failed")
        assert [e for e in stream if e["data"].get("run_id") == answer["run_id"]] == []
    assert calls == []
    root = project_root(tmp_path)
    assert all((root / name).is_dir() for name in RUN_FOLDERS)
    assert list((root / "outputs").iterdir()) == []

    # the spy sees a paid run's call, so the dry assertion above can fail
    body = {"scene_refs": ["scenes/a.png"], "mode": "run", "confirm_spend": True, "provider": "local"}
    answer = trigger(client, body)
    assert answer["pipeline_trigger"]["mode"] == "run"
    assert calls == ["LocalProvider"]


# -- read models (§3.4, §9.3) -----------------------------------------------------------------------

RUN_FIELDS = {
    "id", "project_id", "run_mode", "status", "stage", "time_of_day", "weather", "model_name", "provider_code",
    "settings_snapshot_json", "started_at", "finished_at", "created_at", "run_log_path", "image_size",
    "image_quality",
}
JOB_FIELDS = {
    "id", "run_id", "job_key", "status", "prompt_text", "selected_candidate_index", "final_asset_id",
    "final_output", "meta_json", "created_at", "candidates",
}


def test_dry_run_read_models(client: TestClient, project: dict) -> None:
    body = {"scene_refs": ["scenes/a.png", "scenes/b.png"], "stage": "weather", "time": "night", "weather": "rain"}
    answer = trigger(client, body)
    run_id = answer["run_id"]
    log = run_log(client, run_id)

    listed = client.get(f"{BASE}/runs").json()
    assert listed["count"] == 1
    run = listed["runs"][0]
    assert set(run) == RUN_FIELDS
    assert run["id"] == run_id
    assert run["project_id"] == project["id"]
    assert (run["run_mode"], run["status"], run["stage"], run["time_of_day"], run["weather"]) == (
        "dry", "ok", "weather", "night", "rain",
    )
    assert (run["model_name"], run["image_size"], run["image_quality"]) == ("", "", "")
    assert run["provider_code"] == "local"
    assert run["settings_snapshot_json"] == {k: log[k] for k in ("timestamp", "generation", "postprocess", "output_guard")}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["created_at"])

    detail = client.get(f"{BASE}/runs/{run_id}").json()
    assert detail["run"] == run
    jobs = client.get(f"{BASE}/runs/{run_id}/jobs").json()
    assert (jobs["run_id"], jobs["count"]) == (run_id, 2)
    assert jobs["jobs"] == detail["jobs"]
    assert [set(j) for j in jobs["jobs"]] == [JOB_FIELDS, JOB_FIELDS]
    assert [j["job_key"] for j in jobs["jobs"]] == ["weather_1_a", "weather_2_b"]
    for job, logged in zip(jobs["jobs"], log["jobs"], strict=True):
        assert job["run_id"] == run_id
        assert job["status"] == "planned"
        assert job["prompt_text"] == logged["prompt"]
        assert job["meta_json"] == logged
        assert (job["selected_candidate_index"], job["final_output"], job["final_asset_id"]) == (None, "", "")
    assert client.get(f"{BASE}/assets").json() == {"ok": True, "count": 0, "assets": []}

    assert_error(client.get(f"{BASE}/runs/nope"), 404, "Run not found")
    assert_error(client.get(f"{BASE}/runs/nope/jobs"), 404, "Run not found")


def test_dry_run_jobs_have_no_synthetic_candidates_or_quality_reports(client: TestClient, project: dict) -> None:
    """A departure from the reference's ingest (docs/architecture.md, Runs): its synthetic candidate
    per planned job was an artefact of ingesting a file; a dry run here is its plan, nothing more."""
    run_id = trigger(client, {"scene_refs": ["a.png"]})["run_id"]
    job = client.get(f"{BASE}/runs/{run_id}/jobs").json()["jobs"][0]
    assert job["status"] == "planned" and job["candidates"] == []
    assert client.get(f"{BASE}/quality-reports").json()["count"] == 0


# -- the run-log document (§4.7, §4.8) ----------------------------------------------------------------

RUN_LOG_KEYS = {
    "ok", "timestamp", "project", "mode", "stage", "time", "weather", "model", "size", "quality", "generation",
    "postprocess", "output_guard", "storage", "jobs",
}
JOB_KEYS = {
    "id", "mode", "time", "weather", "input_images", "prompt", "status", "planned_generation",
    "planned_postprocess", "planned_output_guard",
}


def test_run_log_document_of_a_dry_run(client: TestClient, project: dict) -> None:
    answer = trigger(client, {"scene_refs": ["scenes/Scene 01.png", "b.png"], "style_refs": ["st.png"], "stage": "time"})
    log = run_log(client, answer["run_id"])
    assert set(log) == RUN_LOG_KEYS
    stamp = re.fullmatch(r"(\d+)\.(\d{3})Z", log["timestamp"])
    assert stamp, log["timestamp"]
    run = client.get(f"{BASE}/runs/{answer['run_id']}").json()["run"]
    assert run["run_log_path"] == f"var/projects/demo/runs/run_{stamp.group(1)}-{stamp.group(2)}.json"
    assert {k: log[k] for k in ("ok", "project", "mode", "stage", "time", "weather", "model", "size", "quality")} == {
        "ok": True, "project": "demo", "mode": "dry", "stage": "time", "time": "day", "weather": "clear",
        "model": "", "size": "", "quality": "",
    }
    assert log["generation"] == {"candidates": 1, "max_candidates": 6}
    assert log["postprocess"] == NO_POSTPROCESS
    assert log["output_guard"] == DEFAULT_GUARD
    assert log["storage"] == {"project_root": "var/projects/demo", "resolved_from_backend": True}
    prompt = f"{STYLE_BASE} {TIME_DAY} {NO_INVENTION}"
    assert log["jobs"] == [
        {
            "id": key, "mode": "time", "time": "day", "weather": "clear", "input_images": [scene, "st.png"],
            "prompt": prompt, "status": "planned", "planned_generation": {"candidates": 1},
            "planned_postprocess": NO_POSTPROCESS, "planned_output_guard": DEFAULT_GUARD,
        }
        for key, scene in (("time_1_scene_01", "scenes/Scene 01.png"), ("time_2_b", "b.png"))
    ]
    assert all(set(job) == JOB_KEYS for job in log["jobs"])


def test_run_log_of_an_unknown_run_or_another_projects_run_is_404(client: TestClient, project: dict) -> None:
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    other_run = trigger(client, {"scene_refs": ["a.png"]}, url="/api/projects/other/runs/trigger")["run_id"]
    assert_error(client.get(f"{BASE}/runs/nope/log"), 404, "Run not found")
    assert_error(client.get(f"{BASE}/runs/{other_run}/log"), 404, "Run not found")
    assert_error(client.get(f"/api/projects/nope/runs/{other_run}/log"), 404, "Run not found")
    assert run_log(client, other_run, base="/api/projects/other")["project"] == "other"


# -- manifest planning (§3): job ids, prompts, batch limit, candidates ---------------------------------


def test_job_ids_sanitize_awkward_scene_file_names(client: TestClient, project: dict) -> None:
    scenes = [
        "scenes/Scene 01.png",
        "x/__a__b.PNG",
        "ÜBER.png",
        ".png",
        "v1.2.final.jpeg",
        "日本.png",
        "..png",
        "x--y-.png",
        "sub.dir/My  Scene (2).webp",
    ]
    assert job_ids(client, {"scene_refs": scenes}) == [
        "style_1_scene_01",
        "style_2_a_b",
        "style_3_ber",
        "style_4_png",
        "style_5_v1_2_final",
        "style_6_6",
        "style_7_7",
        "style_8_x--y-",
        "style_9_my_scene_2",
    ]
    assert job_ids(client, {"scene_refs": ["Scene 01.png"], "stage": "weather"}) == ["weather_1_scene_01"]


def test_job_id_sanitizer_keeps_only_ascii(client: TestClient, project: dict) -> None:
    assert job_ids(client, {"scene_refs": ["\u212a.png", "\u0130stanbul.png"]}) == ["style_1_1", "style_2_stanbul"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({}, f"{STYLE_BASE} {NO_INVENTION}", id="style ignores time and weather"),
        pytest.param({"stage": "time"}, f"{STYLE_BASE} {TIME_DAY} {NO_INVENTION}", id="time day by default"),
        pytest.param({"stage": "time", "time": "night"}, f"{STYLE_BASE} {TIME_NIGHT} {NO_INVENTION}", id="time night"),
        pytest.param({"stage": "weather"}, f"{STYLE_BASE} {TIME_DAY} {WEATHER_CLEAR} {NO_INVENTION}",
                     id="weather day clear by default"),
        pytest.param({"stage": "weather", "time": "night", "weather": "rain"},
                     f"{STYLE_BASE} {TIME_NIGHT} {WEATHER_RAIN} {NO_INVENTION}", id="weather night rain"),
    ],
)
def test_prompt_per_stage_with_the_default_manifest(
    bare_client: TestClient, body: dict[str, Any], expected: str
) -> None:
    bare_client.post("/api/projects", json={"name": "Prompts", "slug": "prompts"})
    url = "/api/projects/prompts/runs/trigger"
    answer = trigger(bare_client, {"scene_refs": ["a.png"], **body}, url=url)
    log = run_log(bare_client, answer["run_id"], base="/api/projects/prompts")
    assert log["jobs"][0]["prompt"] == expected


def _app_settings(tmp_path: Path, pipeline: dict[str, Any]) -> None:
    write_json(app_root(tmp_path) / "config" / "pipeline.settings.json", {"pipeline": pipeline})


def _manifest(tmp_path: Path, manifest: dict[str, Any], name: str = "m.json") -> str:
    write_json(app_root(tmp_path) / "config" / name, manifest)
    return f"config/{name}"


@pytest.fixture(scope="module")
def prompts_manifest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app settings file naming a manifest that overrides some prompts and turns the policy off."""
    tmp_path = tmp_path_factory.mktemp("prompts")
    manifest = {
        "prompts": {"style_base": "  Ink it.  ", "time_night": "Dark.", "weather_clear": "Dry."},
        "policy": {"default_no_invention": False},
    }
    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, manifest)})
    with module_client(tmp_path) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({}, "Ink it.", id="style without the policy line"),
        pytest.param({"stage": "time", "time": "night"}, "Ink it. Dark.", id="time night"),
        pytest.param({"stage": "weather"}, f"Ink it. {TIME_DAY} Dry.", id="defaults fill unset prompts"),
        pytest.param({"stage": "weather", "weather": "rain"}, f"Ink it. {TIME_DAY} {WEATHER_RAIN}",
                     id="weather rain"),
    ],
)
def test_manifest_prompts_merge_over_the_defaults(
    prompts_manifest: TestClient, body: dict[str, Any], expected: str
) -> None:
    assert prompt_of(prompts_manifest, {"scene_refs": ["a.png"], **body}) == expected


def test_a_missing_stage_prompt_is_a_preflight_error(client: TestClient, project: dict, tmp_path: Path) -> None:
    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, {"prompts": {"time_night": "  "}})})
    before = head(client)
    response = client.post(TRIGGER, json={"scene_refs": ["a.png"], "stage": "time", "time": "night"})
    assert_error(response, 400, "missing prompts.time_night", "planning_preflight_failed")
    assert head(client) == before
    assert not project_root(tmp_path).exists()


def test_manifest_style_refs_guard_and_generation_reach_the_plan(client: TestClient, project: dict, tmp_path: Path) -> None:
    manifest = {
        "scene_refs": ["never/used.png"],
        "style_refs": ["styles/m1.png", "styles/m2.png"],
        "generation": {"candidates": 3, "max_candidates": 4},
        "output_guard": {"enforce_grayscale": True, "max_chroma_delta": 3, "fail_on_chroma_exceed": True},
    }
    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, manifest)})
    log = run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])
    guard = {"enabled": True, "enforce_grayscale": True, "max_chroma_delta": 3.0, "fail_on_chroma_exceed": True}
    assert log["output_guard"] == guard
    assert log["generation"] == {"candidates": 3, "max_candidates": 4}
    job = log["jobs"][0]
    assert job["input_images"] == ["a.png", "styles/m1.png", "styles/m2.png"]
    assert (job["planned_generation"], job["planned_output_guard"]) == ({"candidates": 3}, guard)

    # the request's style_refs replace the manifest's
    log = run_log(client, trigger(client, {"scene_refs": ["a.png"], "style_refs": ["mine.png"]})["run_id"])
    assert log["jobs"][0]["input_images"] == ["a.png", "mine.png"]


def test_safe_batch_limit(client: TestClient, project: dict, tmp_path: Path) -> None:
    too_many = {"scene_refs": [f"s{i}.png" for i in range(21)]}
    message = "Batch exceeds safety limit (20). Use --allow-large-batch to override."
    assert_error(client.post(TRIGGER, json=too_many), 400, message, "planning_preflight_failed")
    assert len(job_ids(client, {"scene_refs": [f"s{i}.png" for i in range(20)]})) == 20

    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, {"safe_batch_limit": 2})})
    before = head(client)
    response = client.post(TRIGGER, json={"scene_refs": ["a.png", "b.png", "c.png"]})
    message = "Batch exceeds safety limit (2). Use --allow-large-batch to override."
    assert_error(response, 400, message, "planning_preflight_failed")
    assert head(client) == before
    assert job_ids(client, {"scene_refs": ["a.png", "b.png"]}) == ["style_1_a", "style_2_b"]


def test_candidates_dry_records_the_count_unchecked_run_checks_the_limit(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, {"generation": {"candidates": 3, "max_candidates": 2}})})
    dry = run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])
    assert dry["generation"] == {"candidates": 3, "max_candidates": 2}
    assert dry["jobs"][0]["planned_generation"] == {"candidates": 3}
    dry = run_log(client, trigger(client, {"scene_refs": ["a.png"], "candidates": 6})["run_id"])
    assert dry["generation"] == {"candidates": 6, "max_candidates": 2}

    before = head(client)
    paid = {"scene_refs": ["a.png"], "mode": "run", "confirm_spend": True, "provider": "local"}
    response = client.post(TRIGGER, json=paid)
    assert_error(response, 400, "Candidate count 3 exceeds limit 2.", "planning_preflight_failed")
    response = client.post(TRIGGER, json={**paid, "candidates": 5})
    assert_error(response, 400, "Candidate count 5 exceeds limit 2.", "planning_preflight_failed")
    assert head(client) == before


def test_a_missing_manifest_is_a_preflight_error_naming_the_app_root_path(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    # a manifest path from the project layer still resolves against the app root (§1.2)
    write_json(project_root(tmp_path) / "config" / "proj.json", {})
    write_json(project_root(tmp_path) / ".kroma" / "pipeline.settings.json", {"manifest_path": "config/proj.json"})
    path = app_root(tmp_path) / "config" / "proj.json"
    response = client.post(TRIGGER, json={"scene_refs": ["a.png"]})
    message = (
        f"manifest parse failed ({path}): failed to read planning manifest '{path}': "
        "No such file or directory (os error 2)"
    )
    assert_error(response, 400, message, "planning_preflight_failed")


def test_settings_errors_surface_verbatim_as_preflight_errors(client: TestClient, project: dict, tmp_path: Path) -> None:
    write_json(project_root(tmp_path) / ".kroma" / "pipeline.settings.json", {"pipeline": {"postprocess": {"upscale": "yes"}}})
    response = client.post(TRIGGER, json={"scene_refs": ["a.png"]})
    assert_error(
        response, 400, "pipeline settings field 'postprocess.upscale' has invalid type", "planning_preflight_failed"
    )
    toml = app_root(tmp_path) / "config" / "pipeline.settings.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text("[pipeline\n")
    body = client.post(TRIGGER, json={"scene_refs": ["a.png"]}).json()
    assert body["error_code"] == "planning_preflight_failed"
    assert body["error"].startswith(f"failed to parse pipeline settings TOML '{toml}': ")


# -- layered settings over HTTP (§1): files under the app root and the project root ---------------------


def test_project_layer_wins_over_app_layer_key_by_key(client: TestClient, project: dict, tmp_path: Path) -> None:
    toml = app_root(tmp_path) / "config" / "pipeline.settings.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    app_manifest = _manifest(tmp_path, {"generation": {"max_candidates": 5}}, "app.json")
    project_manifest = _manifest(tmp_path, {"generation": {"max_candidates": 3}}, "project.json")
    toml.write_text(
        f'[pipeline]\nmanifest_path = "{app_manifest}"\n'
        '[pipeline.postprocess]\nupscale = true\nupscale_backend = "python"\ncolor = true\ncolor_profile = "warm"\n'
        'bg_remove = true\nbg_remove_backends = ["rembg", "removebg"]\nbg_refine_openai = false\n'
    )
    log = run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])
    assert log["generation"]["max_candidates"] == 5
    assert log["postprocess"] == {
        "upscale": True, "upscale_backend": "python", "color": True, "color_profile": "warm", "bg_remove": True,
        "bg_remove_backends": ["rembg", "removebg"], "bg_refine_openai": False, "bg_refine_openai_required": True,
        "pipeline_order": ["generate", "bg_remove", "upscale", "color"],
    }

    write_json(
        project_root(tmp_path) / ".kroma" / "pipeline.settings.json",
        {
            "pipeline": {
                "manifest_path": project_manifest,
                "postprocess": {"color": False, "upscale_backend": "NCNN", "bg_remove_backends": ["photoroom"]},
            }
        },
    )
    log = run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])
    assert log["generation"]["max_candidates"] == 3
    assert log["postprocess"] == {
        "upscale": True, "upscale_backend": "ncnn", "color": False, "color_profile": None, "bg_remove": True,
        "bg_remove_backends": ["photoroom"], "bg_refine_openai": False, "bg_refine_openai_required": True,
        "pipeline_order": ["generate", "bg_remove", "upscale"],
    }
    assert log["jobs"][0]["planned_postprocess"] == log["postprocess"]


def test_app_json_is_the_fallback_only_without_the_toml(client: TestClient, project: dict, tmp_path: Path) -> None:
    _app_settings(tmp_path, {"manifest_path": _manifest(tmp_path, {"generation": {"max_candidates": 4}})})
    assert run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])["generation"]["max_candidates"] == 4
    toml = app_root(tmp_path) / "config" / "pipeline.settings.toml"
    toml.write_text("[pipeline.postprocess]\ncolor = true\n")
    log = run_log(client, trigger(client, {"scene_refs": ["a.png"]})["run_id"])
    assert log["generation"]["max_candidates"] == 6, "the JSON file is ignored once the TOML exists"
    assert log["postprocess"]["color"] is True


def test_project_layer_lives_under_the_storage_project_root(client: TestClient, project: dict, tmp_path: Path) -> None:
    custom = app_root(tmp_path) / "custom" / "demo"
    answer = client.put(f"{BASE}/storage/local", json={"project_root": "custom/demo"}).json()
    assert answer["storage"]["local"]["project_root"] == str(custom)
    manifest = _manifest(tmp_path, {"generation": {"max_candidates": 2}})
    write_json(project_root(tmp_path) / ".kroma" / "pipeline.settings.json", {"manifest_path": "config/none.json"})
    write_json(custom / ".kroma" / "pipeline.settings.json", {"manifest_path": manifest})
    answer = trigger(client, {"scene_refs": ["a.png"]})
    log = run_log(client, answer["run_id"])
    assert log["generation"]["max_candidates"] == 2
    assert log["storage"] == {"project_root": "custom/demo", "resolved_from_backend": True}
    assert "Project root: custom/demo" in answer["pipeline_trigger"]["stdout"].split("\n")
    assert all((custom / name).is_dir() for name in RUN_FOLDERS)
    assert not (project_root(tmp_path) / "outputs").exists()


# -- the project's world in the prompt ------------------------------------------------------------------


def _world(client: TestClient) -> dict[str, Any]:
    style = client.post(f"{BASE}/style-guides", json={"name": "Noir", "instructions": "  Heavy ink.  "}).json()
    mara = client.post(f"{BASE}/characters", json={"name": "Mara", "prompt_text": "tall, red coat"}).json()
    bo = client.post(f"{BASE}/characters", json={"name": "Bo", "prompt_text": "small dog"}).json()
    template = client.post(
        f"{BASE}/prompt-templates", json={"name": "Cover", "template_text": "A {mood} cover of {place}."}
    ).json()
    refs = client.post(f"{BASE}/reference-sets", json={"name": "Refs"}).json()["reference_set"]
    items = f"{BASE}/reference-sets/{refs['id']}/items"
    for item in (
        {"label": "second", "content_uri": "refs/b.PNG", "sort_order": 2},
        {"label": "first", "content_uri": "refs/a.jpg", "sort_order": 1},
        {"label": "text", "content_text": "just words"},
        {"label": "doc", "content_uri": "refs/notes.pdf", "sort_order": 3},
    ):
        assert client.post(items, json=item).status_code == 200
    return {
        "style": style["style_guide"],
        "mara": mara["character"],
        "bo": bo["character"],
        "template": template["prompt_template"],
        "refs": refs,
    }


def test_world_composes_the_prompt_and_adds_reference_images(client: TestClient, project: dict) -> None:
    world = _world(client)
    body = {
        "scene_refs": ["scene.png"],
        "style_refs": ["style.png"],
        "stage": "time",
        "time": "night",
        "style_guide_id": world["style"]["id"],
        "character_ids": [world["bo"]["id"], world["mara"]["id"]],
        "reference_set_id": world["refs"]["id"],
        "prompt_template_id": world["template"]["id"],
        "template_vars": {"mood": "dark", "place": "Rome"},
    }
    answer = trigger(client, body)
    prompt = f"A dark cover of Rome. Heavy ink. Bo: small dog Mara: tall, red coat {STYLE_BASE} {TIME_NIGHT} {NO_INVENTION}"
    recorded = {
        "prompt_template": {"id": world["template"]["id"], "name": "Cover"},
        "template_vars": {"mood": "dark", "place": "Rome"},
        "style_guide": {"id": world["style"]["id"], "name": "Noir"},
        "characters": [{"id": world["bo"]["id"], "name": "Bo"}, {"id": world["mara"]["id"], "name": "Mara"}],
        "reference_set": {"id": world["refs"]["id"], "name": "Refs"},
        "reference_images": ["refs/a.jpg", "refs/b.PNG"],
    }
    [job] = planned(client, answer["run_id"])
    assert job["prompt"] == prompt
    assert job["input_images"] == ["scene.png", "style.png", "refs/a.jpg", "refs/b.PNG"]
    assert job["world"] == recorded
    requested = client.get(f"/api/events/{answer['audit_id']}").json()["event"]["data"]
    assert requested["world"] == recorded

    log = run_log(client, answer["run_id"])
    assert log["jobs"][0]["prompt"] == prompt
    assert log["jobs"][0]["world"] == recorded
    jobs = client.get(f"{BASE}/runs/{answer['run_id']}/jobs").json()["jobs"]
    assert jobs[0]["prompt_text"] == prompt


def test_without_a_world_nothing_is_recorded(client: TestClient, project: dict) -> None:
    answer = trigger(client, {"scene_refs": ["a.png"]})
    assert planned(client, answer["run_id"])[0]["world"] is None
    assert "world" not in run_log(client, answer["run_id"])["jobs"][0]


def test_template_alone_comes_before_the_manifest_prompt(client: TestClient, project: dict) -> None:
    template = client.post(f"{BASE}/prompt-templates", json={"name": "Plain", "template_text": "Harbour at dawn."})
    body = {"scene_refs": ["a.png"], "prompt_template_id": template.json()["prompt_template"]["id"]}
    assert prompt_of(client, body) == f"Harbour at dawn. {DEFAULT_PROMPT}"


def test_a_template_placeholder_without_a_value_is_400_naming_it(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    world = _world(client)
    before = head(client)
    body = {"scene_refs": ["a.png"], "prompt_template_id": world["template"]["id"], "template_vars": {"mood": "x"}}
    response = client.post(TRIGGER, json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "planning_preflight_failed"
    assert "'place'" in response.json()["error"]
    assert "'mood'" not in response.json()["error"]
    assert head(client) == before
    assert not project_root(tmp_path).exists()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """A project that is never triggered successfully: its root must never appear."""
    tmp_path = tmp_path_factory.mktemp("quiet")
    with module_client(tmp_path) as client:
        yield client, tmp_path


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("style_guide_id", "missing", "Style guide not found"),
        ("character_ids", ["missing"], "Character not found"),
        ("reference_set_id", "missing", "Reference set not found"),
        ("prompt_template_id", "missing", "Prompt template not found"),
    ],
)
def test_unknown_world_ids_are_404_before_anything_is_appended(
    quiet: tuple[TestClient, Path], field: str, value: Any, message: str
) -> None:
    client, tmp_path = quiet
    before = head(client)
    assert_error(client.post(TRIGGER, json={"scene_refs": ["a.png"], field: value}), 404, message)
    assert head(client) == before
    assert not project_root(tmp_path).exists()


def test_one_unknown_character_among_known_ones_is_404(client: TestClient, project: dict) -> None:
    world = _world(client)
    body = {"scene_refs": ["a.png"], "character_ids": [world["mara"]["id"], "missing"]}
    assert_error(client.post(TRIGGER, json=body), 404, "Character not found")


def test_world_ids_of_another_project_are_not_found(client: TestClient, project: dict) -> None:
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    foreign = client.post("/api/projects/other/style-guides", json={"name": "X", "instructions": "y"}).json()
    body = {"scene_refs": ["a.png"], "style_guide_id": foreign["style_guide"]["id"]}
    assert_error(client.post(TRIGGER, json=body), 404, "Style guide not found")


def test_provider_is_recorded_on_the_run(client: TestClient, project: dict) -> None:
    answer = trigger(client, {"scene_refs": ["a.png"], "provider": "OpenAI"})
    assert client.get(f"/api/events/{answer['audit_id']}").json()["event"]["data"]["provider"] == "openai"
    assert client.get(f"{BASE}/runs/{answer['run_id']}").json()["run"]["provider_code"] == "openai"


# -- reference paths: project root first, then app root; escapes refused (§4.4) ------------------------


def test_relative_refs_resolve_against_the_project_root_then_the_app_root(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    root, app = project_root(tmp_path), app_root(tmp_path)
    write_image(root / "scenes" / "both.png")
    write_image(app / "scenes" / "both.png", "blue")
    write_image(app / "scenes" / "app_only.png")
    write_image(root / "styles" / "s.png")
    body = {"scene_refs": ["scenes/both.png", "scenes/app_only.png", "scenes/nowhere.png"], "style_refs": ["styles/s.png"]}
    answer = trigger(client, body)
    jobs = planned(client, answer["run_id"])
    assert [j["input_paths"] for j in jobs] == [
        [str(root / "scenes/both.png"), str(root / "styles/s.png")],
        [str(app / "scenes/app_only.png"), str(root / "styles/s.png")],
        [str(app / "scenes/nowhere.png"), str(root / "styles/s.png")],
    ]
    assert [j["input_images"][0] for j in jobs] == body["scene_refs"], "scene_refs are shown as given"


def test_absolute_refs_are_accepted_inside_the_project_root_only(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    root = project_root(tmp_path)
    inside = write_image(root / "scenes" / "a.png")
    answer = trigger(client, {"scene_refs": [str(inside)]})
    assert planned(client, answer["run_id"])[0]["input_paths"] == [str(inside)]

    elsewhere_in_app = write_image(app_root(tmp_path) / "shared" / "a.png")
    for body in ({"scene_refs": [str(elsewhere_in_app)]}, {"scene_refs": ["a.png"], "style_refs": ["/etc/hostname"]}):
        response = client.post(TRIGGER, json=body)
        assert_error(response, 400, "input_image must be a relative path under app root", "planning_preflight_failed")
    response = client.post(TRIGGER, json={"input": str(tmp_path)})
    assert_error(response, 400, "input_path must be a relative path under app root", "planning_preflight_failed")


@pytest.fixture(scope="module")
def escapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """A project whose root holds links out of the roots: a folder link, a file link inside an
    `input` folder, and a link in the app root."""
    tmp_path = tmp_path_factory.mktemp("escapes")
    root, outside = project_root(tmp_path), tmp_path / "outside"
    write_image(outside / "secret.png")
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside)
    (app_root(tmp_path) / "applink").symlink_to(outside)
    write_image(root / "mixed" / "a.png")
    (root / "mixed" / "b.png").symlink_to(outside / "secret.png")
    with module_client(tmp_path) as client:
        yield client, tmp_path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scene_refs": ["../outside.png"]}, "input_image must stay within app root"),
        ({"scene_refs": ["scenes/../../../outside.png"]}, "input_image must stay within app root"),
        ({"scene_refs": ["scenes/../a.png"]}, "input_image must stay within app root"),
        ({"scene_refs": ["a.png"], "style_refs": ["..\\..\\x.png"]}, "input_image must stay within app root"),
        ({"input": "../outside"}, "input_path must stay within app root"),
        ({"scene_refs": ["link/secret.png"]}, "input_image resolved outside app root (symlink traversal detected)"),
        ({"scene_refs": ["applink/secret.png"]}, "input_image resolved outside app root (symlink traversal detected)"),
        ({"scene_refs": ["a.png"], "style_refs": ["link/secret.png"]},
         "input_image resolved outside app root (symlink traversal detected)"),
        ({"input": "link"}, "input_path resolved outside app root (symlink traversal detected)"),
        ({"input": "mixed"}, "input_image resolved outside app root (symlink traversal detected)"),
    ],
)
def test_paths_escaping_the_roots_are_refused_before_anything_is_written(
    escapes: tuple[TestClient, Path], body: dict[str, Any], message: str
) -> None:
    client, tmp_path = escapes
    root = project_root(tmp_path)
    before = head(client)
    assert_error(client.post(TRIGGER, json=body), 400, message, "planning_preflight_failed")
    assert head(client) == before
    assert folders_under(root) == ["link", "mixed", "mixed/a.png", "mixed/b.png"]


def test_input_folder_lists_images_recursively_in_name_order(client: TestClient, project: dict, tmp_path: Path) -> None:
    root = project_root(tmp_path)
    for name in ("b.png", "a.JPG", "sub/c.webp", "sub/a.tiff", "z.png"):
        write_image(root / "in" / name)
    (root / "in" / "notes.txt").write_text("not an image")
    answer = trigger(client, {"input": "in"})
    jobs = planned(client, answer["run_id"])
    expected = ["in/a.JPG", "in/b.png", "in/sub/a.tiff", "in/sub/c.webp", "in/z.png"]
    assert [j["input_paths"][0] for j in jobs] == [str(root / p) for p in expected]
    assert [j["input_images"][0] for j in jobs] == [f"var/projects/demo/{p}" for p in expected]
    assert [j["job_key"] for j in jobs] == ["style_1_a", "style_2_b", "style_3_a", "style_4_c", "style_5_z"]

    single = trigger(client, {"input": "in/b.png"})
    assert [j["job_key"] for j in planned(client, single["run_id"])] == ["style_1_b"]


def test_input_errors(client: TestClient, project: dict, tmp_path: Path) -> None:
    root = project_root(tmp_path)
    (root / "empty").mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    assert_error(client.post(TRIGGER, json={"input": "nowhere"}), 400, "input not found: nowhere", "planning_preflight_failed")
    none = "manifest planning preflight failed: no scene references configured"
    assert_error(client.post(TRIGGER, json={"input": "empty"}), 400, none, "planning_preflight_failed")
    assert_error(client.post(TRIGGER, json={"input": "notes.txt"}), 400, none, "planning_preflight_failed")


def test_input_folder_works_in_run_mode(client: TestClient, project: dict, tmp_path: Path) -> None:
    root = project_root(tmp_path)
    write_image(root / "in" / "one.png")
    write_image(root / "in" / "two.png", "blue")
    body = {"input": "in", "mode": "run", "confirm_spend": True, "provider": "local"}
    answer = trigger(client, body)
    result = answer["pipeline_trigger"]
    assert (result["mode"], result["status_code"]) == ("run", 0)
    assert result["stdout"].split("\n")[3] == "Jobs: 2 (run/completed)"
    jobs = client.get(f"{BASE}/runs/{answer['run_id']}/jobs").json()["jobs"]
    assert [j["job_key"] for j in jobs] == ["style_1_one", "style_2_two"]
    assert all(j["status"] == "done" for j in jobs)
    assert all((root / j["final_output"].removeprefix("var/projects/demo/")).is_file() for j in jobs)


# -- writes only under the allowed roots --------------------------------------------------------------


def test_a_project_root_outside_the_allowed_roots_is_refused_before_anything_is_written(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / "demo"
    answer = client.put(f"{BASE}/storage/local", json={"project_root": str(elsewhere)})
    assert answer.status_code == 200
    assert answer.json()["storage"]["local"]["project_root"] == str(elsewhere)
    before = head(client)

    response = client.post(TRIGGER, json={"scene_refs": ["a.png"]})
    assert response.status_code == 400
    assert response.json()["error_code"] == "planning_preflight_failed"
    assert "outside the folders this server may write to" in response.json()["error"]
    upload = client.post(f"{BASE}/assets", files=[("file", ("a.png", image_bytes(), "image/png"))])
    assert upload.status_code == 400
    assert upload.json()["error_kind"] == "validation"
    assert "outside the folders this server may write to" in upload.json()["error"]

    assert head(client) == before
    assert not (tmp_path / "elsewhere").exists()
    assert client.get(f"{BASE}/runs").json()["count"] == 0
    assert client.get(f"{BASE}/assets").json()["count"] == 0


def test_a_project_root_symlinked_out_of_the_app_root_is_refused(client: TestClient, project: dict, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project_root(tmp_path).parent.mkdir(parents=True)
    project_root(tmp_path).symlink_to(outside)
    before = head(client)
    response = client.post(TRIGGER, json={"scene_refs": ["a.png"]})
    assert response.status_code == 400
    assert response.json()["error_code"] == "planning_preflight_failed"
    upload = client.post(f"{BASE}/assets", files=[("file", ("a.png", image_bytes(), "image/png"))])
    assert upload.status_code == 400
    assert head(client) == before
    assert list(outside.iterdir()) == []


def test_configured_allowed_roots_admit_a_project_root_outside_the_app_root(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    client = make_client(allowed_roots=os.pathsep.join([str(app_root(tmp_path)), str(elsewhere)]))
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    root = elsewhere / "demo"
    client.put(f"{BASE}/storage/local", json={"project_root": str(root)})

    upload = client.post(f"{BASE}/assets", files=[("file", ("pic.png", image_bytes(), "image/png"))])
    assert upload.status_code == 200, upload.text
    rel_path = upload.json()["assets"][0]["rel_path"]
    assert rel_path == "inputs/pic.png"
    assert (root / rel_path).is_file()

    answer = trigger(client, {"scene_refs": [rel_path]})
    lines = answer["pipeline_trigger"]["stdout"].split("\n")
    assert lines[2] == f"Project root: {root}"
    assert lines[0].startswith(f"Run log: {root}/runs/run_")
    assert all((root / name).is_dir() for name in RUN_FOLDERS)
    log = run_log(client, answer["run_id"])
    assert log["storage"] == {"project_root": str(root), "resolved_from_backend": True}
    assert planned(client, answer["run_id"])[0]["input_paths"] == [str(root / rel_path)]

    # the configured roots replace the default: the app root is writable only when listed
    other = make_client(allowed_roots=str(elsewhere))
    other.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    refused = other.post(TRIGGER, json={"scene_refs": ["a.png"]})
    assert refused.status_code == 400
    assert refused.json()["error_code"] == "planning_preflight_failed"


# -- rebuild (`kroma projections rebuild`) reproduces runs, jobs and assets --------------------------------

REBUILT_TABLES = ("runs", "run_jobs", "run_candidates", "assets")


def _dump(path: str) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in REBUILT_TABLES}
    finally:
        db.close()


def _rebuild_workload(client: TestClient, root: Path) -> list[str]:
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    files = [("file", ("Scene 1.png", image_bytes("red"), "image/png")), ("file", ("b.jpg", image_bytes("blue", fmt="JPEG"), "image/jpeg"))]
    uploaded = client.post(f"{BASE}/assets", files=files).json()["assets"]
    client.post(f"{BASE}/assets", files=[("file", ("Scene 1.png", image_bytes("green"), "image/png"))])
    write_image(root / "in" / "x.png")
    style = client.post(f"{BASE}/style-guides", json={"name": "Noir", "instructions": "ink"}).json()["style_guide"]
    runs = [
        trigger(client, {"scene_refs": [a["rel_path"] for a in uploaded], "style_guide_id": style["id"]})["run_id"],
        trigger(client, {"input": "in", "stage": "weather", "time": "night", "weather": "rain", "candidates": 2})["run_id"],
        trigger(client, {"input": "in", "mode": "run", "confirm_spend": True, "provider": "local"})["run_id"],
    ]
    other = trigger(client, {"scene_refs": ["a.png"]}, url="/api/projects/other/runs/trigger")["run_id"]
    reads = [f"{BASE}/runs", f"{BASE}/assets", "/api/projects/other/runs", f"/api/projects/other/runs/{other}"]
    for run_id in runs:
        reads += [f"{BASE}/runs/{run_id}", f"{BASE}/runs/{run_id}/jobs", f"{BASE}/runs/{run_id}/log"]
    reads += [f"{BASE}/assets/{a['id']}" for a in uploaded]
    return reads


def test_cli_rebuild_reproduces_runs_jobs_and_assets(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), workspace_root=str(tmp_path / "app"), auth_dev_bypass=True)
    with TestClient(create_app(settings)) as client:
        reads = _rebuild_workload(client, project_root(tmp_path))
        answers = {url: client.get(url).json() for url in reads}
        before = _dump(settings.readmodels_db)
    assert all(answer["ok"] is True for answer in answers.values()), answers
    assert [t for t in REBUILT_TABLES if not before[t]] == []
    assert len(before["runs"]) == 4

    db = sqlite3.connect(settings.readmodels_db)
    with db:  # only a real refold of the log brings the rows back
        for table in REBUILT_TABLES:
            db.execute(f"DELETE FROM {table}")
    db.close()
    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", settings.data_dir])
    assert result.exit_code == 0, result.output

    assert _dump(settings.readmodels_db) == before
    with TestClient(create_app(settings)) as client:
        assert {url: client.get(url).json() for url in reads} == answers
