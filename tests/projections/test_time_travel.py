"""Time travel: `?as_of=POSITION` on a project's detail and configuration lists answers what the live
routes answered right after that event; `kroma projections rebuild --until POSITION` builds the read
models as of that position into a separate folder and leaves the live ones alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.domain import runs as ev
from kroma.domain.assets import AssetRecord, asset_recorded
from kroma.http.app import create_app
from tests.http.log_seed import append
from tests.projections.test_cli_rebuild_configuration import _dump

LISTS = ("style-guides", "characters", "prompt-templates", "reference-sets", "provider-accounts")
BASE = "/api/projects/demo"


def head(client: TestClient) -> int:
    return client.get("/api/events/verify").json()["head"]


def answers(client: TestClient, query: str = "") -> dict[str, Any]:
    return {path: client.get(f"{BASE}{path}{query}").json() for path in ("", *(f"/{name}" for name in LISTS))}


def history(client: TestClient) -> dict[int, dict[str, Any]]:
    """Drive a project through changes of every listed kind; the live answers after each step."""
    seen: dict[int, dict[str, Any]] = {}

    def step(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.request(method, f"{BASE}{path}", json=body)
        assert response.status_code == 200, response.text
        seen[head(client)] = answers(client)
        return response.json()

    project = client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]
    seen[head(client)] = answers(client)
    noir = step("POST", "/style-guides", {"name": "Noir", "instructions": "ink"})["style_guide"]
    step("POST", "/characters", {"name": "Hero", "description": "brave"})
    step("PUT", f"/style-guides/{noir['id']}", {"name": "Noir 2", "notes": "darker"})
    step("POST", "/prompt-templates", {"name": "Cover", "template_text": "Draw {scene}"})
    faces = step("POST", "/reference-sets", {"name": "Faces"})["reference_set"]
    step("POST", "/provider-accounts", {"provider_code": "openai", "config_json": {"model": "m"}})
    step("PUT", "/storage/s3", {"enabled": True, "bucket": "art"})
    step("DELETE", f"/reference-sets/{faces['id']}", {})
    append(
        client,
        ev.run_recorded(ev.RunRecord(id="r1", project_id=project["id"], mode="dry")),
        ev.job_recorded(ev.JobRecord(id="j1", project_id=project["id"], run_id="r1")),
        asset_recorded(AssetRecord(id="a1", project_id=project["id"])),
    )
    seen[head(client)] = answers(client)
    step("POST", "/provider-accounts", {"provider_code": "fal", "display_name": "Fal"})
    client.post("/api/projects", json={"name": "Demo renamed", "slug": "demo", "description": "d"})
    seen[head(client)] = answers(client)
    step("DELETE", f"/style-guides/{noir['id']}", {})
    return seen


def test_as_of_answers_what_the_live_routes_answered_right_after_that_event(client: TestClient) -> None:
    seen = history(client)

    for position, then in seen.items():
        assert answers(client, f"?as_of={position}") == then, position
    assert seen[max(seen)]["/style-guides"]["count"] == 0  # the live lists moved on meanwhile
    first_runs = min(p for p, a in seen.items() if a[""]["counts"]["runs"])
    assert seen[first_runs][""]["counts"] == {"runs": 1, "jobs": 1, "assets": 1}


def test_as_of_before_the_project_existed_is_404_and_beyond_the_head_or_not_a_position_is_400(
    client: TestClient,
) -> None:
    client.post("/api/projects", json={"name": "Other"})
    created_at = head(client)
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    last = head(client)

    for path in ("", "/style-guides", "/provider-accounts"):
        before = client.get(f"{BASE}{path}?as_of={created_at}")
        assert (before.status_code, before.json()["error"]) == (404, "Project not found")
        beyond = client.get(f"{BASE}{path}?as_of={last + 1}")
        assert beyond.status_code == 400
        assert beyond.json()["error"] == f"Query parameter 'as_of' is beyond the log head ({last})"
        for bad, said in (("x", "must be an integer"), ("-1", "must be a log position (0 or more)")):
            response = client.get(f"{BASE}{path}?as_of={bad}")
            assert (response.status_code, response.json()["error"]) == (400, f"Query parameter 'as_of' {said}")


# -- kroma projections rebuild --until ----------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Path:
    settings = Settings(
        data_dir=str(tmp_path / "live"), workspace_root=str(tmp_path), auth_dev_bypass=True, agent_dispatch=False
    )
    with TestClient(create_app(settings)) as client:
        history(client)
    return tmp_path / "live"


def cli(*args: str, **env: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env or None)


def prefix_read_models(live: Path, until: int, folder: Path) -> dict[str, list[tuple]]:
    """The read models of a data folder that holds only the first `until` events (export + import)."""
    folder.mkdir()
    log = folder / "prefix.jsonl"
    assert cli("events", "export", "--data-dir", str(live), "--until", str(until), "--out", str(log)).exit_code == 0
    assert cli("events", "import", str(log), "--data-dir", str(folder / "data")).exit_code == 0
    tables = _dump(str(folder / "data" / "readmodels.db"))
    tables.pop("token_usage", None)  # no projection's: the server keeps it beside the read models
    return tables


@pytest.mark.parametrize("style", ["--out", "--data-dir with KROMA_DATA_DIR"])
def test_rebuild_until_builds_the_read_models_as_of_that_position_elsewhere_and_leaves_the_live_ones(
    live: Path, tmp_path: Path, style: str
) -> None:
    until = 12
    before = _dump(str(live / "readmodels.db"))
    out = tmp_path / "as-of"

    if style == "--out":
        result = cli("projections", "rebuild", "--data-dir", str(live), "--until", str(until), "--out", str(out))
    else:
        result = cli("projections", "rebuild", "--until", str(until), "--data-dir", str(out), KROMA_DATA_DIR=str(live))

    assert result.exit_code == 0, result.output
    assert f"as of position {until} into {out / 'readmodels.db'}" in result.output
    assert _dump(str(out / "readmodels.db")) == prefix_read_models(live, until, tmp_path / "reference")
    assert _dump(str(live / "readmodels.db")) == before


def test_rebuild_until_refuses_the_live_folder_an_existing_target_and_a_position_beyond_the_head(
    live: Path, tmp_path: Path
) -> None:
    same = cli("projections", "rebuild", "--until", "3", KROMA_DATA_DIR=str(live))
    assert same.exit_code == 2 and "separate folder" in same.output

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "readmodels.db").write_bytes(b"")
    taken = cli("projections", "rebuild", "--data-dir", str(live), "--until", "3", "--out", str(tmp_path / "taken"))
    assert taken.exit_code == 1 and "already exists" in taken.output

    far = cli("projections", "rebuild", "--data-dir", str(live), "--until", "9999", "--out", str(tmp_path / "far"))
    assert far.exit_code == 1 and "beyond the log head" in far.output
    assert not (tmp_path / "far" / "readmodels.db").exists()
