"""Shared handler plumbing: the services container and project resolution."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import NotFound
from kroma.domain.slugs import normalize_slug
from kroma.services import Services

# Handlers declare `services: ServicesDep` to receive the application's Services.
ServicesDep = NamedDependency[Services]


def get_services(state: State) -> Services:
    return state.services


def services_of(request: Request) -> Services:
    return request.app.state.services


async def project_row(services: Services, slug: str, not_found: str = "Project not found") -> dict[str, Any]:
    """The read-model row of the project at a path slug (normalised first), or the handler's 404."""
    normal = normalize_slug(slug)
    row = None
    if normal is not None:
        row = await services.reader.one("SELECT * FROM projects WHERE slug = ?", (normal,))
    if row is None:
        raise NotFound(not_found)
    return row


async def project_id(services: Services, slug: str, not_found: str = "Project not found") -> str:
    """The id of the project at a path slug (normalised first), or the handler's 404: what a
    command needs before `on_project`, which decides against the project's current state itself.
    (A slug names its project from the project's first event on, and never moves.)"""
    found = await services.commands.project_id_for_slug(slug)
    if found is None:
        raise NotFound(not_found)
    return found


async def project_state(services: Services, slug: str, not_found: str = "Project not found") -> ProjectState:
    """The authoritative project state for a command, or the handler's 404."""
    state, _version = await services.commands.project_by_slug(slug)
    if state is None:
        raise NotFound(not_found)
    return state
