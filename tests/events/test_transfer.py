"""`kroma events export` / `kroma events import`: the log as JSON lines and back. An export imported
into an empty data folder replays to read models identical to the source's and verifies; a broken
file is refused at its first bad line and nothing is written."""

from __future__ import annotations

import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.events import codec, transfer
from kroma.http.app import create_app
from tests.projections.test_cli_rebuild_configuration import _chat_and_agent, _dump, _records, _runs_and_links


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with every kind of read model, written through the API; its server stopped."""
    root = tmp_path_factory.mktemp("transfer")
    settings = Settings(
        data_dir=str(root / "data"), workspace_root=str(root), auth_dev_bypass=True, agent_dispatch=False
    )
    with TestClient(create_app(settings)) as client:
        project = client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]
        _records(client, "/api/projects/demo")
        _chat_and_agent(client, "/api/projects/demo")
        _runs_and_links(client, "demo", project["id"])
        body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-x"}
        client.post("/api/projects/demo/secrets", json=body)
        client.delete("/api/projects/demo/secrets/openai/api_key")
    return root / "data"


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "log.jsonl"
    result = cli("events", "export", "--data-dir", str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def stored_rows(data_dir: Path) -> list[tuple]:
    with closing(sqlite3.connect(data_dir / "events.db")) as db:
        return db.execute("SELECT * FROM events ORDER BY position").fetchall()


def test_an_export_imported_into_an_empty_folder_replays_to_the_same_read_models_and_verifies(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    target = tmp_path / "replayed"

    result = cli("events", "import", str(exported), "--data-dir", str(target))

    head = len(stored_rows(source))
    assert result.exit_code == 0, result.output
    assert f"imported {head} events" in result.output
    assert stored_rows(target) == stored_rows(source)  # byte for byte, hashes included
    assert _dump(str(target / "readmodels.db")) == _dump(str(source / "readmodels.db"))
    verified = cli("events", "verify", "--data-dir", str(target))
    assert verified.output == f"hash chain intact through position {head}\n"


def test_each_line_carries_the_stored_columns_and_the_chain_can_be_checked_from_the_file_alone(
    exported: Path, source: Path
) -> None:
    lines = [json.loads(line) for line in exported.read_bytes().splitlines()]

    assert [e["position"] for e in lines] == list(range(1, len(stored_rows(source)) + 1))
    prev = codec.GENESIS
    for e in lines:
        header = codec.header_bytes(
            e["position"], e["event_id"], e["stream_id"], e["stream_version"], e["type"],
            e["schema_version"], e["recorded_at"],
        )  # fmt: skip
        prev = codec.link(prev, header, codec.encode(e["data"]), codec.encode(e["metadata"]))
        assert prev.hex() == e["hash"], e["position"]


def test_after_and_until_choose_a_range_and_stdout_is_the_default(source: Path) -> None:
    result = cli("events", "export", "--data-dir", str(source), "--after", "3", "--until", "7")

    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0
    assert [e["position"] for e in lines] == [4, 5, 6, 7]
    assert "exported 4 events" in result.stderr


def test_an_export_is_written_page_by_page(source: Path) -> None:
    class Sink(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            self.writes += 1
            return super().write(data)

    sink = Sink()
    count = transfer.export(str(source / "events.db"), sink, until=10, page=3)

    assert count == 10 and sink.writes == 4  # 3 + 3 + 3 + 1 events, never the whole log at once
    assert len(sink.getvalue().splitlines()) == 10


def _edit_data(lines: list[bytes]) -> list[bytes]:
    event = json.loads(lines[4])
    event["data"]["forged"] = True
    return [*lines[:4], json.dumps(event).encode(), *lines[5:]]


BROKEN = {
    "an edited event": (_edit_data, "line 5: hash mismatch"),
    "a removed event": (lambda lines: lines[:4] + lines[5:], "line 5: position 6 where 5 was expected"),
    "two swapped events": (
        lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]],
        "line 4: position 5 where 4 was expected",
    ),
    "a line that is not an event": (lambda lines: [*lines[:2], b'{"oops": 1}', *lines[3:]], "line 3: not an exported event"),
    "a truncated line": (lambda lines: [*lines[:6], lines[6][:40], *lines[7:]], "line 7: not an exported event"),
    "a log that does not start at 1": (lambda lines: lines[2:], "line 1: starts at position 3"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_file_is_refused_at_its_first_bad_line_and_nothing_is_written(
    exported: Path, tmp_path: Path, case: str
) -> None:
    breaker, said = BROKEN[case]
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join(breaker(exported.read_bytes().splitlines())) + b"\n")
    target = tmp_path / "target"

    result = cli("events", "import", str(broken), "--data-dir", str(target))

    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"import refused, nothing written: {said}" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == []


def test_an_import_into_a_folder_that_has_events_is_refused_and_leaves_it_alone(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    assert cli("events", "import", str(exported), "--data-dir", str(target)).exit_code == 0
    before = stored_rows(target)

    again = cli("events", "import", str(exported), "--data-dir", str(target))

    assert again.exit_code == 1
    assert f"already holds {len(before)} events" in again.stderr
    assert stored_rows(target) == before
