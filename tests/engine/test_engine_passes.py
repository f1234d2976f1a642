"""A run with the post-process passes on (pipeline spec §4.2-§4.3, §5) and the extra QA checks,
over HTTP on the local provider: names, sizes, alpha, the derived_from chain, events."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from PIL import Image, ImageDraw

BASE = "/api/projects/demo"


def subject_scene() -> bytes:
    """A dark figure on flat light paper: the builtin remover has a clear background to take."""
    image = Image.new("RGB", (96, 128), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([30, 30, 66, 110], fill=(30, 30, 30))
    draw.ellipse([36, 8, 60, 32], fill=(60, 60, 60))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def project_root(client: TestClient) -> Path:
    return Path(client.get(f"{BASE}/storage").json()["storage"]["local"]["project_root"])


def configure(client: TestClient, postprocess: dict[str, Any], output_guard: dict[str, Any] | None = None) -> None:
    root = project_root(client)
    (root / ".kroma").mkdir(parents=True, exist_ok=True)
    pipeline: dict[str, Any] = {"postprocess": postprocess}
    if output_guard is not None:
        app = root.parents[2]  # <app root>/var/projects/<slug>
        (app / "config").mkdir(parents=True, exist_ok=True)
        (app / "config" / "manifest.json").write_text(json.dumps({"output_guard": output_guard}))
        pipeline["manifest_path"] = "config/manifest.json"
    (root / ".kroma" / "pipeline.settings.json").write_text(json.dumps({"pipeline": pipeline}))


def run(client: TestClient, candidates: int = 2) -> Any:
    scene = client.post(f"{BASE}/assets", files=[("file", ("figure.png", subject_scene(), "image/png"))])
    body = {
        "mode": "run",
        "confirm_spend": True,
        "provider": "local",
        "candidates": candidates,
        "scene_refs": [scene.json()["assets"][0]["rel_path"]],
    }
    return client.post(f"{BASE}/runs/trigger", json=body)


ALL_PASSES = {
    "bg_remove": True,
    "bg_refine_openai": False,
    "upscale": True,
    "color": True,
    "color_profile": "cinematic_warm",
}


def test_all_three_passes_name_each_file_from_the_one_before(client: TestClient, project: dict) -> None:
    configure(client, ALL_PASSES)
    answer = run(client)
    assert answer.status_code == 200, answer.text
    root = project_root(client)
    for k in (1, 2):
        assert (root / f"outputs/style_1_figure__c{k}.png").is_file()
        assert (root / f"background_removed/style_1_figure__c{k}_nobg.png").is_file()
        assert (root / f"upscaled/style_1_figure__c{k}_nobg_x2.png").is_file()
        assert (root / f"color_corrected/style_1_figure__c{k}_nobg_x2_cinematic_warm.png").is_file()
    job = client.get(f"{BASE}/runs/{answer.json()['run_id']}/jobs").json()["jobs"][0]
    assert job["final_output"].endswith(
        f"color_corrected/style_1_figure__c{job['selected_candidate_index']}_nobg_x2_cinematic_warm.png"
    )
    assert job["meta_json"]["planned_postprocess"]["pipeline_order"] == ["generate", "bg_remove", "upscale", "color"]


def test_alpha_survives_upscale_and_colour_and_the_size_doubles(client: TestClient, project: dict) -> None:
    configure(client, ALL_PASSES)
    assert run(client, candidates=1).status_code == 200
    root = project_root(client)
    with Image.open(root / "outputs/style_1_figure.png") as generated_file:
        generated = generated_file.copy()
    with Image.open(root / "color_corrected/style_1_figure_nobg_x2_cinematic_warm.png") as final_file:
        final = final_file.copy()
    assert final.size == (generated.size[0] * 2, generated.size[1] * 2)
    assert final.mode == "RGBA"
    alpha = final.getchannel("A")
    assert alpha.getextrema()[0] == 0  # the paper is transparent ...
    assert alpha.getpixel((final.size[0] // 2, final.size[1] * 3 // 5)) == 255  # ... the figure is not


def test_each_pass_is_an_event_with_an_asset_linked_derived_from_the_one_before(
    client: TestClient, project: dict
) -> None:
    configure(client, ALL_PASSES)
    run_id = run(client, candidates=1).json()["run_id"]
    types = [e["type"] for e in client.get("/api/events?type=candidate.generated,candidate.background_removed,"
                                          "candidate.upscaled,candidate.color_corrected,candidate.checked").json()["events"]]
    assert types == [
        "candidate.generated",
        "candidate.background_removed",
        "candidate.upscaled",
        "candidate.color_corrected",
        "candidate.checked",
    ]
    assets = {a["id"]: a for a in client.get(f"{BASE}/assets").json()["assets"] if a["run_id"] == run_id}
    links = client.get(f"{BASE}/asset-links").json()["asset_links"]
    parent_of = {link["child_asset_id"]: link["parent_asset_id"] for link in links if link["link_type"] == "derived_from"}
    colour = next(a for a in assets.values() if a["kind"] == "candidate_color_corrected")
    chain = [colour["kind"]]
    node = colour["id"]
    while node in parent_of:
        node = parent_of[node]
        chain.append(assets[node]["kind"])
    assert chain == [
        "candidate_color_corrected",
        "candidate_upscaled",
        "candidate_background_removed",
        "candidate_output",
    ]
    final = next(a for a in assets.values() if a["kind"] == "job_final_output")
    assert parent_of[final["id"]] == colour["id"]  # the job's final output comes from the last pass
    assert final["width"] == colour["width"] and final["sha256"] == colour["sha256"]


def test_the_run_log_carries_each_pass_record(client: TestClient, project: dict) -> None:
    configure(client, ALL_PASSES)
    run_id = run(client, candidates=1).json()["run_id"]
    job = client.get(f"{BASE}/runs/{run_id}/log").json()["jobs"][0]
    assert job["bg_remove"]["backend"] in ("rembg", "builtin")
    assert job["bg_remove"]["refine_openai"] is False
    assert job["upscale"]["scale"] == 2 and job["upscale"]["backend"] == "builtin"
    assert job["color"]["profile"] == "cinematic_warm" and job["color"]["settings"] == "builtin"
    assert job["candidates"][0]["final_output"] == job["final_output"]


def test_a_required_openai_refine_without_a_key_fails_the_run_with_the_reference_message(
    client: TestClient, project: dict, monkeypatch: Any
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    configure(client, {"bg_remove": True})  # refine on and required: the reference's defaults
    answer = run(client, candidates=1)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error_code"] == "planning_preflight_failed"
    assert body["error"].startswith("OpenAI refine failed for ") and "OPENAI_API_KEY" in body["error"]
    assert client.get(f"{BASE}/runs/{body['run_id']}").json()["run"]["status"] == "failed"


def test_geometry_drift_set_hard_rejects_a_candidate_unlike_its_scene(client: TestClient, project: dict) -> None:
    # The scene itself vs. a rendering of it drifts little; a max of 0 makes any drift fail.
    configure(client, {}, output_guard={"max_geometry_drift": 0.0, "hard_checks": ["geometry_drift"]})
    answer = run(client, candidates=1)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Pipeline command failed: Output guard failed for 1 job(s).")
    reports = client.get(f"{BASE}/quality-reports").json()["quality_reports"]
    entry = next(r for r in reports if r["summary_json"].get("status"))["summary_json"]
    assert entry["output_guard"]["summary"]["hard_failures"] == 1


def test_near_blank_as_a_soft_warning_counts_in_the_rank_but_keeps_the_winner(client: TestClient, project: dict) -> None:
    configure(client, {}, output_guard={"min_contrast": 255.0})  # every image is "near blank"
    answer = run(client, candidates=2)
    assert answer.status_code == 200, answer.text
    job = client.get(f"{BASE}/runs/{answer.json()['run_id']}/jobs").json()["jobs"][0]
    assert job["status"] == "done" and job["selected_candidate_index"] == 1
    assert [c["rank_soft_warnings"] for c in job["candidates"]] == [1, 1]
