"""A small demo project, written through the real HTTP handlers so it obeys every contract rule."""

from __future__ import annotations

import msgspec
from litestar.testing import AsyncTestClient

from kroma.config import Settings
from kroma.http.app import create_app
from kroma.imaging.sketch import street_scene

DEMO_SLUG = "demo_comic"

_REQUESTS: list[tuple[str, str, dict]] = [
    (
        "POST",
        "/api/projects",
        {"name": "Demo Comic", "slug": DEMO_SLUG, "description": "A harbour noir in ink"},
    ),
    (
        "POST",
        f"/api/projects/{DEMO_SLUG}/style-guides",
        {
            "name": "Harbour Ink",
            "instructions": "Heavy blacks, halftone greys, one accent colour.",
            "notes": "demo",
        },
    ),
    (
        "POST",
        f"/api/projects/{DEMO_SLUG}/characters",
        {
            "name": "Mara Voss",
            "description": "Dock detective",
            "prompt_text": "tall, grey trench coat, scar over left eye",
        },
    ),
    (
        "POST",
        f"/api/projects/{DEMO_SLUG}/prompt-templates",
        {"name": "Panel", "template_text": "{scene}, in the Harbour Ink style"},
    ),
    ("POST", f"/api/projects/{DEMO_SLUG}/chat/sessions", {"title": "Issue #1 planning"}),
]


async def seed_demo(settings: Settings) -> list[str]:
    """Create the demo project unless the log already holds anything; returns what was created."""
    demo_settings = msgspec.structs.replace(settings, auth_dev_bypass=True)
    created: list[str] = []
    async with AsyncTestClient(create_app(demo_settings)) as client:
        services = client.app.state.services
        if await services.store.head() > 0:
            return created
        for method, path, body in _REQUESTS:
            response = await client.request(method, path, json=body)
            if response.status_code == 200:
                created.append(f"{method} {path}")
        created += await _demo_run(client)
    return created


async def _demo_run(client: AsyncTestClient) -> list[str]:
    """Two street scenes uploaded and one paid-mode run on the offline local provider, so a fresh
    install shows candidates, winners and a contact sheet (GET .../runs/{id}/contact-sheet.png)."""
    base = f"/api/projects/{DEMO_SLUG}"
    files = [("file", (f"harbour_street_{i}.png", street_scene((512, 768), i), "image/png")) for i in (1, 2)]
    uploaded = await client.post(f"{base}/assets", files=files)
    if uploaded.status_code != 200:
        return []
    world = {
        "style_guide_id": (await client.get(f"{base}/style-guides")).json()["style_guides"][0]["id"],
        "character_ids": [(await client.get(f"{base}/characters")).json()["characters"][0]["id"]],
        "prompt_template_id": (await client.get(f"{base}/prompt-templates")).json()["prompt_templates"][0]["id"],
        "template_vars": {"scene": "a rain-soaked harbour street at night"},
    }
    body = {
        "mode": "run",
        "confirm_spend": True,
        "provider": "local",
        "candidates": 3,
        "scene_refs": [a["rel_path"] for a in uploaded.json()["assets"]],
        **world,
    }
    run = await client.post(f"{base}/runs/trigger", json=body)
    return [f"POST {base}/assets", f"POST {base}/runs/trigger"] if run.status_code == 200 else []
