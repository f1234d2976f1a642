"""Append throughput and latency of the event store, against raw inserts of the same rows.

Scenarios (each on a fresh SQLite file in a temporary directory, or a fresh PostgreSQL schema):

  appenders_1 / _64 / _256   that many asyncio tasks call store.append() in a loop; every
                             append is one ProjectCreated event on a new stream (expected NO_STREAM)
  raw_sqlite_b64             plain sqlite3, no asyncio: the same kind of rows (same schema, ids,
                             timestamps, msgspec bytes and SHA-256 chain), 64 per transaction

With --store postgres, the same scenarios run on PostgreSQL too and print beside SQLite's, plus:

  processes_2x64             two OS processes with 64 appenders each on one database (PostgreSQL
                             only: what a second server adds)
  raw_postgres_b64           plain asyncpg, no store: the same rows 64 per transaction, one
                             INSERT ... SELECT FROM unnest(...) each

Usage: .venv/bin/python bench/append.py [--events N] [--store sqlite|postgres] [--postgres-url URL] [--json]
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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.remove(str(Path(__file__).resolve().parent))  # else bench/http.py shadows the stdlib's http

from kroma import dbthread
from kroma.clock import Clock
from kroma.events import codec
from kroma.events.envelope import ExpectedVersion, Metadata, NewEvent
from kroma.events.postgres import COLUMNS as PG_COLUMNS
from kroma.events.postgres import PostgresEventStore
from kroma.events.sqlite import COLUMNS, INSERT_EVENT, SCHEMA, SQLiteEventStore

RAW_BATCH = 64
EVENT_TYPE = "ProjectCreated"
DEFAULT_POSTGRES_URL = os.environ.get("KROMA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


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


async def run_store(make_store: Callable[[], Any], appenders: int, streams: list[str]) -> dict:
    store = make_store()
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


@asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh schema for one scenario, dropped with everything in it afterwards."""
    import asyncpg

    admin = await asyncpg.connect(url)
    name = f"kroma_bench_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await admin.close()


async def run_postgres(url: str, appenders: int, streams: list[str]) -> dict:
    async with postgres_schema(url) as schema:
        return await run_store(lambda: PostgresEventStore(url, schema=schema), appenders, streams)


async def run_postgres_processes(url: str, processes: int, appenders: int, streams: list[str]) -> dict:
    """`processes` children (this script with --child) append to one schema at once, each with
    `appenders` tasks over its share of the streams; timed from a go signal to the last one done."""
    async with postgres_schema(url) as schema:
        async with PostgresEventStore(url, schema=schema):  # creates the tables before the race
            pass
        share = -(-len(streams) // processes)
        children = []
        for i in range(processes):
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", url, schema, str(appenders),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("\n".join(streams[i * share : (i + 1) * share]).encode() + b"\n\n")
            await child.stdin.drain()
            assert (await child.stdout.readline()).strip() == b"ready"
            children.append(child)
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await child.communicate() for child in children]
        elapsed = time.perf_counter() - started
        latencies = sorted(x for out, _ in outputs for x in json.loads(out.splitlines()[-1]))
        async with PostgresEventStore(url, schema=schema) as store:
            assert await store.head() == len(streams)
            assert await store.verify_chain() == len(streams)
    return {
        "events": len(streams),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(streams) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
    }


async def child(url: str, schema: str, appenders: int) -> None:
    """One process of processes_2x64: read its streams from stdin, say ready, wait for go."""
    loop = asyncio.get_running_loop()
    streams: list[str] = []
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        streams.append(line)
    store = PostgresEventStore(url, schema=schema)
    await store.open()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    slices = [streams[i::appenders] for i in range(appenders)]
    latencies: list[float] = []

    async def appender(mine: list[str]) -> None:
        for sid in mine:
            event = NewEvent(stream_id=sid, type=EVENT_TYPE, data=payload(sid))
            t0 = time.perf_counter()
            await store.append([event], expected={sid: ExpectedVersion.NO_STREAM})
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(appender(mine) for mine in slices))
    await store.close()
    print(json.dumps(latencies), flush=True)


async def run_raw_postgres(url: str, streams: list[str]) -> dict:
    """asyncpg alone: the store's rows and chain, 64 per transaction, one INSERT each."""
    import asyncpg

    clock = Clock()
    empty_meta = codec.encode(Metadata())
    async with postgres_schema(url) as schema:
        async with PostgresEventStore(url, schema=schema):  # the same tables
            pass
        db = await asyncpg.connect(url)
        insert = (
            f'INSERT INTO "{schema}".events ({PG_COLUMNS}) SELECT * FROM unnest($1::bigint[], $2::text[],'
            " $3::text[], $4::integer[], $5::text[], $6::integer[], $7::bytea[], $8::bytea[], $9::text[],"
            " $10::bytea[])"
        )
        try:
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
                async with db.transaction():
                    await db.execute(insert, *(list(column) for column in zip(*rows, strict=True)))
            elapsed = time.perf_counter() - started
        finally:
            await db.close()
        async with PostgresEventStore(url, schema=schema) as store:
            assert await store.verify_chain() == len(streams)
    return {
        "events": len(streams),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(streams) / elapsed),
    }


async def postgres_settings(url: str) -> str:
    import asyncpg

    db = await asyncpg.connect(url)
    try:
        version = await db.fetchval("SHOW server_version")
        sync = await db.fetchval("SHOW synchronous_commit")
        fsync = await db.fetchval("SHOW fsync")
    finally:
        await db.close()
    return f"postgresql {version} (synchronous_commit={sync}, fsync={fsync})"


def side_by_side(sqlite: dict, postgres: dict) -> str:
    """One row per scenario: SQLite's figures, then PostgreSQL's."""

    def cells(r: dict | None) -> str:
        if r is None:
            return f"{'-':>11}{'-':>9}{'-':>9}"
        p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.3f}" if "p99_ms" in r else "-"
        return f"{r['events_per_s']:>11,}{p50:>9}{p99:>9}"

    rows = {
        name: (sqlite.get(name), postgres.get(name))
        for name in ("appenders_1", "appenders_64", "appenders_256", "processes_2x64")
    }
    rows["raw_b64"] = (sqlite["raw_sqlite_b64"], postgres["raw_postgres_b64"])
    head = f"{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
    lines = [
        f"{'':<16}{'':>9}  {'SQLite':<29}  {'PostgreSQL':<29}",
        f"{'scenario':<16}{'events':>9}  {head}  {head}",
        "-" * 87,
    ]
    for name, (lite, pg) in rows.items():
        events = (lite or pg or {}).get("events", 0)
        lines.append(f"{name:<16}{events:>9,}  {cells(lite)}  {cells(pg)}")
    return "\n".join(lines)


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
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: SQLite alone; postgres: SQLite and PostgreSQL side by side",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="the server for --store postgres (env KROMA_BENCH_POSTGRES_URL); each scenario gets a\n"
        "schema of its own, dropped afterwards",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line, last")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, schema, appenders = args.child
        asyncio.run(child(url, schema, int(appenders)))
        return
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
            path = os.path.join(tmp, f"{name}.db")
            results[name] = asyncio.run(run_store(lambda p=path: SQLiteEventStore(p), appenders, stream_ids(n)))
            print(f"  {name}: done", flush=True)
        results["raw_sqlite_b64"] = run_raw(os.path.join(tmp, "raw.db"), stream_ids(args.events))
        print("  raw_sqlite_b64: done\n", flush=True)

    raw = results["raw_sqlite_b64"]["events_per_s"]
    summary: dict = dict(results)
    for appenders in sizes:
        summary[f"ratio_{appenders}_to_raw"] = round(
            results[f"appenders_{appenders}"]["events_per_s"] / raw, 3
        )
    if args.store == "postgres":
        print(asyncio.run(postgres_settings(args.postgres_url)), flush=True)
        pg: dict[str, dict] = {}
        for appenders, n in sizes.items():
            name = f"appenders_{appenders}"
            pg[name] = asyncio.run(run_postgres(args.postgres_url, appenders, stream_ids(n)))
            print(f"  postgres {name}: done", flush=True)
        pg["processes_2x64"] = asyncio.run(
            run_postgres_processes(args.postgres_url, 2, 64, stream_ids(args.events))
        )
        print("  postgres processes_2x64: done", flush=True)
        pg["raw_postgres_b64"] = asyncio.run(run_raw_postgres(args.postgres_url, stream_ids(args.events)))
        print("  postgres raw_postgres_b64: done\n", flush=True)
        print(side_by_side(results, pg))
        summary["postgres"] = pg
    else:
        print(table(results))
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
