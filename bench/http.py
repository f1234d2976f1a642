"""HTTP throughput and latency of real `kroma serve` routes, beside a bare Litestar route, in one run.

Two server processes run side by side on 127.0.0.1, both under uvicorn with the same options:

  bare      a Litestar app with one route answering a constant JSON body (the framework's ceiling)
  kroma     `kroma serve` on a fresh data folder in a temporary directory, bearer auth on (the
            first-token bootstrap mints the token the load uses; --dev-bypass turns auth off)

Scenarios, each at --connections keep-alive connections (32):

  bare                        GET /bare on the bare app
  health                      GET /health (kroma's middleware, no database)
  projects_list               GET /api/projects with 20 projects
  project_detail              GET /api/projects/bench_01
  style_guides_list           GET /api/projects/bench_02/style-guides (10 style guides)
  style_guide_create          POST /api/projects/bench_01/style-guides, every name new: one project
  style_guide_create_many     the same POST spread round-robin over the 20 projects
  project_create              POST /api/projects, every name new

Every scenario gets a --warmup (2 s), then --rounds (3) rounds of --duration (4) seconds each. The
reads run first (so the writes cannot change what they read), then the writes; within each phase
the rounds are interleaved with bare's, so drift on a shared machine hits every scenario alike.
requests/s is over all rounds (bare's over both phases); p50 is the rounds' p50 weighted by
requests, p99 and max the worst round's. `<scenario>.ratio` is its requests/s over bare's.

The load generator is wrk (one thread; a Lua script reports percentiles as JSON) when it is on the
PATH, else a small asyncio HTTP/1.1 client in its own process (--loader python). A request counts
as failed when its status is not 2xx or its socket failed; failures are reported, never hidden, and
so are the 5xx answers in kroma's access log.

Usage: .venv/bin/python bench/http.py [--duration S] [--rounds N] [--connections N]
                                      [--loader auto|wrk|python] [--only a,b] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# This file is named http.py: its folder must not shadow the standard library's `http` package
# (httpx and uvicorn, imported later, need it); the repository root goes first instead.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

PROJECTS = 20
STYLE_GUIDES_LISTED = 10
JSON_HEADERS = {"content-type": "application/json"}

# wrk: a request per call (POSTs get a fresh name from a counter), percentiles as one JSON line.
WRK_SCRIPT = r"""
local paths, method, body_kind, tag, counter, headers = {}, "GET", "none", "x", 0, {}
function init(args)
  method, body_kind, tag = args[1], args[2], args[3]
  if args[4] ~= "" then headers["Authorization"] = "Bearer " .. args[4] end
  headers["Content-Type"] = "application/json"
  for i = 5, #args do paths[#paths + 1] = args[i] end
end
function request()
  counter = counter + 1
  local path = paths[(counter % #paths) + 1]
  local body = nil
  if body_kind == "style_guide" then
    body = '{"name":"Guide ' .. tag .. '-' .. counter .. '","instructions":"heavy blacks, halftone"}'
  elseif body_kind == "project" then
    body = '{"name":"Load ' .. tag .. ' ' .. counter .. '","description":"bench"}'
  end
  return wrk.format(method, path, headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Scenario:
    name: str
    base: str  # which server: "bare" or "kroma"
    method: str
    paths: list[str]
    body: str = "none"  # "none" | "style_guide" | "project"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


# -- the bare server (this script, run as a child process) ------------------------------------------


def serve_bare(port: int, log_level: str) -> None:
    import uvicorn
    from litestar import Litestar, get

    body = b'{"ok":true,"status":"bare"}'

    @get("/bare", sync_to_thread=False, media_type="application/json")
    def bare() -> bytes:  # a plain annotation: this module's annotations are strings
        return body

    app = Litestar(route_handlers=[bare], debug=False, logging_config=None)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level)).run()


# -- the python load generator (this script, run as a child process) --------------------------------


def _body_for(kind: str, tag: str, n: int) -> bytes:
    if kind == "style_guide":
        return json.dumps({"name": f"Guide {tag}-{n}", "instructions": "heavy blacks, halftone"}).encode()
    if kind == "project":
        return json.dumps({"name": f"Load {tag} {n}", "description": "bench"}).encode()
    return b""


async def _load(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    failed = socket_errors = 0
    counter = 0
    stop_at = time.perf_counter() + spec["duration"]
    auth = f"Authorization: Bearer {spec['token']}\r\n" if spec["token"] else ""

    async def connection() -> None:
        nonlocal failed, socket_errors, counter
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < stop_at:
            counter += 1
            path = spec["paths"][counter % len(spec["paths"])]
            body = _body_for(spec["body"], spec["tag"], counter)
            head = (
                f"{spec['method']} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            started = time.perf_counter()
            try:
                writer.write(head.encode() + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                socket_errors += 1
                return
            latencies.append(time.perf_counter() - started)
            if not status_line.split(b" ")[1].startswith(b"2"):
                failed += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(spec["connections"])))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "non2xx": failed,
        "socket_errors": socket_errors,
        "p50_us": int(percentile(latencies, 50) * 1e6) if latencies else 0,
        "p99_us": int(percentile(latencies, 99) * 1e6) if latencies else 0,
        "max_us": int(latencies[-1] * 1e6) if latencies else 0,
    }


def load_main(url: str, spec_json: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print("WRKJSON " + json.dumps(asyncio.run(_load(url, json.loads(spec_json)))), flush=True)


# -- the parent ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bare_url = ""
        self.kroma_url = ""
        self.token = ""
        self.wrk = shutil.which("wrk") if args.loader in ("auto", "wrk") else None
        if args.loader == "wrk" and not self.wrk:
            raise SystemExit("wrk is not on the PATH (apt-get install wrk), or use --loader python")
        self.script = tmp / "bench.lua"
        self.script.write_text(WRK_SCRIPT)

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                argv, env={**os.environ, **env}, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT
            )
        )

    def start(self) -> None:
        import httpx

        bare_port, kroma_port = free_port(), free_port()
        self.bare_url, self.kroma_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{kroma_port}"
        level = self.args.log_level
        self._spawn(
            [sys.executable, __file__, "--bare-server", str(bare_port)], {"BENCH_LOG_LEVEL": level}, "bare"
        )
        env = {
            "KROMA_DATA_DIR": str(self.tmp / "var" / "kroma"),
            "KROMA_BIND": f"127.0.0.1:{kroma_port}",
            "KROMA_LOG_LEVEL": level,
            "KROMA_API_AUTH_DEV_BYPASS": "1" if self.args.dev_bypass else "0",
        }
        self._spawn([sys.executable, "-m", "kroma.cli", "serve"], env, "kroma")
        for url, path in ((self.bare_url, "/bare"), (self.kroma_url, "/health")):
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + path, timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise SystemExit(f"{url} did not start; see {self.tmp}")
                time.sleep(0.05)

    def seed(self) -> None:
        import httpx

        with httpx.Client(base_url=self.kroma_url, headers=JSON_HEADERS, timeout=30) as http:
            if not self.args.dev_bypass:
                minted = http.post("/auth/token", json={"label": "bench"}).json()
                self.token = minted["auth_token"]["token"]
                http.headers["authorization"] = f"Bearer {self.token}"
            for i in range(1, PROJECTS + 1):
                r = http.post("/api/projects", json={"name": f"Bench {i:02d}", "description": "bench"})
                assert r.status_code == 200, r.text
            for i in range(STYLE_GUIDES_LISTED):
                body = {"name": f"Listed {i}", "instructions": "ink"}
                r = http.post("/api/projects/bench_02/style-guides", json=body)
                assert r.status_code == 200, r.text

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def run(self, s: Scenario, duration: float) -> dict[str, Any]:
        """One load run: requests, duration_us, non2xx, socket_errors, p50_us, p99_us, max_us."""
        url = self.bare_url if s.base == "bare" else self.kroma_url
        token = "" if s.base == "bare" else self.token
        tag = uuid.uuid4().hex[:8]
        if self.wrk:
            argv = [
                self.wrk, "-t1", f"-c{self.args.connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
                "-s", str(self.script), url, "--", s.method, s.body, tag, token, *s.paths,
            ]  # fmt: skip
        else:
            spec = {
                "method": s.method, "paths": s.paths, "body": s.body, "tag": tag, "token": token,
                "duration": duration, "connections": self.args.connections,
            }  # fmt: skip
            argv = [sys.executable, __file__, "--load", url, json.dumps(spec)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
        return dict(json.loads(line.removeprefix("WRKJSON ")))

    def server_errors(self) -> int:
        """5xx answers in kroma's access log (the log level must be info or lower to see them)."""
        text = (self.tmp / "kroma.log").read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '" 5' in line and "HTTP/1.1" in line)

    def style_guides_on(self, slug: str) -> int:
        db = self.tmp / "var" / "kroma" / "readmodels.db"
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM style_guides JOIN projects ON projects.id = style_guides.project_id"
                " WHERE projects.slug = ?",
                (slug,),
            ).fetchone()
        return int(row[0])


def scenarios() -> list[Scenario]:
    slugs = [f"bench_{i:02d}" for i in range(1, PROJECTS + 1)]
    return [
        Scenario("bare", "bare", "GET", ["/bare"]),
        Scenario("health", "kroma", "GET", ["/health"]),
        Scenario("projects_list", "kroma", "GET", ["/api/projects"]),
        Scenario("project_detail", "kroma", "GET", ["/api/projects/bench_01"]),
        Scenario("style_guides_list", "kroma", "GET", ["/api/projects/bench_02/style-guides"]),
        Scenario(
            "style_guide_create", "kroma", "POST", ["/api/projects/bench_01/style-guides"], "style_guide"
        ),
        Scenario(
            "style_guide_create_many",
            "kroma",
            "POST",
            [f"/api/projects/{s}/style-guides" for s in slugs],
            "style_guide",
        ),
        Scenario("project_create", "kroma", "POST", ["/api/projects"], "project"),
    ]


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's rounds as one figure: requests/s over all of them; p50 weighted by requests;
    p99 and max the worst round's (the load generator reports percentiles, not samples)."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    return {
        "requests": requests,
        "rps": round(requests / seconds, 1),
        "p50_ms": round(sum(r["p50_us"] * r["requests"] for r in runs) / max(requests, 1) / 1000, 2),
        "p99_ms": round(max(r["p99_us"] for r in runs) / 1000, 2),
        "max_ms": round(max(r["max_us"] for r in runs) / 1000, 2),
        "failed": sum(r["non2xx"] + r["socket_errors"] for r in runs),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    bare = results["bare"]["rps"]
    lines = [
        f"{'scenario':<26}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'failed':>8}{'vs bare':>9}",
        "-" * 90,
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<26}{r['requests']:>10,}{r['rps']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['max_ms']:>9.2f}{r['failed']:>8}{r['rps'] / bare:>8.0%} "
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=int, default=4, help="seconds per scenario and round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every scenario (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each measurement")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--dev-bypass", action="store_true", help="run kroma without bearer auth")
    parser.add_argument("--log-level", default="info", help="both servers' uvicorn log level (default info)")
    parser.add_argument("--only", default="", help="comma-separated scenario names (bare always runs)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line, last")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server, os.environ.get("BENCH_LOG_LEVEL", "info"))
        return
    if args.load:
        load_main(*args.load)
        return

    chosen = [s for s in scenarios() if not args.only or s.name == "bare" or s.name in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="kroma-http-bench-") as tmp:
        bench = Bench(Path(tmp), args)
        loader = "wrk -t1" if bench.wrk else "python asyncio (own process)"
        print(
            f"python {platform.python_version()}, {os.cpu_count()} CPUs; load: {loader}, "
            f"{args.connections} connections, {args.warmup:g} s warm-up + {args.rounds} x {args.duration:g} s per scenario; "
            f"auth {'dev bypass' if args.dev_bypass else 'bearer token'}; "
            f"load average {os.getloadavg()[0]:.2f} at the start",
            flush=True,
        )
        load_start = os.getloadavg()[0]
        try:
            bench.start()
            bench.seed()
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
            warm: set[str] = set()
            for phase in ("read", "write"):  # reads first: the writes must not change what they read
                in_phase = [
                    s
                    for s in chosen
                    if s.base == "bare" or s.method == ("GET" if phase == "read" else "POST")
                ]
                if len(in_phase) < 2:
                    continue
                for round_ in range(args.rounds):  # interleaved: drift on a shared machine hits all alike
                    for s in in_phase:
                        if s.name not in warm and args.warmup > 0:
                            bench.run(s, args.warmup)
                            warm.add(s.name)
                        runs[s.name].append(bench.run(s, args.duration))
                    print(f"  {phase}s, round {round_ + 1} of {args.rounds}: done", flush=True)
            results = {name: merge(rounds) for name, rounds in runs.items()}
            server_5xx = bench.server_errors() if args.log_level in ("info", "debug", "trace") else None
            one_project = bench.style_guides_on("bench_01")
        finally:
            bench.stop()

    load_end = os.getloadavg()[0]
    print()
    print(table(results))
    print(f"\nload average (1 min) {load_start:.2f} at the start, {load_end:.2f} at the end")
    if server_5xx is not None:
        print(
            f"\n5xx answers in kroma's log: {server_5xx}; style guides on bench_01 after the run: {one_project:,}"
        )
    if args.json:
        bare = results["bare"]["rps"]
        summary: dict[str, Any] = {}
        for name, r in results.items():
            for key, value in r.items():
                summary[f"{name}.{key}"] = value
            if name != "bare":
                summary[f"{name}.ratio"] = round(r["rps"] / bare, 3)
        summary["server_5xx"] = server_5xx
        summary["load_start"], summary["load_end"] = round(load_start, 2), round(load_end, 2)
        print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
