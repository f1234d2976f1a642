"""Rebuilding the read models from the log reproduces the project-record tables exactly."""

from __future__ import annotations

import sqlite3

from litestar.testing import TestClient

from tests.http.records_support import dump_read_models, ok

RECORD_TABLES = (
    "style_guides",
    "characters",
    "prompt_templates",
    "reference_sets",
    "reference_set_items",
    "provider_accounts",
)


def run_mixed_workload(client: TestClient) -> None:
    for slug in ("demo", "other"):
        ok(client.post("/api/projects", json={"name": slug.title(), "slug": slug}))
        base = f"/api/projects/{slug}"
        noir = ok(client.post(f"{base}/style-guides", json={"name": "Noir", "instructions": "ink"}))
        pop = ok(
            client.post(f"{base}/style-guides", json={"name": "Pop", "instructions": "dots", "notes": "n"})
        )
        ok(
            client.put(
                f"{base}/style-guides/{noir['style_guide']['id']}", json={"name": "Neo Noir", "notes": ""}
            )
        )
        ok(client.delete(f"{base}/style-guides/{pop['style_guide']['id']}"))

        hero = ok(client.post(f"{base}/characters", json={"name": "Hero", "description": "brave"}))
        ok(client.post(f"{base}/characters", json={"name": "Villain", "prompt_text": "sly"}))
        ok(client.put(f"{base}/characters/{hero['character']['id']}", json={"description": ""}))

        cover = ok(client.post(f"{base}/prompt-templates", json={"name": "Cover", "template_text": "t"}))
        ok(
            client.put(
                f"{base}/prompt-templates/{cover['prompt_template']['id']}", json={"template_text": "t2"}
            )
        )

        faces = ok(client.post(f"{base}/reference-sets", json={"name": "Faces"}))["reference_set"]
        gone = ok(client.post(f"{base}/reference-sets", json={"name": "Gone"}))["reference_set"]
        items = f"{base}/reference-sets/{faces['id']}/items"
        front = ok(
            client.post(items, json={"label": "front", "content_uri": "u", "metadata_json": {"b": 1, "a": 2}})
        )
        ok(client.post(items, json={"label": "side", "content_text": "t", "sort_order": 2}))
        ok(client.put(f"{items}/{front['item']['id']}", json={"sort_order": 5, "metadata_json": [1]}))
        ok(
            client.post(
                f"{base}/reference-sets/{gone['id']}/items", json={"label": "orphan", "content_text": "t"}
            )
        )
        ok(client.delete(f"{base}/reference-sets/{gone['id']}"))

        accounts = f"{base}/provider-accounts"
        ok(client.post(accounts, json={"provider_code": "OpenAI", "config_json": {"z": [1, {"y": None}]}}))
        ok(
            client.post(
                accounts, json={"provider_code": "openai", "display_name": "Open AI", "enabled": False}
            )
        )
        ok(client.post(accounts, json={"provider_code": "fal", "base_url": "https://fal"}))
        ok(client.put(f"{accounts}/fal", json={"base_url": "", "account_ref": "acct"}))
        ok(client.post(accounts, json={"provider_code": "gone"}))
        ok(client.delete(f"{accounts}/Gone"))


def test_rebuild_reproduces_every_read_model_table(client: TestClient) -> None:
    run_mixed_workload(client)
    before = dump_read_models(client)
    assert all(before[table] for table in RECORD_TABLES), "the workload leaves rows in every record table"
    assert len(before["reference_set_items"]) == 6  # orphans stay in the read model

    services = client.app.state.services
    db = sqlite3.connect(services.settings.readmodels_db)
    with db:  # damage the read model: only a real rebuild from the log brings it back
        db.execute("UPDATE style_guides SET name = 'damaged'")
        db.execute("DELETE FROM reference_set_items")
    db.close()
    client.blocking_portal.call(services.runner.rebuild)

    assert dump_read_models(client) == before
