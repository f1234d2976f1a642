"""Operator tools over the log and the read models: `kroma events verify|export|import` and
`kroma projections status|rebuild` (registered on the `events` and `projections` groups of
kroma.cli).

Every failure is one line on stderr and a non-zero exit, never a traceback: 1 when the answer is
"no" (a broken chain, a refused import), 2 when the data cannot be read at all.

They work on the store the settings choose: the data folder's SQLite files, or, when
`event_store_url` names a PostgreSQL server, the log's schema and the read models' schema there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import msgspec
from click.core import ParameterSource

from kroma.config import Settings, load_settings
from kroma.events import transfer, verification
from kroma.projections import pg_status
from kroma.projections.runner import pid_alive
from kroma.services import Services

T = TypeVar("T")

data_dir_option = click.option(
    "--data-dir", envvar="KROMA_DATA_DIR", default=None, help="Data folder (env KROMA_DATA_DIR)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable answer (JSON).")


def _fail(message: str, code: int) -> None:
    click.echo(f"kroma: {message}", err=True)
    sys.exit(code)


def _echo_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


def _postgres(settings: Settings) -> tuple[str, str] | None:
    """(url, schema) of the log when the settings put it on PostgreSQL; None for the SQLite file."""
    url = settings.event_store_url.strip()
    if not url:
        return None
    if not settings.on_postgres:
        scheme = url.split("://", 1)[0] + "://" if "://" in url else "(no scheme)"
        raise verification.LogUnreadable(f"event_store_url: unsupported store {scheme} (use postgresql://...)")
    return url, settings.event_store_schema


def _with_services(settings: Settings, fn: Callable[[Services], Awaitable[T]]) -> T:
    async def main() -> T:
        services = Services(settings)
        await services.open(follow=False, dispatch=False, engine=False)
        try:
            return await fn(services)
        finally:
            await services.close()

    return asyncio.run(main())


# -- events verify ----------------------------------------------------------------------------------


@click.command("verify")
@data_dir_option
@json_option
def verify(data_dir: str | None, as_json: bool) -> None:
    """Check the hash chain over the whole log: one line (or --json), exit 1 at the first bad
    position. Reads the file only, so a copy of a data folder can be checked too (on PostgreSQL:
    reads the log's schema, creating nothing)."""
    settings = load_settings(data_dir=data_dir)
    try:
        pg = _postgres(settings)
        verdict = verification.verify_path(settings.events_db) if pg is None else verification.verify_pg(*pg)
    except verification.LogUnreadable as exc:
        if as_json:
            _echo_json({"intact": False, "error": str(exc)})
        _fail(str(exc), 2)
        return
    if as_json:
        _echo_json(verdict)
    else:
        click.echo(verdict.line())
    if not verdict.intact:
        sys.exit(1)


# -- events export / import -------------------------------------------------------------------------


@click.command("export")
@data_dir_option
@click.option("--after", default=0, type=click.IntRange(min=0), help="Only events after this position.")
@click.option("--until", default=None, type=click.IntRange(min=0), help="Only events up to this position.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False), help="Write here, not stdout.")
def export_events(data_dir: str | None, after: int, until: int | None, out_path: str | None) -> None:
    """Write the log as JSON lines (one event a line, in order, with its stored bytes and hash)."""
    settings = load_settings(data_dir=data_dir)
    try:
        pg = _postgres(settings)

        def write(out: BinaryIO) -> int:
            if pg is None:
                return transfer.export(settings.events_db, out, after, until)
            return transfer.export_pg(*pg, out, after, until)

        if out_path:
            with open(out_path, "wb") as out:
                count = write(out)
        else:
            count = write(sys.stdout.buffer)
    except verification.LogUnreadable as exc:
        _fail(str(exc), 2)
    except sqlite3.Error as exc:
        _fail(f"cannot read the event log at {settings.events_db}: {exc}", 2)
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        _fail(f"cannot write {out_path or 'stdout'}: {exc.strerror or exc}", 2)
    else:
        click.echo(f"exported {count} events", err=True)


@click.command("import")
@data_dir_option
@click.argument("file", type=click.File("rb"))
def import_events(data_dir: str | None, file: BinaryIO) -> None:
    """Load an export into an empty data folder (on PostgreSQL: an empty log schema), checking the
    chain line by line (the first bad line refuses the file and nothing is written), then build the
    read models from it."""
    settings = load_settings(data_dir=data_dir)
    settings.ensure_data_dir()
    try:
        pg = _postgres(settings)
        if pg is None:
            count = transfer.import_lines(file, settings.events_db)
            verdict = verification.verify_path(settings.events_db)
        else:
            count = transfer.import_pg(file, *pg)
            verdict = verification.verify_pg(*pg)
    except transfer.ImportRefused as exc:
        _fail(f"import refused, nothing written: {exc}", 1)
        return
    except verification.LogUnreadable as exc:
        _fail(str(exc), 2)
        return
    if not verdict.intact:  # cannot happen after a checked import; said plainly if it ever does
        _fail(verdict.line(), 1)
    reached = _with_services(settings, lambda s: s.runner.rebuild())
    into = settings.events_db if pg is None else verification.pg_where(*pg)
    click.echo(
        f"imported {count} events into {into}; hash chain intact through position"
        f" {verdict.head}; read models built through position {reached}"
    )


# -- projections status -----------------------------------------------------------------------------


class ProjectionStatus(msgspec.Struct):
    name: str
    checkpoint: int
    lag: int
    rate: float | None  # events/s over the sample, None when not sampled
    last_error: dict[str, Any] | None


class RebuildStatus(msgspec.Struct):
    host: str
    pid: int
    phase: str
    position: int
    head: int
    rate: float | None


class Status(msgspec.Struct):
    head: int
    projections: list[ProjectionStatus]
    rebuild: RebuildStatus | None


def _read_only(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise verification.LogUnreadable(f"no read models at {path}")
    db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _sample(settings: Settings) -> tuple[float, int, dict[str, int], tuple | None]:
    """(time, log head, checkpoints, rebuild row) as the files (or the PostgreSQL schemas) show them now."""
    pg = _postgres(settings)
    if pg is not None:
        head, checkpoints, found = pg_status.sample(*pg, settings.readmodels_pg_schema)
        return time.monotonic(), head, checkpoints, found
    with contextlib.closing(verification.open_log(settings.events_db)) as log:
        head = log.execute("SELECT max(position) FROM events").fetchone()[0] or 0
    with contextlib.closing(_read_only(settings.readmodels_db)) as db:
        checkpoints = dict(db.execute("SELECT name, position FROM checkpoints").fetchall())
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = None
        if "projection_rebuild" in tables:
            row = db.execute("SELECT host, pid, phase, position, head FROM projection_rebuild").fetchone()
    return time.monotonic(), head, checkpoints, row


def _last_errors(settings: Settings) -> dict[str, dict[str, Any]]:
    pg = _postgres(settings)
    if pg is not None:
        return pg_status.last_errors(*pg, settings.readmodels_pg_schema)
    with contextlib.closing(_read_only(settings.readmodels_db)) as db:
        rows = db.execute("SELECT name, position, type, error FROM projection_failures ORDER BY position").fetchall()
    return {name: {"position": pos, "type": typ, "error": err} for name, pos, typ, err in rows}


def _status(settings: Settings, sample: float) -> Status:
    t0, _, first, row0 = _sample(settings)
    if sample > 0:
        time.sleep(sample)
    t1, head, checkpoints, row = _sample(settings)
    elapsed = max(t1 - t0, 1e-9)

    def rate(before: int | None, after: int) -> float | None:
        return None if sample <= 0 or before is None else round(max(0, after - before) / elapsed, 1)

    errors = _last_errors(settings)
    projections = [
        ProjectionStatus(name, pos, max(0, head - pos), rate(first.get(name), pos), errors.get(name))
        for name, pos in sorted(checkpoints.items())
    ]
    rebuild = None
    if row is not None and pid_alive(row[0], row[1]):
        before = row0[3] if row0 is not None and tuple(row0[:2]) == tuple(row[:2]) else None
        rebuild = RebuildStatus(row[0], row[1], row[2], row[3], row[4], rate(before, row[3]))
    return Status(head, projections, rebuild)


def _rate_text(rate: float | None) -> str:
    return "-" if not rate else f"{rate:,.0f} ev/s"


@click.command("status")
@data_dir_option
@json_option
@click.option(
    "--sample",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to watch the checkpoints move, for the rates (0: no rates).",
)
def status(data_dir: str | None, as_json: bool, sample: float) -> None:
    """Each projection's checkpoint, lag behind the log head, rate and last error; a rebuild in
    progress. Reads the files (or the PostgreSQL schemas) only, also while servers or a rebuild
    run on them."""
    settings = load_settings(data_dir=data_dir)
    try:
        found = _status(settings, sample)
    except (verification.LogUnreadable, sqlite3.Error) as exc:
        _fail(str(exc), 2)
        return
    if as_json:
        _echo_json(found)
        return
    click.echo(f"log head: {found.head}")
    click.echo(f"  {'projection':<24} {'checkpoint':>10}  {'lag':<14} {'rate':>12}  last error")
    for p in found.projections:
        lag = "up to date" if p.lag == 0 else f"{p.lag} behind"
        error = "-"
        if p.last_error is not None:
            e = p.last_error
            error = f"skipped event {e['position']} ({e['type']}): {e['error']}"
        click.echo(f"  {p.name:<24} {p.checkpoint:>10}  {lag:<14} {_rate_text(p.rate):>12}  {error}")
    if found.rebuild is not None:
        r = found.rebuild
        click.echo(
            f"rebuild in progress ({r.phase}, pid {r.pid} on {r.host}): position {r.position:,} of"
            f" {r.head:,} ({_rate_text(r.rate)})"
        )


# -- projections rebuild ----------------------------------------------------------------------------


def _progress_bar(head: int) -> Any:
    return click.progressbar(length=max(head, 1), label="rebuilding", file=sys.stderr)


@click.command("rebuild")
@data_dir_option
@click.argument("name", required=False)
@click.option(
    "--until",
    default=None,
    type=click.IntRange(min=0),
    help="Build the read models as they were right after this position, into a separate folder.",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --until: the folder to build into (else --data-dir names it and the log is the"
    " configured data folder's, KROMA_DATA_DIR).",
)
def rebuild(data_dir: str | None, name: str | None, until: int | None, out_dir: str | None) -> None:
    """Fold the read models (all, or NAME) again from position zero into a fresh file while the
    live ones keep answering, then swap them in. With --until POSITION, build them as of that
    position into another folder instead, leaving the live ones alone."""
    if until is not None:
        _rebuild_as_of(data_dir, until, out_dir, name)
        return
    if out_dir is not None:
        raise click.UsageError("--out goes with --until")
    settings = load_settings(data_dir=data_dir)

    async def run(s: Services) -> int:
        if name is not None:
            try:
                s.runner.by_name(name)
            except KeyError:
                known = ", ".join(p.name for p in s.runner.projections)
                raise click.ClickException(f"unknown projection {name!r} (known: {known})") from None
        head = await s.store.head()
        with _progress_bar(head) as bar:
            done = 0

            def progress(position: int, _head: int) -> None:
                nonlocal done
                bar.update(position - done)
                done = position

            return await s.runner.rebuild([name] if name else None, progress)

    from kroma.projections.rebuild import RebuildBusy

    try:
        position = _with_services(settings, run)
    except RebuildBusy as exc:
        _fail(str(exc), 1)
        return
    click.echo(f"rebuilt {name or 'all projections'} through position {position}")


def _rebuild_as_of(data_dir: str | None, until: int, out_dir: str | None, name: str | None) -> None:
    if name is not None:
        raise click.UsageError("--until builds every projection; leave out NAME")
    if out_dir is not None:
        source = load_settings(data_dir=data_dir)
        target = Path(out_dir)
    else:
        explicit = click.get_current_context().get_parameter_source("data_dir") == ParameterSource.COMMANDLINE
        source = load_settings()  # the configured (live) data folder
        target = Path(data_dir) if explicit and data_dir else Path(source.data_dir)
    if target.resolve() == source.data_path:
        raise click.UsageError(
            "--until builds into a separate folder: name it with --out DIR (or --data-dir DIR, with the"
            " live data folder from KROMA_DATA_DIR); the live read models are left alone"
        )
    target_db = target / "readmodels.db"
    if target_db.exists():
        _fail(f"{target_db} already exists: choose an empty folder", 1)
    if not Path(source.events_db).is_file():
        _fail(f"no event log at {source.events_db}", 2)

    async def run(s: Services) -> int:
        from kroma.projections.rebuild import build_as_of

        head = await s.store.head()
        if until > head:
            raise click.ClickException(f"position {until} is beyond the log head ({head})")
        target.mkdir(parents=True, exist_ok=True)  # once, before the fold
        with _progress_bar(until) as bar:
            done = 0

            def progress(position: int, _head: int) -> None:
                nonlocal done
                bar.update(position - done)
                done = position

            return await build_as_of(s.runner, str(target_db), until, progress)

    reached = _with_services(source, run)
    click.echo(f"built the read models as of position {reached} into {target_db}")
