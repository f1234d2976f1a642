"""`kroma storage sync SLUG` and `kroma export SLUG`: the S3 sync and export packages, run on the
data folder directly (also while a server runs on it), as the operator at the console.

Both print a one-line summary (or `--json`, the HTTP answer's body) and exit 1 with the error's
message on stderr on failure. The sync shows a progress bar of bytes sent on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec

from kroma.config import load_settings
from kroma.domain.errors import KromaError
from kroma.domain.exports import ExportBody, validate_export
from kroma.domain.handling import Actor, RequestContext, current_request
from kroma.services import Services

T = TypeVar("T")

data_dir_option = click.option(
    "--data-dir", envvar="KROMA_DATA_DIR", default=None, help="Data folder (env KROMA_DATA_DIR)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")


def _run(data_dir: str | None, fn: Callable[[Services, str], Awaitable[T]], slug: str) -> T:
    """Open the services (read models following the log, no run engine), find the project, run."""
    settings = load_settings(data_dir=data_dir, run_engine=False)

    async def main() -> T:
        services = Services(settings)
        await services.open(follow=True, dispatch=False, engine=False)
        current_request.set(RequestContext(actor=Actor(principal="cli")))
        try:
            project_id = await services.commands.project_id_for_slug(slug)
            if project_id is None:
                raise click.ClickException("Project not found")
            return await fn(services, project_id)
        except KromaError as exc:
            raise click.ClickException(_message(exc)) from None
        finally:
            await services.close()

    return asyncio.run(main())


def _message(exc: KromaError) -> str:
    result = getattr(exc, "result", None)
    if result is not None and result.uploaded:
        return f"{exc.message} ({result.uploaded} file(s) uploaded before the failure are recorded)"
    return exc.message


def _echo_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


class _Bar:
    """A bytes progress bar on stderr, made once the sync knows how much it will send."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, kind: str, amount: int) -> None:
        if not self.enabled:
            return
        if kind == "planned" and amount > 0:
            self.bar = click.progressbar(length=amount, label="uploading", file=sys.stderr)
            self.bar.__enter__()
        elif kind == "bytes" and self.bar is not None:
            self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group()
def storage() -> None:
    """A project's storage: S3 sync."""


@storage.command("sync")
@data_dir_option
@click.argument("slug")
@click.option("--dry-run", is_flag=True, help="List what would be sent; record nothing.")
@json_option
def storage_sync(data_dir: str | None, slug: str, dry_run: bool, as_json: bool) -> None:
    """Send the project's new and changed files to s3://{bucket}/{prefix}/{project id}/."""
    from kroma.storage.sync import sync_project

    bar = _Bar(enabled=not as_json)

    async def work(services: Services, project_id: str) -> Any:
        try:
            return await sync_project(services, project_id, dry_run=dry_run, trigger="cli", progress=bar)
        finally:
            bar.close()

    result = _run(data_dir, work, slug)
    if as_json:
        body = {"ok": True, "sync": result.view(), **({"audit_id": result.audit_id} if result.audit_id else {})}
        _echo_json(body)
        return
    if dry_run:
        for item in result.files:
            click.echo(f"(dry run) upload {item['path']} -> {item['key']} ({item['size']} bytes, {item['reason']})")
        verb = "would send"
    else:
        verb = "sent"
    click.echo(
        f"{verb} {result.uploaded} file(s), {result.bytes} bytes, to {result.destination};"
        f" {result.skipped} already in sync"
    )


@click.command("export")
@data_dir_option
@click.argument("slug")
@click.option("--include", type=click.Choice(["winners", "all"]), default="winners", show_default=True)
@click.option("--run", "run_id", default=None, help="Only this run (default: every run of the project).")
@click.option("--s3", "upload_s3", is_flag=True, help="Also upload the package to the project's S3 destination.")
@json_option
def export_command(
    data_dir: str | None, slug: str, include: str, run_id: str | None, upload_s3: bool, as_json: bool
) -> None:
    """Write a .tar.gz package of the project's winners (or every candidate), with a manifest, the
    settings export and each run's contact sheet, under <project root>/exports/."""
    from kroma.exports import create_export

    request = validate_export(ExportBody(include=include, run_id=run_id, upload_s3=upload_s3))

    async def work(services: Services, project_id: str) -> Any:
        return await create_export(services, project_id, request, trigger="cli")

    made = _run(data_dir, work, slug)
    if as_json:
        extra = {"sync": made.sync.view()} if made.sync is not None else {}
        _echo_json({"ok": True, "export": made.export, "audit_id": made.audit_id, **extra})
        return
    export = made.export
    click.echo(f"{made.path}")
    click.echo(
        f"export {export['id']}: {export['file_size_bytes']} bytes, sha256 {export['checksum_sha256']}",
        err=True,
    )
    if made.sync is not None:
        click.echo(f"uploaded to {made.sync.destination}", err=True)


COMMANDS = (storage, export_command)
