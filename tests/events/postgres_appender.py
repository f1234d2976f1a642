"""A child process for test_postgres.py: appends a mixed workload to one PostgreSQL log.

    python postgres_appender.py URL SCHEMA TAG TASKS COMMANDS

Opens a PostgresEventStore, prints "ready", waits for a line on stdin (so two children start
together), then runs TASKS asyncio tasks of COMMANDS commands each:
  - every command appends to the task's own stream `<TAG>-<task>` with an exact expected version,
    and every other one also to a stream shared with the other process (`pair-<task % 8>`), in one
    atomic command;
  - every third command increments a counter stream `counter-<n % 4>` shared by both processes:
    read its version, append with that expected version, retry on ConcurrencyConflict;
  - every fifth command is keyed `key-<task>-<n>`: both processes send the same key and
    fingerprint, so across them exactly one appends and the other replays its result.
Prints one JSON line: the results, for the parent to check against the log.
"""

from __future__ import annotations

import asyncio
import json
import sys

from kroma.events.envelope import NewEvent
from kroma.events.postgres import PostgresEventStore
from kroma.events.store import ConcurrencyConflict


async def main(url: str, schema: str, tag: str, tasks: int, commands: int) -> dict:
    store = PostgresEventStore(url, schema=schema)
    await store.open()
    report: dict = {"appended": 0, "increments": {}, "keyed": {}, "conflicts_retried": 0}
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def increment(counter: str) -> None:
            while True:
                version = await store.stream_version(counter)
                try:
                    await store.append(
                        [NewEvent(counter, "Counter.Incremented", {"by": tag})], {counter: version}
                    )
                except ConcurrencyConflict:
                    report["conflicts_retried"] += 1
                    continue
                report["appended"] += 1
                report["increments"][counter] = report["increments"].get(counter, 0) + 1
                return

        async def worker(task: int) -> None:
            own = f"{tag}-{task}"
            for n in range(commands):
                events = [NewEvent(own, "Thing.Happened", {"n": n})]
                if n % 2:
                    events.append(NewEvent(f"pair-{task % 8}", "Thing.Paired", {"from": own, "n": n}))
                result = await store.append(events, {own: n})
                report["appended"] += len(events)
                assert result.stream_versions[own] == n + 1
                if n % 3 == 0:
                    await increment(f"counter-{n % 4}")
                if n % 5 == 0:
                    key = f"key-{task}-{n}"
                    keyed = await store.append(
                        [NewEvent(f"keyed-{task}", "Thing.Keyed", {"n": n})],
                        idempotency_key=key,
                        fingerprint="f",
                    )
                    if not keyed.replayed:
                        report["appended"] += 1
                    report["keyed"][key] = [keyed.replayed, keyed.event_ids]

        await asyncio.gather(*(worker(t) for t in range(tasks)))
    finally:
        await store.close()
    return report


if __name__ == "__main__":
    url, schema, tag, tasks, commands = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(url, schema, tag, int(tasks), int(commands)))), flush=True)
