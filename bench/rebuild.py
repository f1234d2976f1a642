"""Rebuild speed and memory: every projection folded again from a 100,000-event log.

The log is made by replaying a template workload (one project driven through the real HTTP app:
storage, provider accounts, style guides, characters, templates, reference sets, chat, agent
instructions, ...) many times with fresh ids, so the events are exactly what the application
appends. The rebuild runs in a child process so its peak RSS is its own.

Usage: .venv/bin/python bench/rebuild.py [--events N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestar.testing import TestClient

from kroma.config import Settings
from kroma.events.envelope import NewEvent
from kroma.http.app import create_app
from kroma.services import Services

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def template_workload(data_dir: Path) -> list:
    """Drive one project through every configuration route that exists; return its events."""
    with TestClient(create_app(Settings(data_dir=str(data_dir), auth_dev_bypass=True))) as c:
        p = "/api/projects/tmpl"
        c.post("/api/projects", json={"name": "Template", "slug": "tmpl", "description": "bench"})
        c.put(f"{p}/storage/local", json={"base_dir": "art"})
        c.put(f"{p}/storage/s3", json={"enabled": True, "bucket": "b", "region": "eu-west-1"})
        c.post(f"{p}/provider-accounts", json={"provider_code": "openai", "config_json": {"model": "m"}})
        for i in range(4):
            sg = c.post(f"{p}/style-guides", json={"name": f"Style {i}", "instructions": "ink " * 20}).json()
            if sg.get("ok"):
                c.put(f"{p}/style-guides/{sg['style_guide']['id']}", json={"notes": "revised"})
            c.post(
                f"{p}/characters", json={"name": f"Hero {i}", "description": "tall", "prompt_text": "x" * 80}
            )
            c.post(f"{p}/prompt-templates", json={"name": f"T{i}", "template_text": "Draw {scene}"})
        rs = c.post(f"{p}/reference-sets", json={"name": "Faces"}).json()
        if rs.get("ok"):
            for i in range(4):
                c.post(
                    f"{p}/reference-sets/{rs['reference_set']['id']}/items",
                    json={"label": f"face {i}", "content_uri": f"file://f{i}.png"},
                )
        s = c.post(f"{p}/chat/sessions", json={"title": "Plan"}).json()
        if s.get("ok"):
            for role in ("user", "assistant") * 3:
                c.post(
                    f"{p}/chat/sessions/{s['session']['id']}/messages", json={"role": role, "content": "hi"}
                )
        ins = c.post(f"{p}/agent/instructions", json={"instruction_text": "Colour page 3"}).json()
        if ins.get("ok"):
            c.post(f"{p}/agent/instructions/{ins['instruction']['id']}/confirm", json={})
        services: Services = c.app.state.services
        return c.blocking_portal.call(services.store.read_all, 0, 100_000)


async def build_log(data_dir: Path, template: list, target: int) -> int:
    services = Services(Settings(data_dir=str(data_dir)))
    await services.open(follow=False)
    copies = 0
    try:
        while copies * len(template) < target:
            mapping: dict[bytes, bytes] = {}

            def fresh(m: re.Match[bytes], mapping: dict[bytes, bytes] = mapping) -> bytes:
                return mapping.setdefault(m.group(0), str(uuid.uuid4()).encode())

            def remap(text: str, copy: int = copies, fresh=fresh) -> str:
                out = UUID.sub(fresh, text.encode()).decode()
                return out.replace("tmpl", f"p{copy}")

            events = [
                NewEvent(
                    remap(e.stream_id),
                    e.type,
                    json.loads(remap(json.dumps(e.data))),
                    e.metadata,
                    e.schema_version,
                )
                for e in template
            ]
            await services.store.append(events)
            copies += 1
        return await services.store.head()
    finally:
        await services.close()


async def rebuild(data_dir: Path) -> dict:
    services = Services(Settings(data_dir=str(data_dir)))
    await services.open(follow=False)
    try:
        head = await services.store.head()
        started = time.perf_counter()
        await services.runner.rebuild()
        seconds = time.perf_counter() - started
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # A second, traced pass for the Python heap peak (tracemalloc slows allocation, so the
        # timed pass above runs without it).
        tracemalloc.start()
        await services.runner.rebuild()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {
            "events": head,
            "seconds": round(seconds, 3),
            "events_per_s": round(head / seconds),
            "python_heap_peak_mb": round(traced_peak / 2**20, 1),
            "peak_rss_mb": round(rss_mb, 1),
            "projections": len(services.runner.projections),
        }
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(rebuild(Path(args.child)))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        template = template_workload(Path(tmp) / "template")
        data = Path(tmp) / "data"
        started = time.perf_counter()
        head = asyncio.run(build_log(data, template, args.events))
        print(
            f"built a {head:,}-event log ({len(template)} events per project) in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(data)], capture_output=True, text=True, check=True
        )
        result = {"rebuild_all": json.loads(child.stdout.strip().splitlines()[-1])}
    r = result["rebuild_all"]
    print(
        f"{'scenario':<14}{'events':>10}{'seconds':>9}{'events/s':>11}{'heap peak MB':>14}{'peak RSS MB':>13}"
    )
    print(
        f"{'rebuild_all':<14}{r['events']:>10,}{r['seconds']:>9.2f}{r['events_per_s']:>11,}"
        f"{r['python_heap_peak_mb']:>14}{r['peak_rss_mb']:>13}"
    )
    print(f"({r['projections']} projections, one transaction per 2,000-event page)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
