"""What a projection is: a named, versioned fold of events into tables it owns."""

from __future__ import annotations

import sqlite3
from typing import Protocol

from kroma.events.envelope import Event


class Projection(Protocol):
    """Optional members the runner uses when present:
    - `apply_many(db, events)`: fold a page at once, leaving the rows `apply` would, event by event.
    - `build_many(db, events, state)` and `finish_build(db, state)`: fold into a rebuild's fresh
      SQLite file before the projection's `CREATE UNIQUE INDEX`es exist (they are created after
      `finish_build`, which makes the rows fit them); `state` is a dict kept for that one build.
    """

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
