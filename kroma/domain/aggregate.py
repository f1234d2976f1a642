"""The project aggregate: one stream `project:<id>` holds a project's whole configuration.

Keeping a project's configuration on one stream makes every per-project invariant (unique names,
"the entity exists", state machines) a decision against one consistent state, and the store's
expected-version check turns any race into a retry of that decision.

Feature modules register how their event types change the state with `@evolves(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kroma.clock import to_seconds
from kroma.events.envelope import Event

Evolver = Callable[["ProjectState", dict[str, Any], Event], None]
EVOLVERS: dict[str, Evolver] = {}


def evolves(*types: str) -> Callable[[Evolver], Evolver]:
    def register(fn: Evolver) -> Evolver:
        for t in types:
            EVOLVERS[t] = fn
        return fn

    return register


def project_stream(project_id: str) -> str:
    return f"project:{project_id}"


def slug_stream(slug: str) -> str:
    return f"project-slug:{slug}"


@dataclass
class ProjectState:
    id: str
    slug: str
    name: str
    description: str
    owner_username: str
    owner_display_name: str
    created_at: str
    updated_at: str
    storage: dict[str, Any]
    collections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    names: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def items(self, kind: str) -> dict[str, dict[str, Any]]:
        """The live entities of one kind (style_guides, characters, ...), keyed by id."""
        return self.collections.setdefault(kind, {})

    def named(self, kind: str) -> dict[str, set[str]]:
        """name -> ids of the live entities of one kind that have a name, kept by the kind's
        evolvers: a unique-name rule is one lookup however many records the project holds."""
        return self.names.setdefault(kind, {})


def fold(state: ProjectState | None, events: list[Event]) -> ProjectState | None:
    """Apply stored events to a project state (in place when it exists)."""
    for event in events:
        if event.type == "project.created":
            d = event.data
            at = to_seconds(event.recorded_at)
            state = ProjectState(
                id=d["project_id"],
                slug=d["slug"],
                name=d["name"],
                description=d["description"],
                owner_username=d["owner_username"],
                owner_display_name=d["owner_display_name"],
                created_at=at,
                updated_at=at,
                storage=dict(d["storage"]),
            )
            continue
        evolver = EVOLVERS.get(event.type)
        if state is not None and evolver is not None:
            evolver(state, event.data, event)
            state.updated_at = max(state.updated_at, to_seconds(event.recorded_at))
    return state
