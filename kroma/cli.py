"""The `kroma` console script: serve, read the event log, manage projections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec

from kroma import cli_log
from kroma.cli_pipeline import COMMANDS as PIPELINE_COMMANDS
from kroma.cli_storage import COMMANDS as STORAGE_COMMANDS
from kroma.config import Settings, load_settings
from kroma.services import Services

T = TypeVar("T")

data_dir_option = click.option(
    "--data-dir", envvar="KROMA_DATA_DIR", default=None, help="Data folder (env KROMA_DATA_DIR)."
)


def _settings(data_dir: str | None, **extra: Any) -> Settings:
    return load_settings(data_dir=data_dir, **extra)


def _with_services(settings: Settings, fn: Callable[[Services], Awaitable[T]], follow: bool = False) -> T:
    async def main() -> T:
        services = Services(settings)
        await services.open(follow=follow, dispatch=False, engine=False)  # only serve and worker dispatch
        try:
            return await fn(services)
        finally:
            await services.close()

    return asyncio.run(main())


def _print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


@click.group()
def main() -> None:
    """Kroma: project-first, event-sourced AI image production backend."""


@main.command()
@data_dir_option
@click.option("--bind", envvar="KROMA_BIND", default=None, help="HOST:PORT (env KROMA_BIND).")
@click.option("--demo", is_flag=True, help="On an empty log, first create a demo project (demo_comic).")
def serve(data_dir: str | None, bind: str | None, demo: bool) -> None:
    """Start the HTTP server (default 127.0.0.1:8788)."""
    import uvicorn

    from kroma.http.app import create_app

    settings = _settings(data_dir, bind=bind)
    settings.ensure_data_dir()
    if demo:
        from kroma.demo import seed_demo

        created = asyncio.run(seed_demo(settings))
        if created:
            click.echo(f"kroma: created the demo project 'demo_comic' ({len(created)} requests)")
    host, port = settings.host_port
    click.echo(f"kroma: data in {settings.data_path}, listening on http://{host}:{port} (docs at /docs)")
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=5,  # a backstop; streams end on `stopping` first
        )
    )
    handle_exit = server.handle_exit

    def stop(sig: int, frame: Any) -> None:
        app.state.services.stopping = True  # live SSE streams end instead of holding shutdown
        handle_exit(sig, frame)

    server.handle_exit = stop  # type: ignore[method-assign]
    _tune_gc_for_serving()
    server.run()


def _tune_gc_for_serving() -> None:
    """A long-running server: what is alive once the app is built (modules, routes, settings) is
    never garbage, so it leaves the collector's generations, and the youngest generation is
    collected every 50,000 allocations instead of 700. Fewer and shorter pauses: in bench/http.py
    the creates' p99 fell from about 100 ms to about 35 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # A write waits on the event writer's and the projection runner's threads in turn; with the
    # default 5 ms GIL slice each hand-over can wait a whole slice behind the busy event loop.
    sys.setswitchinterval(0.0005)


# -- worker ----------------------------------------------------------------------------------------


def _positive(kind: type) -> click.ParamType:
    return click.FloatRange(min=0) if kind is float else click.IntRange(min=0)


@main.command()
@data_dir_option
@click.option("--worker-id", default=None, help="This worker's name in the log (default worker-<hex>).")
@click.option(
    "--runs/--no-runs",
    default=True,
    help="Work queued runs: claim their jobs (beside `kroma serve`'s engine and other workers).",
)
@click.option("--agents/--no-agents", default=True, help="Deliver confirmed agent instructions.")
@click.option(
    "--run-lease-seconds",
    type=click.FloatRange(min=0.5),
    default=None,
    help="A job claim's lease; default 30 (env KROMA_RUN_LEASE_SECONDS).",
)
@click.option("--once", is_flag=True, help="Process at most one instruction, then exit (no runs).")
@click.option("--poll-interval-seconds", type=_positive(float), default=None, help="Default 2.0.")
@click.option("--max-locked-seconds", type=_positive(float), default=None, help="The lease; default 120.")
@click.option("--default-max-attempts", type=_positive(int), default=None, help="Default 3.")
@click.option("--retry-backoff-seconds", type=_positive(float), default=None, help="Default 10.")
@click.option("--dispatch-timeout", type=_positive(float), default=None, help="Per try; default 20.0.")
@click.option("--dispatch-retries", type=_positive(int), default=None, help="Extra tries; default 2.")
@click.option("--dispatch-backoff-seconds", type=_positive(float), default=None, help="Default 1.5.")
@click.option("--agent-api-url", default=None, help="Env KROMA_AGENT_API_URL or IAT_AGENT_API_URL.")
@click.option(
    "--agent-api-token", default=None, help="Env KROMA_AGENT_API_TOKEN or IAT_AGENT_API_TOKEN (prefer env)."
)
def worker(
    data_dir: str | None,
    worker_id: str | None,
    runs: bool,
    agents: bool,
    run_lease_seconds: float | None,
    once: bool,
    poll_interval_seconds: float | None,
    max_locked_seconds: float | None,
    default_max_attempts: int | None,
    retry_backoff_seconds: float | None,
    dispatch_timeout: float | None,
    dispatch_retries: int | None,
    dispatch_backoff_seconds: float | None,
    agent_api_url: str | None,
    agent_api_token: str | None,
) -> None:
    """Work queued runs and deliver confirmed agent instructions to the agent API, beside or instead
    of `kroma serve`'s own engine and dispatcher: run jobs and instructions are claimed with leases
    on the shared log, so each is done by one process. Prints {"ok", "worker_id", "processed"
    (instructions)} when it stops (Ctrl-C, SIGTERM); a job in progress is released for another."""
    import logging
    import signal

    from kroma.agents import Dispatcher, DispatchOptions

    if worker_id is not None and not worker_id.strip():
        raise click.UsageError("--worker-id must not be empty")
    if not runs and not agents:
        raise click.UsageError("nothing to do: --no-runs and --no-agents")
    runs = runs and not once
    settings = _settings(
        data_dir,
        run_engine=False,
        run_lease_seconds=run_lease_seconds,
        agent_dispatch=False,
        agent_poll_interval_seconds=poll_interval_seconds,
        agent_max_locked_seconds=max_locked_seconds,
        agent_default_max_attempts=default_max_attempts,
        agent_retry_backoff_seconds=retry_backoff_seconds,
        agent_dispatch_timeout_seconds=dispatch_timeout,
        agent_dispatch_retries=dispatch_retries,
        agent_dispatch_backoff_seconds=dispatch_backoff_seconds,
        agent_api_url=agent_api_url,
        agent_api_token=agent_api_token,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = DispatchOptions.from_settings(settings, worker_id)
    # one name for both in the log: the flag, else [runs] worker_id, else the dispatcher's
    engine_id = (worker_id or settings.run_worker_id).strip() or options.worker_id
    settings = msgspec.structs.replace(settings, run_worker_id=engine_id)

    async def work(services: Services) -> int:
        dispatcher = Dispatcher(services, options)
        stopped = asyncio.Event()

        def stop() -> None:
            stopped.set()
            dispatcher.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
                loop.add_signal_handler(sig, stop)
        if runs:
            services.engine.start()  # stopped (its claims released) when the services close
        if agents:
            return await dispatcher.run(once=once)
        await stopped.wait()
        return 0

    processed = _with_services(settings, work, follow=True)
    click.echo(msgspec.json.encode({"ok": True, "worker_id": options.worker_id, "processed": processed}).decode())


# -- events ----------------------------------------------------------------------------------------


@main.group()
def events() -> None:
    """Read the event log (the audit trail)."""


def _event_line(e: Any) -> str:
    return f"{e.position:>8}  {e.recorded_at}  {e.type:<32} {e.stream_id}"


@events.command("list")
@data_dir_option
@click.option("--after", default=0, show_default=True, help="Start after this position.")
@click.option("--limit", default=100, show_default=True)
@click.option("--type", "types", multiple=True, help="Only these event types (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON.")
def events_list(data_dir: str | None, after: int, limit: int, types: tuple[str, ...], as_json: bool) -> None:
    """List events after a position."""
    found = _with_services(_settings(data_dir), lambda s: s.store.read_all(after, limit, list(types) or None))
    if as_json:
        _print_json(found)
        return
    for event in found:
        click.echo(_event_line(event))


@events.command("show")
@data_dir_option
@click.argument("ref")
def events_show(data_dir: str | None, ref: str) -> None:
    """Show one event by position or event id."""

    async def find(s: Services) -> Any:
        if ref.isdigit():
            found = await s.store.read_positions([int(ref)])
            return found[0] if found else None
        return await s.store.read_event(ref)

    event = _with_services(_settings(data_dir), find)
    if event is None:
        raise click.ClickException(f"no event {ref}")
    _print_json(event)


@events.command("tail")
@data_dir_option
@click.option("--after", default=None, type=int, help="Start after this position (default: the head).")
def events_tail(data_dir: str | None, after: int | None) -> None:
    """Follow the log live (Ctrl-C to stop)."""

    async def tail(s: Services) -> None:
        start = after if after is not None else await s.store.head()
        async for page in s.store.follow(start):
            for event in page:
                click.echo(_event_line(event))

    with contextlib.suppress(KeyboardInterrupt):
        _with_services(_settings(data_dir), tail)


# -- projections -----------------------------------------------------------------------------------


@main.group()
def projections() -> None:
    """Inspect and rebuild read models."""


for _command in (cli_log.verify, cli_log.export_events, cli_log.import_events):
    events.add_command(_command)
for _command in (cli_log.status, cli_log.rebuild):
    projections.add_command(_command)


# -- tokens ----------------------------------------------------------------------------------------


@main.group()
def tokens() -> None:
    """API tokens (the plaintext is shown once, when it is created)."""


def _as_cli(fn: Callable[[Services], Awaitable[T]]) -> Callable[[Services], Awaitable[T]]:
    """Run a command as the operator at the console (no user, no token) and turn contract errors
    into a clean CLI error."""
    from kroma.domain.errors import KromaError
    from kroma.domain.handling import Actor, RequestContext, current_request

    async def run(s: Services) -> T:
        current_request.set(RequestContext(actor=Actor(principal="cli")))
        try:
            return await fn(s)
        except KromaError as exc:
            raise click.ClickException(exc.message) from None

    return run


@tokens.command("create")
@data_dir_option
@click.option("--label", default=None, help="A name for the token (up to 200 characters).")
@click.option("--project", "project_slug", default=None, help="Scope the token to one project (slug).")
@click.option("--expires-at", default=None, help="RFC 3339 time, or YYYY-MM-DD (23:59:59 UTC that day).")
def tokens_create(
    data_dir: str | None, label: str | None, project_slug: str | None, expires_at: str | None
) -> None:
    """Create a token for the `local` user; prints the token (only this once) on stdout."""
    from kroma import auth
    from kroma.domain.tokens import CreateToken

    cmd = CreateToken(label=label, project_slug=project_slug, expires_at=expires_at)
    created = _with_services(_settings(data_dir), _as_cli(lambda s: auth.create_token(s, cmd)), follow=True)
    click.echo(created["token"])
    scope = f", project {created['project_id']}" if created["project_id"] else ""
    click.echo(
        f"created token {created['id']} ({created['token_prefix']}...{scope}); it is not shown again",
        err=True,
    )


@tokens.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
def tokens_list(data_dir: str | None, as_json: bool) -> None:
    """Every token, newest first (never the token itself)."""
    from kroma import auth

    found = _with_services(_settings(data_dir), _as_cli(auth.list_tokens), follow=True)
    if as_json:
        _print_json(found)
        return
    for t in found:
        state = "active" if t["active"] else ("revoked" if t["revoked_at"] else "expired")
        click.echo(
            f"{t['id']}  {t['token_prefix']}  {state:<8} expires {t['expires_at'] or '-'}"
            f"  last used {t['last_used_at'] or '-'}  {t['label']}"
        )


@tokens.command("revoke")
@data_dir_option
@click.argument("token_id")
def tokens_revoke(data_dir: str | None, token_id: str) -> None:
    """Revoke a token (revoking twice is fine; the first time is kept)."""
    from kroma import auth

    _with_services(_settings(data_dir), _as_cli(lambda s: auth.revoke_token(s, token_id)), follow=True)
    click.echo(f"revoked token {token_id}")


for _command in (*PIPELINE_COMMANDS, *STORAGE_COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
