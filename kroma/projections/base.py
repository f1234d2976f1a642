"""What a projection is: a named, versioned fold of events into tables it owns."""

from __future__ import annotations

import sqlite3
from typing import Protocol

from kroma.events.envelope import Event


class Projection(Protocol):
    name: str
    version: int  # bump when the tables' shape or the fold changes: the runner then rebuilds
    tables: tuple[str, ...]
    schema: str  # CREATE TABLE / CREATE INDEX statements for `tables`
    handles: frozenset[str] | None  # event types it folds; None means every event

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        """Fold one event into the tables. Runs inside the runner's transaction."""
        ...
