"""Every route group the application mounts. Add a feature's router here."""

from __future__ import annotations

from typing import Any

from kroma.http.routes import events, health, projects


def all_routes() -> list[Any]:
    return [
        health.health,
        projects.router,
        events.router,
    ]
