"""`kroma tokens create|list|revoke` against a real data folder, and the token it prints working
against the server."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.http.app import create_app


def test_tokens_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(main, ["tokens", "create", *data, "--label", "ops", "--expires-at", "2099-01-01"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("kroma_") and len(token) == 70
    assert "it is not shown again" in created.stderr

    listed = runner.invoke(main, ["tokens", "list", *data, "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert (
        row["label"] == "ops" and row["active"] is True and row["expires_at"] == "2099-01-01T23:59:59+00:00"
    )
    assert token not in listed.stdout

    with TestClient(create_app(Settings(data_dir=str(tmp_path)))) as client:
        ok = client.get("/auth/tokens", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["count"] == 1

    revoked = runner.invoke(main, ["tokens", "revoke", *data, row["id"]])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(main, ["tokens", "revoke", *data, row["id"]])
    assert again.exit_code == 0, again.output
    text = runner.invoke(main, ["tokens", "list", *data])
    assert "revoked" in text.stdout

    with TestClient(create_app(Settings(data_dir=str(tmp_path)))) as client:
        refused = client.get("/auth/tokens", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401


def test_tokens_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    bad = runner.invoke(main, ["tokens", "create", *data, "--expires-at", "soon"])
    assert bad.exit_code != 0 and "Invalid expires_at format: 'soon'" in bad.output
    missing = runner.invoke(main, ["tokens", "create", *data, "--project", "nope"])
    assert missing.exit_code != 0 and "Project not found" in missing.output
    unknown = runner.invoke(main, ["tokens", "revoke", *data, "nope"])
    assert unknown.exit_code != 0 and "Auth token not found" in unknown.output
