"""Bad input, property-based: schemathesis reads the server's own OpenAPI document and fuzzes every
route of the real server (bearer auth on) with every check enabled: no 5xx, every status and media
type documented, every body in its documented shape (errors in the contract's envelope), schema-
violating input refused, undeclared methods a 405 with `Allow`, requests without the token a 401.

Bounded for CI: `KROMA_FUZZ_EXAMPLES` cases per operation and phase (default 5) from a fixed seed
(`KROMA_FUZZ_SEED`), so a run is reproducible; raise both locally for a longer hunt. The fuzz's
settings and the reason for each are in tests/e2e/schemathesis.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis (the dev extra) is not installed")
def test_every_route_survives_a_fuzz_with_every_check_on(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(KROMA_API_AUTH_DEV_BYPASS="0", KROMA_RUN_ENGINE="0")
    token = httpx.post(f"{server.url}/auth/token", json={"label": "fuzz"}).json()["auth_token"]["token"]
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{server.url}/api/projects", json={"name": "Fuzz", "slug": "fuzz"}, headers=headers)
    assert created.status_code == 200, created.text
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.url}/docs/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        os.environ.get("KROMA_FUZZ_EXAMPLES", "5"),
        "--seed",
        os.environ.get("KROMA_FUZZ_SEED", "1"),
        "--max-failures",
        "20",
        "-H",
        f"Authorization: Bearer {token}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:]
    assert "No checks were performed" not in report
    log = server.log.read_text(errors="replace")
    assert "unhandled error" not in log, log[-5000:]
