"""The run engine on the local provider: a run of 20 jobs x 6 candidates, worked concurrently and
with every limit at 1 (the same steps one after another), measured in one run; plus each step's
own cost, QA on a 1024x1536 image (target < 50 ms) and each post-process pass on a 1024x1536
candidate (builtin background removal, x2 upscale, the three colour profiles).

Usage: .venv/bin/python bench/engine.py [--jobs N] [--candidates K] [--size WxH] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.remove(str(Path(__file__).resolve().parent))  # else bench/http.py shadows the stdlib's http

from litestar.testing import TestClient
from PIL import Image

from kroma.config import Settings
from kroma.http.app import create_app
from kroma.imaging import background, color, ink, provenance, qa, upscale
from kroma.imaging.sketch import street_scene

scene = street_scene


def timed(fn: Any, repeat: int) -> float:
    """Median milliseconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def step_costs(size: tuple[int, int]) -> dict[str, float]:
    big = scene((1024, 1536), 7)
    image = Image.open(io.BytesIO(big))
    image.load()
    guard = qa.GuardSettings()

    def qa_file() -> None:
        qa.check_file(big, "x.png", guard)

    data = scene(size, 3)
    rendered = ink.render_ink(data, [], "noir harbour at night", 1)
    inked = ink.render_ink(big, [], "noir harbour at night", 1)  # a 1024x1536 candidate
    cut = background.remove_background(inked)
    return {
        "bg_remove_ms_1024x1536": round(timed(lambda: background.remove_background(inked), 5), 2),
        "upscale_x2_ms_1024x1536": round(timed(lambda: upscale.upscale(cut, 2), 3), 2),
        **{
            f"color_{name}_ms_1024x1536": round(timed(lambda p=profile: color.apply_profile(cut, p), 3), 2)
            for name, profile in color.BUILTIN_PROFILES.items()
        },
        "qa_ms_per_image": round(timed(qa_file, 15), 2),
        "chroma_delta_ms_1024x1536": round(timed(lambda: qa.chroma_delta(image), 15), 2),
        "render_ms_per_image": round(timed(lambda: ink.render_ink(data, [], "noir harbour at night", 1), 5), 2),
        "provenance_ms_per_image": round(
            timed(lambda: provenance.with_provenance(rendered, {"run_id": "r", "prompt": "p" * 200}), 10), 2
        ),
    }


def run_once(root: Path, name: str, jobs: int, candidates: int, size: tuple[int, int], **limits: Any) -> dict[str, Any]:
    settings = Settings(
        data_dir=str(root / name / "data"),
        workspace_root=str(root / name / "app"),
        auth_dev_bypass=True,
        **limits,
    )
    with TestClient(create_app(settings), timeout=600) as c:
        c.post("/api/projects", json={"name": "Bench", "slug": "bench"})
        files = [("file", (f"scene_{i:02d}.png", scene(size, i), "image/png")) for i in range(jobs)]
        uploaded = c.post("/api/projects/bench/assets", files=files).json()["assets"]
        refs = [a["rel_path"] for a in uploaded]
        manifest = root / name / "app" / "config"
        manifest.mkdir(parents=True, exist_ok=True)
        (manifest / "m.json").write_text(json.dumps({"generation": {"max_candidates": candidates}}))
        (manifest / "pipeline.settings.toml").write_text('[pipeline]\nmanifest_path = "config/m.json"\n')
        t = time.perf_counter()
        response = c.post(
            "/api/projects/bench/runs/trigger",
            json={"mode": "run", "confirm_spend": True, "scene_refs": refs, "candidates": candidates, "provider": "local"},
        )
        wall = time.perf_counter() - t
        assert response.status_code == 200, response.text
        run_id = response.json()["run_id"]
        detail = c.get(f"/api/projects/bench/runs/{run_id}").json()
        winners = {j["job_key"]: j["selected_candidate_index"] for j in detail["jobs"]}
    return {"wall_s": round(wall, 3), "images": jobs * candidates, "winners": winners}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--size", default="768x1152", help="scene size (the local provider renders at it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    assert len(size) == 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        costs = step_costs(size)  # type: ignore[arg-type]
        sequential = run_once(root, "sequential", args.jobs, args.candidates, size,  # type: ignore[arg-type]
                              run_provider_calls=1, run_cpu_workers=1, run_jobs_in_flight=1)
        concurrent = run_once(root, "concurrent", args.jobs, args.candidates, size)  # type: ignore[arg-type]
    images = concurrent["images"]
    result = {
        "jobs": args.jobs,
        "candidates": args.candidates,
        "scene_size": args.size,
        "cpus": os.cpu_count(),
        **costs,
        "sequential.wall_s": sequential["wall_s"],
        "concurrent.wall_s": concurrent["wall_s"],
        "concurrent.ms_per_image": round(concurrent["wall_s"] * 1000 / images, 1),
        "sequential.ms_per_image": round(sequential["wall_s"] * 1000 / images, 1),
        "speedup": round(sequential["wall_s"] / concurrent["wall_s"], 2),
        "same_winners": sequential["winners"] == concurrent["winners"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
