"""Append throughput and latency of the SQLite event store, against raw sqlite3 inserting the same rows.

Scenarios (each on a fresh SQLite file in a temporary directory):

  appenders_1 / _64 / _256   that many asyncio tasks call SQLiteEventStore.append() in a loop; every
                             append is one ProjectCreated event on a new stream (expected NO_STREAM)
  raw_sqlite_b64             plain sqlite3, no asyncio: the same kind of rows (same schema, ids,
                             timestamps, msgspec bytes and SHA-256 chain), 64 per transaction

Usage: .venv/bin/python bench/append.py [--events N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kroma import dbthread
from kroma.clock import Clock
from kroma.events import codec
from kroma.events.envelope import ExpectedVersion, Metadata, NewEvent
from kroma.events.sqlite import COLUMNS, INSERT_EVENT, SCHEMA, SQLiteEventStore

RAW_BATCH = 64
EVENT_TYPE = "ProjectCreated"


def payload(project_id: str) -> dict:
    """A project-like event body, ~200 bytes of JSON."""
    return {
        "project_id": project_id,
        "title": "The Lighthouse Keeper, vol. 2",
        "slug": "the-lighthouse-keeper-vol-2",
        "format": "graphic_novel",
        "page_count": 48,
        "style": {"palette": "muted-teal", "inks": "brush"},
    }


def stream_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


async def run_store(path: str, appenders: int, streams: list[str]) -> dict:
    store = SQLiteEventStore(path)
    await store.open()
    latencies: list[float] = []
    share, extra = divmod(len(streams), appenders)
    slices, start = [], 0
    for w in range(appenders):
        end = start + share + (1 if w < extra else 0)
        slices.append(streams[start:end])
        start = end

    async def appender(mine: list[str]) -> None:
        for sid in mine:
            event = NewEvent(stream_id=sid, type=EVENT_TYPE, data=payload(sid))
            t0 = time.perf_counter()
            await store.append([event], expected={sid: ExpectedVersion.NO_STREAM})
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(appender(mine) for mine in slices))
    elapsed = time.perf_counter() - started

    assert await store.head() == len(streams)
    assert await store.verify_chain() == len(streams)
    await store.close()
    latencies.sort()
    return {
        "events": len(streams),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(streams) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
    }


def run_raw(path: str, streams: list[str]) -> dict:
    clock = Clock()
    empty_meta = codec.encode(Metadata())
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for pragma in dbthread.PRAGMAS:
            db.execute(pragma)
        db.executescript(SCHEMA)
        position, prev = 0, codec.GENESIS
        started = time.perf_counter()
        for first in range(0, len(streams), RAW_BATCH):
            rows = []
            for sid in streams[first : first + RAW_BATCH]:
                event_id, at = clock.event_id(), clock.now_iso()
                data = codec.encode(payload(sid))
                position += 1
                header = codec.header_bytes(position, event_id, sid, 1, EVENT_TYPE, 1, at)
                prev = codec.link(prev, header, data, empty_meta)
                rows.append((position, event_id, sid, 1, EVENT_TYPE, 1, data, empty_meta, at, prev))
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT_EVENT, rows)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        rows = db.execute(f"SELECT {COLUMNS} FROM events ORDER BY position").fetchall()
        assert codec.verify_rows(rows) == (len(streams), prev)  # the same chain the store writes
    return {
        "events": len(streams),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(streams) / elapsed),
    }


def table(results: dict) -> str:
    raw = results["raw_sqlite_b64"]["events_per_s"]
    lines = [
        f"{'scenario':<16}{'events':>9}{'seconds':>9}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'vs raw':>8}",
        "-" * 71,
    ]
    for name, r in results.items():
        p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.3f}" if "p99_ms" in r else "-"
        lines.append(
            f"{name:<16}{r['events']:>9,}{r['seconds']:>9.2f}{r['events_per_s']:>11,}"
            f"{p50:>9}{p99:>9}{r['events_per_s'] / raw:>7.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--events",
        type=int,
        default=50_000,
        help="events per concurrent scenario and for raw sqlite3 (1 appender runs a fifth of it)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line, last")
    args = parser.parse_args()
    sizes = {1: max(1, args.events // 5), 64: args.events, 256: args.events}
    sample = len(codec.encode(payload(str(uuid.uuid4()))))

    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; "
        f"payload {sample} bytes; pragmas: {', '.join(p.split()[1] for p in dbthread.PRAGMAS)}",
        flush=True,
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kroma-bench-") as tmp:
        for appenders, n in sizes.items():
            name = f"appenders_{appenders}"
            results[name] = asyncio.run(run_store(os.path.join(tmp, f"{name}.db"), appenders, stream_ids(n)))
            print(f"  {name}: done", flush=True)
        results["raw_sqlite_b64"] = run_raw(os.path.join(tmp, "raw.db"), stream_ids(args.events))
        print("  raw_sqlite_b64: done\n", flush=True)

    print(table(results))
    raw = results["raw_sqlite_b64"]["events_per_s"]
    summary: dict = dict(results)
    for appenders in sizes:
        summary[f"ratio_{appenders}_to_raw"] = round(
            results[f"appenders_{appenders}"]["events_per_s"] / raw, 3
        )
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
