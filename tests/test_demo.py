"""The demo project created by `python3 dev.py serve` on a fresh data folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

from litestar.testing import TestClient

from kroma.config import Settings
from kroma.demo import DEMO_SLUG, seed_demo
from kroma.http.app import create_app


def test_demo_is_created_once_on_an_empty_log(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    first = asyncio.run(seed_demo(settings))
    assert first and first[0] == "POST /api/projects"
    assert asyncio.run(seed_demo(settings)) == []  # the log is no longer empty
    with TestClient(create_app(Settings(data_dir=str(tmp_path), auth_dev_bypass=True))) as client:
        assert client.get("/api/projects").json()["count"] == 1
        assert client.get(f"/api/projects/{DEMO_SLUG}").json()["project"]["name"] == "Demo Comic"
        assert client.get(f"/api/projects/{DEMO_SLUG}/style-guides").json()["count"] == 1
