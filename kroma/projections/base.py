"""What a projection is: a named, versioned fold of events into tables it owns."""

from __future__ import annotations

import sqlite3
from typing import Protocol

from kroma.events.envelope import Event


class Projection(Protocol):
    # Read-only members, so plain class attributes (`name = "projects"`) satisfy them.
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int:
        """Bump when the tables' shape or the fold changes: the runner then rebuilds."""
        ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    @property
    def schema(self) -> str:
        """CREATE TABLE / CREATE INDEX statements for `tables`, `;`-separated."""
        ...

    @property
    def handles(self) -> frozenset[str] | None:
        """The event types it folds; None means every event."""
        ...

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        """Fold one event into the tables. Runs inside the runner's transaction."""
        ...
