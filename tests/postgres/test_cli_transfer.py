"""`kroma events verify|export|import` and `kroma projections status` on the store the settings
choose: with KROMA_EVENT_STORE_URL naming the server they read and write the test's schemas there,
never the data folder's files. An SQLite export imported into PostgreSQL verifies and exports again
byte for byte; a tampered log is named by its first bad position; a broken file writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.events import transfer
from kroma.http.app import create_app
from tests.events.postgres_server import POSTGRES_URL
from tests.postgres.conftest import pg_settings

Tamper = Callable[[psycopg.Connection, str], object]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite data folder written through the API (11 events, a shredded secret among them)."""
    root = tmp_path_factory.mktemp("pg-transfer")
    settings = Settings(
        data_dir=str(root / "data"), workspace_root=str(root), auth_dev_bypass=True, agent_dispatch=False
    )
    with TestClient(create_app(settings)) as client:
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        for name in ("Noir", "Pop", "Ink"):
            client.post("/api/projects/demo/style-guides", json={"name": name, "instructions": "x"})
        client.post("/api/projects/demo/characters", json={"name": "Hero"})
        client.put("/api/projects/demo/storage/s3", json={"bucket": "b"})
        body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-shredded"}
        assert client.post("/api/projects/demo/secrets", json=body).status_code == 200
        assert client.delete("/api/projects/demo/secrets/openai/api_key").status_code == 200
        client.post("/api/projects", json={"name": "Other"})
    return root / "data"


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pg-export") / "log.jsonl"
    result = CliRunner().invoke(main, ["events", "export", "--data-dir", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def pg_cli(schema: str, data_dir: Path, *args: str, url: str = POSTGRES_URL) -> Any:
    env = {"KROMA_EVENT_STORE_URL": url, "KROMA_EVENT_STORE_SCHEMA": schema, "KROMA_DATA_DIR": str(data_dir)}
    return CliRunner().invoke(main, list(args), env=env)


def where(schema: str) -> str:
    return f"schema {schema} of {POSTGRES_URL}"


def load(exported: Path, schema: str) -> None:
    """The export's rows straight into the schema (no read models): the tests that only read the log."""
    with exported.open("rb") as lines:
        assert transfer.import_pg(lines, POSTGRES_URL, schema) == 11


def run_sql(schema: str, fn: Tamper) -> None:
    with psycopg.connect(POSTGRES_URL) as conn, conn.transaction():
        conn.execute(f'SET search_path TO "{schema}"')
        fn(conn, schema)


def namespaces(prefix: str) -> list[str]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (prefix, f"{prefix}\\_%"),
        ).fetchall()
    return sorted(name for (name,) in rows)


def no_traceback(result: Any) -> bool:
    return result.exception is None or isinstance(result.exception, SystemExit)


# -- export (SQLite) -> import (PostgreSQL) -> verify, export again ------------------------------------


def test_an_sqlite_export_imported_into_postgres_verifies_and_exports_again_byte_for_byte(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    imported = pg_cli(pg_schema, tmp_path / "data", "events", "import", str(exported))

    assert imported.exit_code == 0, imported.output
    assert imported.output == (
        f"imported 11 events into {where(pg_schema)}; hash chain intact through position 11;"
        " read models built through position 11\n"
    )
    assert not (tmp_path / "data" / "events.db").exists()  # the log went to the server, not the folder
    verified = pg_cli(pg_schema, tmp_path / "data", "events", "verify")
    assert (verified.exit_code, verified.output) == (0, "hash chain intact through position 11\n")
    again = tmp_path / "again.jsonl"
    exported_again = pg_cli(pg_schema, tmp_path / "data", "events", "export", "--out", str(again))
    assert exported_again.exit_code == 0 and "exported 11 events" in exported_again.stderr
    assert again.read_bytes() == exported.read_bytes()


def test_export_from_postgres_takes_after_and_until_and_writes_to_stdout(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    load(exported, pg_schema)

    result = pg_cli(pg_schema, tmp_path, "events", "export", "--after", "3", "--until", "7")

    assert result.exit_code == 0, result.output
    assert result.stdout.encode().splitlines() == exported.read_bytes().splitlines()[3:7]
    assert "exported 4 events" in result.stderr


def test_the_read_models_built_by_an_import_into_postgres_answer_like_the_source(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    assert pg_cli(pg_schema, tmp_path / "data", "events", "import", str(exported)).exit_code == 0

    with TestClient(create_app(pg_settings(pg_schema, tmp_path / "served"))) as client:
        projects = client.get("/api/projects").json()
        verdict = client.get("/api/events/verify").json()

    assert sorted(p["name"] for p in projects["projects"]) == ["Demo", "Other"]
    assert verdict["intact"] is True and verdict["head"] == 11


# -- a tampered log on PostgreSQL ----------------------------------------------------------------------


def swap_4_and_5(conn: psycopg.Connection, _schema: str) -> None:
    conn.execute("UPDATE events SET position = -4 WHERE position = 4")
    conn.execute("UPDATE events SET position = 4 WHERE position = 5")
    conn.execute("UPDATE events SET position = 5 WHERE position = -4")


CASES: dict[str, tuple[Tamper, int, int, str]] = {  # tamper, first bad position, intact through, reason
    "edited data": (
        lambda c, _s: c.execute("UPDATE events SET data = %s WHERE position = 4", (b'{"name":"Evil"}',)),
        4,
        3,
        "hash mismatch",
    ),
    "removed event": (
        lambda c, _s: c.execute("DELETE FROM events WHERE position = 6"),
        7,
        5,
        "gap after position 5",
    ),
    "swapped events": (swap_4_and_5, 4, 3, "hash mismatch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tampered_postgres_log_is_named_by_its_first_bad_position_as_the_http_route_names_it(
    exported: Path, pg_schema: str, tmp_path: Path, case: str
) -> None:
    tamper, position, through, reason = CASES[case]
    load(exported, pg_schema)
    run_sql(pg_schema, tamper)

    line = pg_cli(pg_schema, tmp_path, "events", "verify")
    as_json = pg_cli(pg_schema, tmp_path, "events", "verify", "--json")

    assert line.exit_code == 1 and no_traceback(line)
    assert line.output == (
        f"hash chain broken at position {position}: {reason} (intact through position {through}, head 11)\n"
    )
    verdict = json.loads(as_json.output)
    assert as_json.exit_code == 1
    assert verdict == {
        "intact": False,
        "head": 11,
        "verified_through": through,
        "position": position,
        "reason": reason,
    }
    with TestClient(create_app(pg_settings(pg_schema, tmp_path / "served"))) as client:
        http = client.get("/api/events/verify").json()
    assert http.pop("ok") is True
    assert http == verdict


# -- imports that are refused ------------------------------------------------------------------------


def test_a_broken_file_imported_into_postgres_is_refused_at_its_line_and_writes_nothing(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    lines = exported.read_bytes().splitlines(keepends=True)
    event = json.loads(lines[6])
    event["data"]["name"] = "Forged"
    lines[6] = json.dumps(event).encode() + b"\n"
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(lines))

    result = pg_cli(pg_schema, tmp_path / "data", "events", "import", str(broken))

    assert result.exit_code == 1 and no_traceback(result)
    assert result.output == "kroma: import refused, nothing written: line 7: hash mismatch\n"
    assert namespaces(pg_schema) == []  # not even the schema the import created for its tables


@pytest.mark.parametrize(
    ("batch", "broken_after"),
    [(1000, None), (3, None), (1000, 11)],
    ids=["one batch", "the first use in an earlier batch", "a later line broken too"],
)
def test_a_file_whose_event_id_repeats_is_refused_at_the_repeating_line(
    exported: Path,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    broken_after: int | None,
) -> None:
    """The hash covers the event id, so only a forged chain repeats one: the check against the rows
    written so far names it, even when a later line of the same batch is broken too."""
    from kroma.events import codec

    monkeypatch.setattr(transfer, "PG_BATCH", batch)
    events = [
        msgspec.json.decode(line, type=transfer.ExportedEvent) for line in exported.read_bytes().splitlines()
    ]
    events[8] = msgspec.structs.replace(events[8], event_id=events[2].event_id)
    prev = codec.GENESIS
    for i, e in enumerate(events):  # re-hash so that every other rule holds
        header = codec.header_bytes(
            e.position, e.event_id, e.stream_id, e.stream_version, e.type, e.schema_version, e.recorded_at
        )
        prev = codec.link(prev, header, bytes(e.data), bytes(e.metadata))
        events[i] = msgspec.structs.replace(e, hash=prev.hex())
    if broken_after is not None:
        events[broken_after - 1] = msgspec.structs.replace(events[broken_after - 1], hash="00" * 32)
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))

    with forged.open("rb") as lines, pytest.raises(transfer.ImportRefused) as refused:
        transfer.import_pg(lines, POSTGRES_URL, pg_schema)

    assert str(refused.value) == f"line 9: event id {events[2].event_id!r} appears twice"
    assert namespaces(pg_schema) == []


def test_an_import_into_a_postgres_schema_that_has_events_is_refused_and_leaves_it_alone(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    load(exported, pg_schema)

    result = pg_cli(pg_schema, tmp_path / "data", "events", "import", str(exported))

    assert result.exit_code == 1 and no_traceback(result)
    assert result.output == (
        f"kroma: import refused, nothing written: {where(pg_schema)} already holds 11 events:"
        " import into an empty schema\n"
    )
    verified = pg_cli(pg_schema, tmp_path, "events", "verify")
    assert verified.output == "hash chain intact through position 11\n"


# -- a store that is missing or does not answer: exit 2, one line ------------------------------------


def test_verify_and_export_of_a_missing_postgres_log_exit_2_in_one_line_and_create_nothing(
    pg_schema: str, tmp_path: Path
) -> None:
    for args in (("events", "verify"), ("events", "export"), ("projections", "status", "--sample", "0")):
        result = pg_cli(pg_schema, tmp_path, *args)
        assert result.exit_code == 2 and no_traceback(result), args
        assert result.output == f"kroma: no event log in {where(pg_schema)}\n", args
    as_json = pg_cli(pg_schema, tmp_path, "events", "verify", "--json")
    assert json.loads(as_json.stdout) == {"intact": False, "error": f"no event log in {where(pg_schema)}"}
    assert namespaces(pg_schema) == []


def test_a_server_that_does_not_answer_is_exit_2_in_one_line_for_every_command(tmp_path: Path) -> None:
    url = "postgresql://kroma:secret@127.0.0.1:1/nowhere"  # nothing listens on port 1
    exported = tmp_path / "log.jsonl"
    exported.write_bytes(b"")
    for args in (
        ("events", "verify"),
        ("events", "export"),
        ("events", "import", str(exported)),
        ("projections", "status", "--sample", "0"),
    ):
        result = pg_cli("kroma", tmp_path / "data", *args, url=url)
        assert result.exit_code == 2 and no_traceback(result), (args, result.output)
        assert result.output.startswith(
            "kroma: cannot reach the event log in schema kroma of postgresql://kroma@127.0.0.1:1/nowhere: "
        ), args
        assert result.output.count("\n") == 1 and "secret" not in result.output, args


# -- projections status -------------------------------------------------------------------------------


def test_projections_status_shows_the_postgres_checkpoints_lag_and_last_error(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    assert pg_cli(pg_schema, tmp_path / "data", "events", "import", str(exported)).exit_code == 0

    def lag_and_fail(conn: psycopg.Connection, schema: str) -> None:
        conn.execute(f'UPDATE "{schema}_rm".checkpoints SET position = 5 WHERE name = %s', ("projects",))
        conn.execute(
            f'INSERT INTO "{schema}_rm".projection_failures VALUES (%s, %s, %s, %s)',
            ("projects", 3, "project.created", "boom"),
        )

    up_to_date = pg_cli(pg_schema, tmp_path, "projections", "status", "--sample", "0")
    run_sql(pg_schema, lag_and_fail)
    behind = pg_cli(pg_schema, tmp_path, "projections", "status", "--sample", "0")
    as_json = json.loads(
        pg_cli(pg_schema, tmp_path, "projections", "status", "--sample", "0", "--json").output
    )

    assert up_to_date.exit_code == 0, up_to_date.output
    assert up_to_date.output.startswith("log head: 11\n") and "behind" not in up_to_date.output
    projects = next(line for line in behind.output.splitlines() if line.split()[0] == "projects")
    assert "6 behind" in projects and "skipped event 3 (project.created): boom" in projects
    by_name = {p["name"]: p for p in as_json["projections"]}
    assert as_json["head"] == 11 and as_json["rebuild"] is None
    assert by_name["projects"] == {
        "name": "projects",
        "checkpoint": 5,
        "lag": 6,
        "rate": None,
        "last_error": {"position": 3, "type": "project.created", "error": "boom"},
    }
    assert all(p["lag"] == 0 for name, p in by_name.items() if name != "projects")


def test_projections_status_shows_a_postgres_rebuild_in_progress(
    exported: Path, pg_schema: str, tmp_path: Path
) -> None:
    """A rebuild there keeps no row: its session lock and the `_rb` schema's checkpoints say it runs."""
    from kroma.projections.postgres import _rebuild_lock_key

    assert pg_cli(pg_schema, tmp_path / "data", "events", "import", str(exported)).exit_code == 0
    with psycopg.connect(POSTGRES_URL, autocommit=True) as rebuilder:
        rebuilder.execute("SELECT pg_advisory_lock(%s)", (_rebuild_lock_key(f"{pg_schema}_rm"),))
        rebuilder.execute(f'CREATE SCHEMA "{pg_schema}_rm_rb"')
        rebuilder.execute(
            f'CREATE TABLE "{pg_schema}_rm_rb".checkpoints (name text, version int, position int)'
        )
        rebuilder.execute(f"INSERT INTO \"{pg_schema}_rm_rb\".checkpoints VALUES ('a', 1, 7), ('b', 1, 4)")
        backend = rebuilder.info.backend_pid

        status = json.loads(
            pg_cli(pg_schema, tmp_path, "projections", "status", "--sample", "0", "--json").output
        )

    assert status["rebuild"] is not None
    assert {k: status["rebuild"][k] for k in ("pid", "phase", "position", "head")} == {
        "pid": backend,
        "phase": "folding",
        "position": 4,
        "head": 11,
    }
    after = json.loads(pg_cli(pg_schema, tmp_path, "projections", "status", "--sample", "0", "--json").output)
    assert after["rebuild"] is None  # the lock went with the rebuilder's session


def test_a_store_url_of_another_kind_is_exit_2_in_one_line(tmp_path: Path) -> None:
    for args in (("events", "verify"), ("events", "export"), ("projections", "status", "--sample", "0")):
        result = pg_cli("kroma", tmp_path, *args, url="mysql://db/kroma")
        assert (result.exit_code, result.output) == (
            2,
            "kroma: event_store_url: unsupported store mysql:// (use postgresql://...)\n",
        ), args
