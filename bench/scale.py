"""How far each setup scales, measured in one run on this machine: SQLite with one server, PostgreSQL
with one server, PostgreSQL with two servers on one database, and a run worked by one server alone
or by a server and a `kroma worker`.

HTTP setups (each `kroma serve` under uvicorn on 127.0.0.1, bearer auth on, 20 projects seeded):

  sqlite_1      one server on a fresh SQLite data folder
  postgres_1    one server on PostgreSQL (fresh schemas, dropped afterwards)
  postgres_2    two servers on one PostgreSQL database (one schema set): a wrk process against each
                at once, half the connections each; their requests/s are summed

and in each of them two routes, each a --warmup (1 s) then --duration (5 s) of wrk at --connections
(32) keep-alive connections. The CPU time the servers used over it is reported as % of one core
(`server_cpu_pct`), and so is that of every `postgres` process on the machine (`postgres_cpu_pct`,
other clients of the same PostgreSQL server included) when the database runs here:

  read          GET  /api/projects/bench_NN            round-robin over the 20 projects
  write         POST /api/projects/bench_NN/style-guides, every name new, round-robin over them

Run workload (PostgreSQL, fresh schemas each; --no-runs skips it): --jobs (12) scenes x --candidates
(6) at --size (768x1152) on the offline `local` provider, triggered asynchronously and polled until finished; wall time
from the trigger to the finished run, with the server's engine alone (`run_server`) and with a
`kroma worker --no-agents` beside it (`run_server_worker`), both at the default limits.

On a 2-core machine the servers, the workers, PostgreSQL and wrk all share the same two CPUs: a
second process shows the overhead and the ceiling of the shared database, not what a second machine
would add. The 1-minute load average is printed before and after.

Usage: .venv/bin/python bench/scale.py [--duration S] [--warmup S] [--connections N]
                                       [--postgres-url URL] [--only sqlite_1,postgres_1,...]
                                       [--no-runs] [--jobs N] [--candidates K] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# bench/http.py would shadow the standard library's `http` (httpx and uvicorn need it): this folder
# leaves sys.path, the repository root comes first, and bench/http.py is imported as `bench.http`.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.http import WRK_SCRIPT, free_port, merge  # noqa: E402

PROJECTS = 20
SLUGS = [f"bench_{i:02d}" for i in range(1, PROJECTS + 1)]
DEFAULT_POSTGRES_URL = os.environ.get("KROMA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SETUPS = ("sqlite_1", "postgres_1", "postgres_2")
ROUTES = {
    "read": ("GET", [f"/api/projects/{s}" for s in SLUGS], "none"),
    "write": ("POST", [f"/api/projects/{s}/style-guides" for s in SLUGS], "style_guide"),
}


# -- processes ---------------------------------------------------------------------------------------


class Proc:
    """A `kroma serve` or `kroma worker` child; its output goes to a log file in the temp folder."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.log.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(data: Path, env: dict[str, str], name: str) -> tuple[Proc, str]:
    port = free_port()
    env = {**env, "KROMA_DATA_DIR": str(data), "KROMA_BIND": f"127.0.0.1:{port}"}
    server = Proc([sys.executable, "-m", "kroma.cli", "serve"], env, data.parent, data.parent / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        server.alive()
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"{url} did not start; see {server.log}")
        time.sleep(0.05)


def start_worker(data: Path, env: dict[str, str], worker_id: str) -> Proc:
    argv = [sys.executable, "-m", "kroma.cli", "worker", "--data-dir", str(data)]
    argv += ["--worker-id", worker_id, "--no-agents"]
    worker = Proc(argv, {**env, "KROMA_LOG_LEVEL": "info"}, data.parent, data.parent / f"{worker_id}.log")
    deadline = time.monotonic() + 60
    while "run engine" not in worker.log.read_text(errors="replace"):
        worker.alive()
        if time.monotonic() > deadline:
            worker.stop()
            raise SystemExit(f"the worker did not start; see {worker.log}")
        time.sleep(0.05)
    return worker


def cpu_seconds(procs: list[Proc]) -> float | None:
    """User + system CPU seconds the processes used so far (Linux /proc; None elsewhere)."""
    total = 0.0
    try:
        for p in procs:
            fields = Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU seconds used so far by every `postgres` process on this machine (other clients' too;
    a backend that exits in between drops out): the database's share when it runs here."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[-1] == "postgres":
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else None


def server_5xx(log: Path) -> int:
    """5xx answers in a server's access log (uvicorn at log level info)."""
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if '" 5' in line and "HTTP/1.1" in line)


# -- PostgreSQL schemas ------------------------------------------------------------------------------


def postgres_env(url: str, schema: str) -> dict[str, str]:
    from kroma.crypto import encode_key

    return {
        "KROMA_EVENT_STORE_URL": url,
        "KROMA_EVENT_STORE_SCHEMA": schema,  # read models in <schema>_rm, data keys in <schema>_keys
        "KROMA_MASTER_KEY": encode_key(os.urandom(32)),  # every process of a setup gets the same key
    }


def drop_schemas(url: str, name: str) -> None:
    """Drop schema `name` and every `<name>_...` (as tests/events/postgres_server.py does)."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (name, f"{name}\\_%"),
        ).fetchall()
        for (schema,) in rows:
            db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_server_info(url: str) -> str:
    with psycopg.connect(url) as db:
        version = db.execute("SHOW server_version").fetchone()
        sync = db.execute("SHOW synchronous_commit").fetchone()
        fsync = db.execute("SHOW fsync").fetchone()
    return (
        f"PostgreSQL {version[0].split()[0] if version else '?'}, "
        f"synchronous_commit={sync[0] if sync else '?'}, fsync={fsync[0] if fsync else '?'}"
    )


# -- load --------------------------------------------------------------------------------------------


def wrk_argv(
    wrk: str, script: Path, url: str, route: str, token: str, connections: int, seconds: int
) -> list[str]:
    method, paths, body = ROUTES[route]
    return [
        wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url,
        "--", method, body, uuid.uuid4().hex[:8], token, *paths,
    ]  # fmt: skip


def load(
    wrk: str, script: Path, urls: list[str], route: str, token: str, connections: int, seconds: int
) -> dict[str, Any]:
    """wrk against every url at once, the connections split between them; one combined result."""
    each = max(1, connections // len(urls))
    procs = [
        subprocess.Popen(
            wrk_argv(wrk, script, url, route, token, each, seconds), stdout=subprocess.PIPE, text=True
        )
        for url in urls
    ]
    runs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"wrk failed ({p.returncode}): {out}")
        line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
        runs.append(json.loads(line.removeprefix("WRKJSON ")))
    requests = sum(r["requests"] for r in runs)
    combined = {  # concurrent runs: requests summed over the longest one's time
        "requests": requests,
        "duration_us": max(r["duration_us"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "p50_us": sum(r["p50_us"] * r["requests"] for r in runs) / max(requests, 1),
        "p99_us": max(r["p99_us"] for r in runs),
        "max_us": max(r["max_us"] for r in runs),
    }
    result = merge([combined])
    result["per_server_rps"] = [round(r["requests"] / (r["duration_us"] / 1e6), 1) for r in runs]
    return result


def seed(url: str, dev_bypass: bool) -> str:
    """The bearer token (first-token bootstrap) and the 20 projects; the token ("" with dev bypass)."""
    with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as http:
        token = ""
        if not dev_bypass:
            token = http.post("/auth/token", json={"label": "bench"}).json()["auth_token"]["token"]
            http.headers["authorization"] = f"Bearer {token}"
        for i in range(1, PROJECTS + 1):
            r = http.post("/api/projects", json={"name": f"Bench {i:02d}", "description": "bench"})
            assert r.status_code == 200, r.text
    return token


def caught_up(url: str, token: str, timeout: float = 30) -> None:
    """Wait until a second server reads the token and the last project (its read models caught up)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/api/projects/{SLUGS[-1]}", headers=headers, timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never caught up with the seeded projects")
        time.sleep(0.05)


def http_setup(name: str, tmp: Path, args: argparse.Namespace, wrk: str, script: Path) -> dict[str, Any]:
    folder = tmp / name
    data = folder / "data"
    data.mkdir(parents=True)
    env = {
        "KROMA_LOG_LEVEL": "info",
        "KROMA_API_AUTH_DEV_BYPASS": "1" if args.dev_bypass else "0",
    }
    schema = ""
    if name.startswith("postgres"):
        schema = f"kroma_bench_{uuid.uuid4().hex[:12]}"
        env.update(postgres_env(args.postgres_url, schema))
    count = 2 if name == "postgres_2" else 1
    servers: list[Proc] = []
    results: dict[str, Any] = {}
    try:
        urls = []
        for i in range(count):  # one data folder: machines mounting the same storage would share it
            server, url = start_server(data, env, f"server-{i + 1}")
            servers.append(server)
            urls.append(url)
        token = seed(urls[0], args.dev_bypass)
        for url in urls[1:]:
            caught_up(url, token)
        for route in ROUTES:  # the read first: the writes must not change what it reads
            if args.warmup > 0:
                load(wrk, script, urls, route, token, args.connections, args.warmup)
            cpu_before, pg_before = cpu_seconds(servers), postgres_cpu_seconds()
            wall_before = time.perf_counter()
            results[route] = load(wrk, script, urls, route, token, args.connections, args.duration)
            cpu_after, pg_after = cpu_seconds(servers), postgres_cpu_seconds()
            wall = time.perf_counter() - wall_before
            if cpu_before is not None and cpu_after is not None:  # % of one core, all servers together
                results[route]["server_cpu_pct"] = round((cpu_after - cpu_before) / wall * 100)
            if schema and pg_before is not None and pg_after is not None:
                results[route]["postgres_cpu_pct"] = round((pg_after - pg_before) / wall * 100)
            print(f"  {name} {route}: {results[route]['rps']:,.0f} req/s", flush=True)
    finally:
        for server in servers:
            server.stop()
        if schema:
            drop_schemas(args.postgres_url, schema)
    results["server_5xx"] = sum(server_5xx(s.log) for s in servers)
    return results


# -- the run workload --------------------------------------------------------------------------------


def run_setup(name: str, tmp: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    from kroma.imaging.sketch import street_scene

    folder = tmp / name
    data = folder / "data"
    data.mkdir(parents=True)
    schema = f"kroma_bench_{uuid.uuid4().hex[:12]}"
    env = {
        "KROMA_LOG_LEVEL": "info",
        "KROMA_API_AUTH_DEV_BYPASS": "1",
        "KROMA_RUN_WORKER_ID": "serve",
        **postgres_env(args.postgres_url, schema),
    }
    width, height = (int(v) for v in args.size.split("x"))
    size = (width, height)
    procs: list[Proc] = []
    try:
        server, url = start_server(data, env, "server")
        procs.append(server)
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/api/projects", json={"name": "Runs", "slug": "runs"}).status_code == 200
            files = [
                ("file", (f"scene_{i:02d}.png", street_scene(size, i), "image/png")) for i in range(args.jobs)
            ]
            uploaded = http.post("/api/projects/runs/assets", files=files)
            assert uploaded.status_code == 200, uploaded.text
            refs = [a["rel_path"] for a in uploaded.json()["assets"]]
            for i in range(workers):
                procs.append(start_worker(data, env, f"w-{i + 1}"))
            body = {
                "mode": "run", "confirm_spend": True, "scene_refs": refs,
                "candidates": args.candidates, "provider": "local",
            }  # fmt: skip
            started = time.perf_counter()
            accepted = http.post(
                "/api/projects/runs/runs/trigger", json=body, headers={"Prefer": "respond-async"}
            )
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["run_id"]
            deadline = time.monotonic() + args.run_timeout
            while True:
                run = http.get(f"/api/projects/runs/runs/{run_id}").json()["run"]
                if run["status"] not in ("queued", "running", "canceling"):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: the run did not finish within {args.run_timeout} s")
                time.sleep(0.05)
            wall = time.perf_counter() - started
            claims = http.get("/api/events", params={"type": "job.claimed", "limit": 1000}).json()["events"]
        by_worker: dict[str, int] = {}
        for e in claims:
            if e["data"].get("run_id") == run_id:
                by_worker[e["data"]["worker_id"]] = by_worker.get(e["data"]["worker_id"], 0) + 1
    finally:
        for p in procs:
            p.stop()
        drop_schemas(args.postgres_url, schema)
    images = args.jobs * args.candidates
    result = {
        "status": run["status"],
        "images": images,
        "wall_s": round(wall, 2),
        "images_per_s": round(images / wall, 2),
        "jobs_by_worker": dict(sorted(by_worker.items())),
    }
    print(f"  {name}: {result['wall_s']} s, {result['status']}, jobs {result['jobs_by_worker']}", flush=True)
    return result


# -- the parent --------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'setup':<12}{'route':<7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}{'srv CPU':>9}{'pg CPU':>8}  per server req/s",
        "-" * 92,
    ]
    for setup in SETUPS:
        if setup not in results:
            continue
        for route in ROUTES:
            r = results[setup][route]
            cpu = f"{r['server_cpu_pct']} %" if "server_cpu_pct" in r else "-"
            pg = f"{r['postgres_cpu_pct']} %" if "postgres_cpu_pct" in r else "-"
            per = " + ".join(f"{v:,.0f}" for v in r["per_server_rps"]) if len(r["per_server_rps"]) > 1 else ""
            lines.append(
                f"{setup:<12}{route:<7}{r['rps']:>9,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['failed']:>8}"
                f"{cpu:>9}{pg:>8}  {per}"
            )
    for name in ("run_server", "run_server_worker"):
        if name in results:
            r = results[name]
            lines.append(
                f"{name:<19}{r['wall_s']:>9.2f} s wall, {r['images']} images, {r['images_per_s']:.2f}/s, "
                f"{r['status']}, jobs by engine {r['jobs_by_worker']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds of measured load per route (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of load before each measurement (default 1)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections in all (default 32)"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--only", default="", help=f"comma-separated setups among {', '.join(SETUPS)}, runs")
    parser.add_argument("--no-runs", action="store_true", help="skip the run workload")
    parser.add_argument(
        "--jobs", type=int, default=12, help="run workload: scenes (jobs) in the run (default 12)"
    )
    parser.add_argument(
        "--candidates", type=int, default=6, help="run workload: candidates per job (default 6, the most)"
    )
    parser.add_argument(
        "--size", default="768x1152", help="run workload: scene size, rendered at it (default 768x1152)"
    )
    parser.add_argument("--run-timeout", type=float, default=300)
    parser.add_argument("--dev-bypass", action="store_true", help="run the servers without bearer auth")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line, last")
    args = parser.parse_args()

    only = set(filter(None, args.only.split(",")))
    setups = [s for s in SETUPS if not only or s in only]
    runs = not args.no_runs and (not only or "runs" in only)
    wrk = shutil.which("wrk")
    if setups and not wrk:
        raise SystemExit("wrk is not on the PATH (apt-get install wrk)")
    pg_info = ""
    if runs or any(s.startswith("postgres") for s in setups):
        try:
            pg_info = postgres_server_info(args.postgres_url)
        except psycopg.OperationalError as exc:
            raise SystemExit(f"no PostgreSQL server answers at {args.postgres_url}: {exc}") from exc

    load_start = os.getloadavg()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; wrk -t1, {args.connections} connections "
        f"in all, {args.warmup} s warm-up + {args.duration} s per route; auth "
        f"{'dev bypass' if args.dev_bypass else 'bearer token'}; {pg_info or 'no PostgreSQL'}; "
        f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start",
        flush=True,
    )
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kroma-scale-bench-") as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT)
        for setup in setups:
            assert wrk is not None
            results[setup] = http_setup(setup, tmp, args, wrk, script)
        if runs:
            results["run_server"] = run_setup("run_server", tmp, args, workers=0)
            results["run_server_worker"] = run_setup("run_server_worker", tmp, args, workers=1)
    load_end = os.getloadavg()

    print()
    print(table(results))
    if setups:
        five = {s: results[s]["server_5xx"] for s in setups}
        print(f"\n5xx answers in the servers' logs: {five}")
    print(
        f"load average (1/5/15 min) {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end; {time.perf_counter() - started:.0f} s in all"
    )
    if args.json:
        results["cpus"] = os.cpu_count()
        results["postgres"] = pg_info
        results["load_start"] = [round(v, 2) for v in load_start]
        results["load_end"] = [round(v, 2) for v in load_end]
        print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    main()
