"""Every route group the application mounts. Add a feature's router here."""

from __future__ import annotations

from typing import Any

from kroma.http.routes import (
    agent_instructions,
    asset_links,
    audit,
    bootstrap,
    characters,
    chat,
    events,
    exports,
    health,
    pipeline,
    projects,
    prompt_templates,
    provider_accounts,
    reference_sets,
    review,
    runs,
    secrets,
    storage_sync,
    style_guides,
    tokens,
)


def all_routes() -> list[Any]:
    return [
        health.health,
        tokens.router,
        projects.router,
        bootstrap.router,
        events.router,
        provider_accounts.router,
        style_guides.router,
        characters.router,
        reference_sets.sets_router,
        reference_sets.items_router,
        prompt_templates.router,
        pipeline.router,
        review.router,
        runs.router,
        asset_links.router,
        chat.router,
        agent_instructions.router,
        secrets.router,
        audit.router,
        storage_sync.router,
        exports.router,
    ]
