"""`kroma projections rebuild` (the CLI, on a data folder written through the API) reproduces every read
model of the project configuration surface exactly: records, reference items (orphans included),
provider accounts, chat, agent instructions, asset links and the read models of what runs produce,
table by table and answer by answer."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.config import Settings
from kroma.domain import runs as ev
from kroma.domain.assets import AssetRecord, asset_recorded
from kroma.http.app import create_app
from tests.http.log_seed import append
from tests.http.records_support import ok

TABLES = (
    "style_guides",
    "characters",
    "prompt_templates",
    "reference_sets",
    "reference_set_items",
    "provider_accounts",
    "chat_sessions",
    "chat_messages",
    "agent_instructions",
    "agent_instruction_events",
    "asset_links",
    "runs",
    "run_jobs",
    "run_candidates",
    "assets",
    "quality_reports",
    "cost_events",
    "project_exports",
)


def _records(client: TestClient, base: str) -> list[str]:
    reads = []
    for path, key, first, second in (
        (
            "style-guides",
            "style_guide",
            {"name": "Noir", "instructions": "ink"},
            {"name": "Pop", "instructions": "dots"},
        ),
        ("characters", "character", {"name": "Hero", "description": "brave"}, {"name": "Villain"}),
        (
            "prompt-templates",
            "prompt_template",
            {"name": "Cover", "template_text": "t"},
            {"name": "Back", "template_text": "b"},
        ),
        ("reference-sets", "reference_set", {"name": "Faces"}, {"name": "Gone", "description": "d"}),
    ):
        url = f"{base}/{path}"
        kept = ok(client.post(url, json=first))[key]
        gone = ok(client.post(url, json=second))[key]
        field = (
            "description" if key in ("character", "reference_set") else next(iter(first.keys() - {"name"}))
        )
        ok(client.put(f"{url}/{kept['id']}", json={"name": f"{first['name']} 2", field: "changed"}))
        if key == "reference_set":
            items = f"{url}/{kept['id']}/items"
            front = ok(
                client.post(items, json={"label": "front", "content_uri": "u", "metadata_json": {"b": [1]}})
            )
            ok(client.post(items, json={"label": "side", "content_text": "t", "sort_order": -(2**63)}))
            ok(
                client.put(
                    f"{items}/{front['item']['id']}",
                    json={"sort_order": 3, "content_uri": "", "content_text": "x"},
                )
            )
            dropped = ok(client.post(items, json={"label": "dropped", "content_text": "t"}))
            ok(client.delete(f"{items}/{dropped['item']['id']}"))
            ok(client.post(f"{url}/{gone['id']}/items", json={"label": "orphan", "content_text": "t"}))
            reads += [items, f"{items}/{front['item']['id']}"]
        ok(client.delete(f"{url}/{gone['id']}"))
        reads += [url, f"{url}/{kept['id']}"]

    accounts = f"{base}/provider-accounts"
    ok(client.post(accounts, json={"provider_code": "OpenAI", "config_json": {"z": [1, {"y": None}]}}))
    ok(client.post(accounts, json={"provider_code": "openai", "display_name": "Open AI", "enabled": False}))
    ok(client.post(accounts, json={"provider_code": "fal", "base_url": "https://fal", "account_ref": "a"}))
    ok(client.put(f"{accounts}/FAL", json={"base_url": "", "config_json": ["x"]}))
    ok(client.post(accounts, json={"provider_code": "gone"}))
    ok(client.delete(f"{accounts}/Gone"))
    return [*reads, accounts, f"{accounts}/openai", f"{accounts}/fal"]


def _chat_and_agent(client: TestClient, base: str) -> list[str]:
    sessions = f"{base}/chat/sessions"
    reads = [sessions]
    for title in ("one", None):
        session = ok(client.post(sessions, json={"title": title}))["session"]
        messages = f"{sessions}/{session['id']}/messages"
        ok(client.post(messages, json={"role": "user", "content": "hi"}))
        ok(client.post(messages, json={"role": "Assistant", "content_text": " hello "}))
        reads += [f"{sessions}/{session['id']}", messages]

    instructions = f"{base}/agent/instructions"
    ids = [
        ok(client.post(instructions, json={"instruction_text": f"t{i}"}))["instruction"]["id"]
        for i in range(3)
    ]
    ok(client.post(f"{instructions}/{ids[0]}/confirm", json={"message": "go"}))
    ok(client.post(f"{instructions}/{ids[0]}/confirm", json={}))  # repeated: no instruction event
    ok(client.post(f"{instructions}/{ids[1]}/cancel", json={}))
    ok(client.post(f"{instructions}/{ids[1]}/cancel", json={"message": "again"}))
    return [
        *reads,
        instructions,
        *(f"{instructions}/{i}" for i in ids),
        *(f"{instructions}/{i}/events" for i in ids),
    ]


def _runs_and_links(client: TestClient, slug: str, project_id: str) -> list[str]:
    """What the run engine will record (no route writes it), then asset links over those assets."""
    pid = project_id
    append(
        client,
        ev.run_recorded(ev.RunRecord(id=f"{slug}-r", project_id=pid, mode="dry", meta_json={"k": 1})),
        ev.job_recorded(
            ev.JobRecord(id=f"{slug}-j", project_id=pid, run_id=f"{slug}-r", selected_candidate=0)
        ),
        ev.candidate_recorded(
            ev.CandidateRecord(id=f"{slug}-c", project_id=pid, run_id=f"{slug}-r", job_id=f"{slug}-j")
        ),
        *(asset_recorded(AssetRecord(id=f"{slug}-a{i}", project_id=pid, width=i)) for i in range(3)),
        ev.quality_report_recorded(ev.QualityReportRecord(id=f"{slug}-q", project_id=pid, grade="A")),
        ev.cost_recorded(ev.CostRecord(id=f"{slug}-k", project_id=pid, units=2, total_cost_usd=1.0)),
        ev.export_recorded(ev.ExportRecord(id=f"{slug}-e", project_id=pid, manifest_json={"f": 1})),
    )
    append(client, ev.run_finished(ev.RunFinished(run_id=f"{slug}-r", project_id=pid, status="ok")))
    base = f"/api/projects/{slug}"
    links = f"{base}/asset-links"
    keep = ok(client.post(links, json={"parent_asset_id": f"{slug}-a0", "child_asset_id": f"{slug}-a1"}))
    gone = ok(client.post(links, json={"parent_asset_id": f"{slug}-a0", "child_asset_id": f"{slug}-a2"}))
    ok(client.put(f"{links}/{keep['asset_link']['id']}", json={"link_type": "mask_for"}))
    ok(client.delete(f"{links}/{gone['asset_link']['id']}"))
    return [
        links,
        f"{links}/{keep['asset_link']['id']}",
        f"{base}/runs",
        f"{base}/runs/{slug}-r",
        f"{base}/runs/{slug}-r/jobs",
        f"{base}/assets",
        f"{base}/assets/{slug}-a1",
        f"{base}/quality-reports",
        f"{base}/cost-events",
        f"{base}/exports",
        f"{base}/exports/{slug}-e",
    ]


def _dump(path: str) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        names = [
            n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in names}
    finally:
        db.close()


def test_cli_rebuild_reproduces_every_configuration_read_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), auth_dev_bypass=True, agent_dispatch=False)
    with TestClient(create_app(settings)) as client:
        reads = []
        for slug in ("demo", "other"):
            project = ok(client.post("/api/projects", json={"name": slug.title(), "slug": slug}))["project"]
            base = f"/api/projects/{slug}"
            reads += _records(client, base) + _chat_and_agent(client, base)
            reads += _runs_and_links(client, slug, project["id"])
        answers = {url: client.get(url).json() for url in reads}
        before = _dump(settings.readmodels_db)

    assert all(answer["ok"] is True for answer in answers.values()), answers
    assert [t for t in TABLES if not before[t]] == [], "the workload leaves rows in every table"
    assert len(before["reference_set_items"]) == 6  # each project's orphan stays in the read model

    db = sqlite3.connect(settings.readmodels_db)
    with db:  # damage every table: only a real refold of the log brings them back
        for table in TABLES:
            db.execute(f"DELETE FROM {table}")
        db.execute("INSERT INTO style_guides SELECT * FROM (SELECT 'x', 'y', 'n', 'i', '', 't', 't', 0)")
    db.close()

    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", settings.data_dir])
    assert result.exit_code == 0, result.output

    assert _dump(settings.readmodels_db) == before
    with TestClient(create_app(settings)) as client:
        assert {url: client.get(url).json() for url in reads} == answers
