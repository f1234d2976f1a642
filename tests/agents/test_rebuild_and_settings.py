"""The dispatch read model rebuilds identically; dispatcher settings and the `kroma worker` command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner

from kroma.agents import DispatchOptions
from kroma.agents.client import Tries
from kroma.cli import main
from kroma.config import Settings, load_settings
from tests.agents.conftest import TOKEN, World, open_world
from tests.fakes.agent_server import FakeAgent
from tests.http.log_seed import ManualClock

TABLES = ("agent_instructions", "agent_instruction_events")


def _dump(world: World) -> dict[str, list[dict[str, Any]]]:
    world.settle()
    portal, reader = world.client.blocking_portal, world.services.reader
    return {t: portal.call(reader.all, f"SELECT * FROM {t} ORDER BY id", ()) for t in TABLES}


def test_rebuilding_the_read_model_reproduces_every_worker_column_and_event(world: World) -> None:
    world.agent.default = ("status", 500)
    world.agent.enqueue(("ok", {"status": "running"}), ("status", 503))
    ids = [world.confirmed(f"t{i}") for i in range(4)]
    worker = world.dispatcher("w", tries=Tries(timeout=5, retries=0), retry_backoff_seconds=1)
    assert world.step(worker) and world.step(worker)  # done; a retry
    assert world.client.blocking_portal.call(worker.reserve_next) is not None  # dies holding it
    world.clock.advance(200)
    while world.step(worker) or world.step(worker):  # a reap, then everything due, until all end
        world.clock.advance(30)
    before = _dump(world)
    answers = {i: (world.instruction(i), world.events(i)) for i in ids}
    assert sorted(a[0]["status"] for a in answers.values()) == ["done", "failed", "failed", "failed"]
    assert any(row["agent_response_json"] for row in before["agent_instructions"])
    assert any(row["last_error"] == "lease_expired" for row in before["agent_instructions"]) is False
    assert (
        sum(message.startswith("error=lease_expired") for _, m in answers.values() for _, message in m) == 1
    )

    world.client.blocking_portal.call(world.services.runner.rebuild)
    assert _dump(world) == before
    assert {i: (world.instruction(i), world.events(i)) for i in answers} == answers


def _settings_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kroma.toml"
    path.write_text(text)
    return str(path)


def test_agent_settings_come_from_toml_then_kroma_env_then_the_reference_env(tmp_path: Path) -> None:
    config = _settings_file(
        tmp_path,
        '[agent]\ndispatch = false\napi_url = "http://toml"\npoll_interval_seconds = 0.5\n'
        "dispatch_retries = 4\nmax_locked_seconds = 30\n",
    )
    settings = load_settings(environ={}, config_file=config)
    assert (settings.agent_dispatch, settings.agent_api_url, settings.agent_api_token) == (
        False,
        "http://toml",
        "",
    )
    assert (settings.agent_poll_interval_seconds, settings.agent_dispatch_retries) == (0.5, 4)
    assert settings.agent_max_locked_seconds == 30

    env = {"IAT_AGENT_API_URL": "http://iat", "IAT_AGENT_API_TOKEN": "iat-token", "KROMA_AGENT_DISPATCH": "1"}
    settings = load_settings(environ=env, config_file=config)
    assert (settings.agent_dispatch, settings.agent_api_url, settings.agent_api_token) == (
        True,
        "http://iat",
        "iat-token",
    )
    env |= {"KROMA_AGENT_API_URL": "http://kroma", "KROMA_AGENT_API_TOKEN": "kroma-token"}
    settings = load_settings(environ=env, config_file=config, agent_api_url="http://flag")
    assert (settings.agent_api_url, settings.agent_api_token) == ("http://flag", "kroma-token")


def test_dispatcher_defaults_are_the_reference_worker_options() -> None:
    options = DispatchOptions.from_settings(Settings(agent_api_token="very-secret-token"))
    assert re.fullmatch(r"worker-[0-9a-f]+", options.worker_id)
    assert (options.poll_interval, options.max_locked_seconds, options.default_max_attempts) == (
        2.0,
        120.0,
        3,
    )
    assert options.retry_backoff_seconds == 10.0
    assert options.tries == Tries(timeout=20.0, retries=2, backoff=1.5)
    assert options.lease_seconds == 120.0  # 3 x 20 + 1.5 + 3 + 5 is less
    assert "very-secret-token" not in repr(options)
    assert Settings().agent_dispatch is True
    assert DispatchOptions.from_settings(Settings(agent_worker_id="named")).worker_id == "named"
    assert DispatchOptions.from_settings(Settings(agent_worker_id="named"), "flag").worker_id == "flag"


def _confirmed_instruction(tmp_path: Path, agent: FakeAgent) -> tuple[str, str]:
    """A data folder holding one confirmed instruction; returns (data_dir, instruction id)."""
    with open_world(tmp_path, ManualClock(), agent) as client:
        world = World(client, ManualClock(), agent)
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        instruction_id = world.confirmed()
        world.settle()
        return str(tmp_path / "data"), instruction_id


def test_kroma_worker_once_dispatches_one_instruction_and_reports_it(
    tmp_path: Path, agent: FakeAgent
) -> None:
    data_dir, instruction_id = _confirmed_instruction(tmp_path, agent)
    args = ["worker", "--once", "--data-dir", data_dir, "--agent-api-url", agent.url, "--worker-id", "w-cli"]
    runner = CliRunner()
    result = runner.invoke(main, args, env={"KROMA_AGENT_API_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "ok": True,
        "worker_id": "w-cli",
        "processed": 1,
    }
    [request] = agent.requests
    assert request.instruction_id == instruction_id and request.headers["authorization"] == f"Bearer {TOKEN}"

    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert msgspec.json.decode(again.stdout.strip().splitlines()[-1])["processed"] == 0


def test_kroma_worker_refuses_an_empty_worker_id(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["worker", "--once", "--data-dir", str(tmp_path), "--worker-id", " "])
    assert result.exit_code == 2 and "--worker-id must not be empty" in result.output
