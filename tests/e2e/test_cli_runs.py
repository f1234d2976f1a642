"""`kroma runs trigger` / `kroma runs watch` against the real server process: trigger over HTTP,
follow the run's Server-Sent Events to its end, print a summary and exit with the run's outcome.

Under CliRunner stdout is not a terminal, so the watcher prints one plain line per event."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import httpx
from click.testing import CliRunner, Result
from PIL import Image

from kroma.cli import main
from tests.e2e.conftest import Server

SLUG = "demo"
GRAY = (128, 128, 128)
RED = (200, 40, 40)
RUN_ID = r"[0-9a-f-]{36}"


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(out, format="PNG")
    return out.getvalue()


def project_with_scenes(server: Server, **scenes: tuple[int, int, int]) -> list[str]:
    """A project `demo` with one uploaded PNG per name; their scene refs in order."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/api/projects", json={"name": "Demo", "slug": SLUG}).status_code == 200
        files = [("file", (f"{name}.png", png(color), "image/png")) for name, color in scenes.items()]
        response = http.post(f"/api/projects/{SLUG}/assets", files=files)
        assert response.status_code == 200, response.text
        return [asset["rel_path"] for asset in response.json()["assets"]]


def kroma(server: Server, *args: str) -> Result:
    result = CliRunner().invoke(main, [*args, "--url", server.url])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def scene_args(refs: list[str]) -> list[str]:
    return [arg for ref in refs for arg in ("--scene-ref", ref)]


def test_trigger_dry_prints_the_run_summary_lines_then_the_planned_jobs_and_exits_0(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    refs = project_with_scenes(server, one=GRAY, two=GRAY)
    result = kroma(server, "runs", "trigger", SLUG, *scene_args(refs))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Run log: var/projects/{SLUG}/runs/run_")
    assert lines[1:4] == [f"Project: {SLUG}", f"Project root: var/projects/{SLUG}", "Jobs: 2 (dry/planned)"]
    summary = json.loads(lines[4].removeprefix("KROMA_PIPELINE_SUMMARY_JSON: "))
    assert summary["mode"] == "dry" and summary["jobs"] == 2
    assert lines[5].startswith("run.requested mode=dry jobs=2 candidates=1")
    assert lines[6:8] == ["job.planned style_1_one (1 candidate(s))", "job.planned style_2_two (1 candidate(s))"]
    assert re.fullmatch(rf"Run {RUN_ID}: ok \(dry run, 2 job\(s\) planned\)", lines[8])
    assert len(lines) == 9


def test_trigger_run_on_the_local_provider_follows_every_step_and_watch_replays_it(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    refs = project_with_scenes(server, one=GRAY)
    args = ["runs", "trigger", SLUG, *scene_args(refs), "--mode", "run", "--confirm-spend", "--provider", "local",
            "--candidates", "2"]
    result = kroma(server, *args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    run_id = re.fullmatch(rf"Run ({RUN_ID}) queued", lines[0])
    assert run_id is not None
    events = [line.split(" ", 1)[0] for line in lines[1:] if re.match(r"^[a-z_]+\.[a-z_]+ ", line + " ")]
    assert events.count("candidate.generated") == 2 and events.count("candidate.checked") == 2
    assert events[:3] == ["run.requested", "job.planned", "run.started"]
    assert events[-2:] == ["job.winner_selected", "run.completed"]
    assert "Jobs: 1 (run/completed)" in lines
    summary = lines[-1]
    assert summary == f"Run {run_id[1]}: ok (1 job(s), 0 failed the output guard): style_1_one winner c1"
    assert (server.data_dir.parent / "var" / "projects" / SLUG / "outputs" / "style_1_one__c1.png").is_file()

    watched = kroma(server, "runs", "watch", run_id[1], "--project", SLUG)
    assert watched.exit_code == 0, watched.output
    assert watched.stdout.splitlines()[-1] == summary
    assert "job.winner_selected style_1_one winner c1" in watched.stdout


def test_a_run_whose_job_fails_the_output_guard_exits_1_with_the_guard_message(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    config = server.data_dir.parent / "config"  # the server's app root is the data folder's parent
    config.mkdir(parents=True)
    manifest = {
        "prompts": {"style_base": "Colour ink drawing."},
        "output_guard": {"fail_on_chroma_exceed": True, "max_chroma_delta": 0},
    }
    (config / "m.json").write_text(json.dumps(manifest))
    (config / "pipeline.settings.toml").write_text('[pipeline]\nmanifest_path = "config/m.json"\n')
    refs = project_with_scenes(server, red=RED)
    result = kroma(server, "runs", "trigger", SLUG, *scene_args(refs), "--mode", "run", "--confirm-spend",
                   "--provider", "local")
    assert result.exit_code == 1, result.output
    assert "job.failed style_1_red all_candidates_failed_output_guard" in result.stdout
    assert re.search(rf"\nRun {RUN_ID}: failed \(1 job\(s\), 1 failed the output guard\): style_1_red failed\n$", result.stdout)
    assert result.stderr == f"Output guard failed for 1 job(s). Bad outputs moved to var/projects/{SLUG}/archive/bad\n"


def test_trigger_and_watch_errors_are_one_line_on_stderr(start_server: Callable[..., Server]) -> None:
    server = start_server()
    refs = project_with_scenes(server, one=GRAY)
    unconfirmed = kroma(server, "runs", "trigger", SLUG, *scene_args(refs), "--mode", "run")
    assert unconfirmed.exit_code == 1
    assert unconfirmed.stderr == "Run mode requires explicit spend confirmation\n"
    unknown = kroma(server, "runs", "trigger", "nobody", *scene_args(refs))
    assert unknown.exit_code == 1 and unknown.stderr == "Project not found\n"
    missing = kroma(server, "runs", "watch", "no-such-run", "--project", SLUG)
    assert missing.exit_code == 1 and missing.stderr == "Run not found\n"
    down = CliRunner().invoke(main, ["runs", "watch", "r", "--project", SLUG, "--url", "http://127.0.0.1:9"])
    assert down.exit_code == 1
    assert down.stderr.startswith("cannot reach the Kroma server at http://127.0.0.1:9")
