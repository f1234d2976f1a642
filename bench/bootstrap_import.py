"""Bootstrap import time against its size: N entries in one `POST .../bootstrap-import`.

Two shapes: `one_section` puts every entry in one collection (style guides: the worst case for any
per-entry scan of a collection), `mixed` splits them over style guides, characters, prompt templates
and reference sets (one item each), as a large AI-written setup would be. Each size imports into a
fresh project of the real HTTP app (in process, a fresh data folder); the import is then sent again
to the same project (every entry now matches an existing one: the update path). Linear work keeps
the time per entry flat as N grows.

Usage: .venv/bin/python bench/bootstrap_import.py [--sizes 1000,2000,4000,8000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The repository root instead of bench/ (whose http.py would shadow the standard library's `http`).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from litestar.testing import TestClient  # noqa: E402

from kroma.config import Settings  # noqa: E402
from kroma.http.app import create_app  # noqa: E402


def settings_of(n: int, shape: str) -> dict[str, Any]:
    if shape == "one_section":  # the worst case for any per-entry scan: every entry in one collection
        return {"style_guides": [{"name": f"Style {i}", "instructions": f"ink {i}"} for i in range(n)]}
    quarter = max(1, n // 4)
    return {
        "style_guides": [{"name": f"Style {i}", "instructions": f"ink {i}"} for i in range(quarter)],
        "characters": [{"name": f"Character {i}", "description": f"d{i}"} for i in range(quarter)],
        "prompt_templates": [{"name": f"Template {i}", "template_text": f"t{i}"} for i in range(quarter)],
        "reference_sets": [
            {"name": f"Set {i}", "items": [{"label": "a", "content_text": f"x{i}"}]}
            for i in range(n - 3 * quarter)
        ],
    }


def measure(n: int, shape: str, root: Path) -> dict[str, float]:
    settings = Settings(
        data_dir=str(root / f"data-{shape}-{n}"),
        workspace_root=str(root / "app"),
        auth_dev_bypass=True,
        run_engine=False,
        agent_dispatch=False,
    )
    body = {"mode": "merge", "settings": settings_of(n, shape)}
    with TestClient(create_app(settings)) as client:
        slug = client.post("/api/projects", json={"name": f"Bench {n}"}).json()["project"]["slug"]
        timings = {}
        for label in ("create", "update"):
            started = time.perf_counter()
            response = client.post(f"/api/projects/{slug}/bootstrap-import", json=body)
            timings[label] = time.perf_counter() - started
            assert response.status_code == 200, response.text[:300]
        return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000,8000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("one_section", "mixed"):
            for n in sizes:
                t = measure(n, shape, Path(tmp))
                results[f"{shape}.{n}"] = {
                    "create_s": round(t["create"], 3),
                    "update_s": round(t["update"], 3),
                    "create_us_per_entry": round(t["create"] / n * 1e6, 1),
                    "update_us_per_entry": round(t["update"] / n * 1e6, 1),
                }
    print(f"{'scenario':>18} {'create s':>9} {'us/entry':>9} {'update s':>9} {'us/entry':>9}")
    for key, r in results.items():
        print(
            f"{key:>18} {r['create_s']:>9.3f} {r['create_us_per_entry']:>9.1f}"
            f" {r['update_s']:>9.3f} {r['update_us_per_entry']:>9.1f}"
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
