"""Rebuild speed and memory: every projection folded again from a 100,000-event log (or --events N).

The log is made by replaying a template workload (one project driven through the real HTTP app:
storage, provider accounts, style guides, characters, templates, reference sets, chat, agent
instructions, a secret set and deleted, and one run of 2 candidates on the offline local provider
with its engine events, assets and links) many times with fresh ids (entity, stream, correlation
and request ids alike), so the events are exactly what the application appends. The rebuild is
`kroma projections rebuild`'s: a fresh read-model file folded from position 0 and swapped into
the live one; it runs in a child process so its peak RSS is its own.

With --store postgres the same log is also built on PostgreSQL (fresh schemas, dropped
afterwards) and rebuilt there, the read models in PostgreSQL too: PostgreSQL's row prints beside
SQLite's.

Usage: .venv/bin/python bench/rebuild.py [--events N] [--store sqlite|postgres] [--postgres-url URL] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.remove(str(Path(__file__).resolve().parent))  # else bench/http.py shadows the stdlib's http

from litestar.testing import TestClient
from PIL import Image

from kroma.config import Settings
from kroma.events.envelope import Metadata, NewEvent
from kroma.http.app import create_app
from kroma.projections.runner import BUILD_GROUP
from kroma.services import Services

DEFAULT_POSTGRES_URL = os.environ.get("KROMA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _scene_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (128, 128, 128)).save(out, format="PNG")
    return out.getvalue()


def template_workload(data_dir: Path) -> list:
    """Drive one project through every configuration route that exists and one run on the local
    provider; return its events."""
    settings = Settings(
        data_dir=str(data_dir / "kroma"), workspace_root=str(data_dir), auth_dev_bypass=True, agent_dispatch=False
    )
    with TestClient(create_app(settings)) as c:
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
        c.post(f"{p}/secrets", json={"provider_code": "fal", "secret_name": "api_key", "secret_value": "k"})
        c.delete(f"{p}/secrets/fal/api_key")
        scenes = c.post(f"{p}/assets", files=[("file", ("scene.png", _scene_png(), "image/png"))]).json()
        if scenes.get("ok"):
            refs = [a["rel_path"] for a in scenes["assets"]]
            run = {"mode": "run", "confirm_spend": True, "provider": "local", "scene_refs": refs, "candidates": 2}
            c.post(f"{p}/runs/trigger", json=run)
        services: Services = c.app.state.services
        return c.blocking_portal.call(services.store.read_all, 0, 100_000)


def log_settings(data_dir: Path, url: str = "", schema: str = "kroma") -> Settings:
    """The data folder's settings, the log on PostgreSQL when `url` is given."""
    return Settings(data_dir=str(data_dir), event_store_url=url, event_store_schema=schema)


async def build_log(data_dir: Path, template: list, target: int, url: str = "", schema: str = "kroma") -> int:
    services = Services(log_settings(data_dir, url, schema))
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
                    msgspec.json.decode(remap(msgspec.json.encode(e.metadata).decode()), type=Metadata),
                    e.schema_version,
                )
                for e in template
            ]
            await services.store.append(events)
            copies += 1
        return await services.store.head()
    finally:
        await services.close()


async def rebuild(data_dir: Path, url: str = "", schema: str = "kroma") -> dict:
    services = Services(log_settings(data_dir, url, schema))
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


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    db = await asyncpg.connect(url)
    try:
        for name in (schema, f"{schema}_rm", f"{schema}_rm_rb", f"{schema}_keys"):  # log, read models, keys
            await db.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await db.close()


def measure(tmp: Path, template: list, target: int, url: str = "", schema: str = "kroma") -> dict:
    """Build a log of `target` events (on PostgreSQL when `url` is given), then time its rebuild
    in a child process."""
    data = tmp / ("data-postgres" if url else "data")
    started = time.perf_counter()
    head = asyncio.run(build_log(data, template, target, url, schema))
    where = f"on PostgreSQL (schema {schema})" if url else "in SQLite"
    print(
        f"built a {head:,}-event log {where} ({len(template)} events per project) in"
        f" {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    store_args = ["--child-store", url, schema] if url else []
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(data), *store_args], capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-store", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, schema = args.child_store or ("", "kroma")
        print(json.dumps(asyncio.run(rebuild(Path(args.child), url, schema))))
        return
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        template = template_workload(Path(tmp) / "template")
        result["rebuild_all"] = measure(Path(tmp), template, args.events)
        if args.store == "postgres":
            schema = f"kroma_bench_{uuid.uuid4().hex[:12]}"
            try:
                result["rebuild_all_postgres"] = measure(
                    Path(tmp), template, args.events, args.postgres_url, schema
                )
            finally:
                asyncio.run(drop_schema(args.postgres_url, schema))
    print(
        f"{'scenario':<22}{'events':>10}{'seconds':>9}{'events/s':>11}{'heap peak MB':>14}{'peak RSS MB':>13}"
    )
    for name, r in result.items():
        print(
            f"{name:<22}{r['events']:>10,}{r['seconds']:>9.2f}{r['events_per_s']:>11,}"
            f"{r['python_heap_peak_mb']:>14}{r['peak_rss_mb']:>13}"
        )
    r = result["rebuild_all"]
    print(
        f"({r['projections']} projections; 2,000-event pages, {BUILD_GROUP} to a transaction in the fresh file"
        " when the log is SQLite's, one otherwise)"
    )
    if "rebuild_all_postgres" in result:
        print("(rebuild_all_postgres: the log and the read models on PostgreSQL)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
