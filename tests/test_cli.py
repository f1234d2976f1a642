"""The `kroma` console script against a real data folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from kroma.cli import main
from kroma.config import Settings
from kroma.domain import projects
from kroma.events.envelope import Metadata
from kroma.services import Services


def seed(data_dir: Path, n: int) -> None:
    async def run() -> None:
        services = Services(Settings(data_dir=str(data_dir)))
        await services.open(follow=False)
        try:
            for i in range(n):
                target = projects.validate_upsert(projects.UpsertProject(name=f"P {i}"))
                events, expected = projects.decide_upsert(target, None, f"id-{i}", Metadata())
                await services.store.append(events, expected)
        finally:
            await services.close()

    asyncio.run(run())


def test_events_list_show_and_verify(tmp_path: Path) -> None:
    seed(tmp_path, 3)
    runner = CliRunner()
    listed = runner.invoke(main, ["events", "list", "--data-dir", str(tmp_path), "--type", "project.created"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("project.created") == 3
    shown = runner.invoke(main, ["events", "show", "1", "--data-dir", str(tmp_path)])
    assert json.loads(shown.output)["data"]["project_id"] == "id-0"
    verified = runner.invoke(main, ["events", "verify", "--data-dir", str(tmp_path)])
    assert "intact through position 6" in verified.output
    missing = runner.invoke(main, ["events", "show", "999", "--data-dir", str(tmp_path)])
    assert missing.exit_code != 0


def test_projections_status_and_rebuild_catch_up_to_the_head(tmp_path: Path) -> None:
    seed(tmp_path, 4)
    runner = CliRunner()
    status = runner.invoke(main, ["projections", "status"], env={"KROMA_DATA_DIR": str(tmp_path)})
    assert "log head: 8" in status.output and "8 behind" in status.output
    rebuilt = runner.invoke(main, ["projections", "rebuild", "--data-dir", str(tmp_path)])
    assert rebuilt.exit_code == 0 and "through position 8" in rebuilt.output
    after = runner.invoke(main, ["projections", "status", "--data-dir", str(tmp_path)])
    assert "behind" not in after.output
    one = runner.invoke(main, ["projections", "rebuild", "projects", "--data-dir", str(tmp_path)])
    assert one.exit_code == 0 and "rebuilt projects" in one.output
    unknown = runner.invoke(main, ["projections", "rebuild", "nope", "--data-dir", str(tmp_path)])
    assert unknown.exit_code != 0 and "unknown projection" in unknown.output
