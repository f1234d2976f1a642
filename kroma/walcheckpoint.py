"""WAL checkpoints off the commit path.

SQLite checkpoints a WAL file on the commit that grows it past `wal_autocheckpoint` pages (1,000):
that commit copies the WAL back into the database and fsyncs both before it returns, up to 20 ms
on this disk, while a group of requests waits for it (the p99 of a projection commit under write
load). A `Checkpointer` instead runs a PASSIVE checkpoint (it never blocks a writer or a reader,
and waits for neither) on a connection of its own, in a thread of its own (no event-loop work:
the thread sleeps between rounds), every `interval` while the file is open. The WAL is then copied back long before a commit would have to, and the next
writer restarts it from its first frame, so it stays short and the commit's own check finds
nothing to do. Autocheckpoint stays on as the safety net: if a long reader keeps this one from
finishing, a commit still checkpoints as before.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two checkpoints of a quiet file
BUSY_FRAMES = 100  # a WAL this long after a checkpoint: the next one comes after INTERVAL / 10


class Checkpointer:
    def __init__(self, path: str, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="kroma-wal-checkpoint", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            await asyncio.to_thread(thread.join)  # at most one checkpoint's time

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        pause = self.interval
        try:
            while not self._stopping.wait(pause):
                try:
                    if db is None:
                        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    frames = _checkpoint(db)
                except Exception:  # a busy or missing file: the next round (or autocheckpoint) does it
                    log.debug("background checkpoint of %s failed", self.path, exc_info=True)
                    frames = 0
                # Under write load, go again soon: the WAL must not reach the autocheckpoint size.
                pause = self.interval if frames < BUSY_FRAMES else self.interval / 10
        finally:
            if db is not None:
                db.close()


def _checkpoint(db: sqlite3.Connection) -> int:
    """One PASSIVE checkpoint; returns the WAL's size in frames."""
    row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(row[1]) if row and row[1] > 0 else 0
