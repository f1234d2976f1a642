"""A small demo project, written through the real HTTP handlers so it obeys every contract rule."""

from __future__ import annotations

import msgspec
from litestar.testing import AsyncTestClient

from kroma.config import Settings
from kroma.http.app import create_app

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
    return created
