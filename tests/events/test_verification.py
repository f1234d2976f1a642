"""Verifying the hash chain of a real data folder: `kroma events verify` and `GET /api/events/verify`
give one verdict. Tampered copies (an event edited, removed, two swapped, garbage in a cell, a file
that is not a log) are named by their first bad position, in one line and a non-zero exit, never a
traceback; crypto-shredded secrets still verify."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.crypto.keystore import DataKeyNotFoundError
from kroma.http.app import create_app

Tamper = Callable[[sqlite3.Connection], object]


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        data_dir=str(data_dir), workspace_root=str(data_dir.parent), auth_dev_bypass=True, agent_dispatch=False
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder written through the API (11 events), its server stopped."""
    data = tmp_path_factory.mktemp("verify") / "data"
    with TestClient(create_app(settings_for(data))) as client:
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        for name in ("Noir", "Pop", "Ink"):
            client.post("/api/projects/demo/style-guides", json={"name": name, "instructions": "x"})
        client.post("/api/projects/demo/characters", json={"name": "Hero"})
        client.put("/api/projects/demo/storage/s3", json={"bucket": "b"})
        body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-shredded"}
        assert client.post("/api/projects/demo/secrets", json=body).status_code == 200
        assert client.delete("/api/projects/demo/secrets/openai/api_key").status_code == 200
        client.post("/api/projects", json={"name": "Other"})
        assert client.get("/api/events/verify").json()["head"] == 11
    return data


def tampered(source: Path, tmp_path: Path, tamper: Tamper) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    with closing(sqlite3.connect(copy / "events.db", isolation_level=None)) as db:
        db.execute("BEGIN")
        tamper(db)
        db.execute("COMMIT")
    return copy


def verify(data_dir: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["events", "verify", "--data-dir", str(data_dir), *extra])


def http_verdict(data_dir: Path) -> dict[str, Any]:
    with TestClient(create_app(settings_for(data_dir))) as client:
        body = client.get("/api/events/verify").json()
    assert body.pop("ok") is True
    return body


def swap_4_and_5(db: sqlite3.Connection) -> None:
    db.execute("UPDATE events SET position = -4 WHERE position = 4")
    db.execute("UPDATE events SET position = 4 WHERE position = 5")
    db.execute("UPDATE events SET position = 5 WHERE position = -4")


def append_forged(db: sqlite3.Connection) -> None:
    """A 12th event copied from the 11th with a new id and position: its link cannot match."""
    db.execute(
        "INSERT INTO events SELECT 12, 'forged', stream_id, stream_version + 1, type, schema_version, data,"
        " metadata, recorded_at, hash FROM events WHERE position = 11"
    )


CASES: dict[str, tuple[Tamper, int, str]] = {
    "edited data": (
        lambda db: db.execute("UPDATE events SET data = ? WHERE position = 4", (b'{"name":"Evil"}',)),
        4,
        "hash mismatch",
    ),
    "edited actor": (
        lambda db: db.execute("UPDATE events SET metadata = ? WHERE position = 7", (b'{"actor_user_id":"x"}',)),
        7,
        "hash mismatch",
    ),
    "removed event": (lambda db: db.execute("DELETE FROM events WHERE position = 6"), 7, "gap after position 5"),
    "swapped events": (swap_4_and_5, 4, "hash mismatch"),
    "first event removed": (lambda db: db.execute("DELETE FROM events WHERE position = 1"), 2, "gap after position 0"),
    "forged event appended": (append_forged, 12, "hash mismatch"),
    "data made text": (
        lambda db: db.execute("UPDATE events SET data = 'not json' WHERE position = 9"),
        9,
        "hash mismatch",
    ),
    "data made a number": (lambda db: db.execute("UPDATE events SET data = 42 WHERE position = 3"), 3, "hash mismatch"),
    "hash made text": (lambda db: db.execute("UPDATE events SET hash = 'ab' WHERE position = 10"), 10, "hash mismatch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tampered_copy_is_named_by_its_first_bad_position_in_one_line_and_a_non_zero_exit(
    source: Path, tmp_path: Path, case: str
) -> None:
    tamper, position, reason = CASES[case]
    copy = tampered(source, tmp_path, tamper)

    result = verify(copy)

    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"hash chain broken at position {position}: {reason} (")


@pytest.mark.parametrize("case", ["edited data", "removed event", "swapped events"])
def test_the_json_verdict_and_the_http_verdict_are_the_same(source: Path, tmp_path: Path, case: str) -> None:
    tamper, position, reason = CASES[case]
    copy = tampered(source, tmp_path, tamper)

    result = verify(copy, "--json")
    verdict = json.loads(result.output)
    last_good = int(reason.rsplit(" ", 1)[1]) if reason.startswith("gap after") else position - 1

    assert result.exit_code == 1
    assert verdict == {
        "intact": False,
        "head": 11,
        "verified_through": last_good,
        "position": position,
        "reason": reason,
    }
    assert http_verdict(copy) == verdict


def test_an_intact_log_with_a_crypto_shredded_secret_verifies(source: Path, tmp_path: Path) -> None:
    copy = tampered(source, tmp_path, lambda db: None)
    result = verify(copy)
    assert (result.exit_code, result.output) == (0, "hash chain intact through position 11\n")
    verdict = {"intact": True, "head": 11, "verified_through": 11, "position": None, "reason": None}
    assert json.loads(verify(copy, "--json").output) == verdict
    assert http_verdict(copy) == verdict

    with TestClient(create_app(settings_for(copy))) as client:  # the value is gone for good
        services = client.app.state.services
        [set_event] = client.blocking_portal.call(services.store.read_all, 0, 100, ["secret.set"])
        keys = client.blocking_portal.call(services.vault.keys)
        with pytest.raises(DataKeyNotFoundError):
            client.blocking_portal.call(keys.decrypt_secret, set_event.data["key_id"], set_event.data["ciphertext"])


def test_a_file_that_is_not_a_log_or_no_file_at_all_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.db").write_bytes(b"this is not a database" * 100)

    for folder, said in ((tmp_path / "junk", "cannot read the event log"), (tmp_path / "none", "no event log")):
        result = CliRunner().invoke(main, ["events", "verify", "--data-dir", str(folder)])
        assert result.exit_code == 2
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert said in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "none").exists()  # verifying never creates anything


def test_the_http_verdict_is_for_unscoped_tokens_a_project_scoped_one_gets_403(auth_client: TestClient) -> None:
    root = auth_client.post("/auth/token", json={}).json()["auth_token"]["token"]
    auth_client.post("/api/projects", json={"name": "Mine"}, headers={"Authorization": f"Bearer {root}"})
    scoped = auth_client.post(
        "/auth/token", json={"project_slug": "mine"}, headers={"Authorization": f"Bearer {root}"}
    ).json()["auth_token"]["token"]

    unscoped = auth_client.get("/api/events/verify", headers={"Authorization": f"Bearer {root}"})
    refused = auth_client.get("/api/events/verify", headers={"Authorization": f"Bearer {scoped}"})

    assert unscoped.status_code == 200 and unscoped.json()["intact"] is True
    assert refused.status_code == 403
    assert refused.json()["error"] == "Token is not authorized for this project"
