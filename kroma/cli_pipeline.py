"""The pipeline's utility commands (pipeline spec §10.4) and a client that triggers and watches runs.

The file commands run the engine's own code on files: the providers for `generate-one`, the
post-process adapters of `kroma.engine.passes` for `upscale` / `color` / `bgremove`, the output
guard of `kroma.imaging.qa` for `qa`, `kroma.engine.files` for archiving and
`kroma.engine.config_validation` for `validate-pipeline-config`. The current folder plays the app
root: paths may be relative to it or absolute, and are shown relative to it when they lie under it.

`kroma runs trigger` / `kroma runs watch` talk to a running server: trigger a run, then follow the
run's Server-Sent Events with a progress bar per job (one plain line per event when stdout is not
a terminal).

Every failure is one line on stderr and exit status 1 (never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import click
import httpx
import msgspec

from kroma.engine import config_validation, files, passes, planning
from kroma.engine.paths import display_path, is_image_name, is_within, list_images
from kroma.engine.providers.base import GenerationRequest, GenerationResult, Provider, ProviderError
from kroma.engine.providers.local import LocalProvider
from kroma.engine.providers.openai import OpenAIProvider
from kroma.engine.providers.select import MISSING_KEY, environment
from kroma.imaging import encode as encode_image
from kroma.imaging import provenance, qa

DEFAULT_URL = "http://127.0.0.1:8788"


class Failure(click.ClickException):
    """A command failed: its message alone on stderr (the reference's wording, no prefix), exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, err=True)


# -- shared helpers -----------------------------------------------------------------------------


def _root() -> Path:
    """The app root of a utility command: the current folder."""
    return Path.cwd()


def _path(value: str) -> Path:
    """A path given on the command line: absolute as is, relative to the current folder."""
    given = Path(os.path.expanduser(value.strip()))
    return Path(os.path.normpath(given if given.is_absolute() else _root() / given))


def _shown(path: Path) -> str:
    """How a path is reported: relative to the current folder when under it, else absolute."""
    return "." if path == _root() else display_path(path, _root())


def _print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _project_root(project_root: str | None, project_slug: str | None) -> Path | None:
    """`--project-root` as given, else `<app root>/var/projects/<slug>` (§4.1), else None."""
    if project_root and project_root.strip():
        return _path(project_root)
    if project_slug is not None:
        return _root() / "var" / "projects" / _slug(project_slug)
    return None


def _slug(value: str) -> str:
    try:
        return planning.check_slug(value)
    except ValueError as exc:
        raise Failure(str(exc)) from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
project_root_option = click.option(
    "--project-root",
    default=None,
    help="Project folder: archive/replaced/ and archive/bad/ live under it.",
)
project_slug_option = click.option(
    "--project-slug", default=None, help="Project slug; the project root defaults to var/projects/<slug>."
)


# -- generate-one ---------------------------------------------------------------------------------


def read_input_images(value: str) -> list[str]:
    """The paths listed in an `--input-images-file` (a JSON array of strings; blanks dropped)."""
    path = _path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Failure(f"generate-one input-images file not found: {value}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"generate-one input-images file could not be read: {value}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, list) or not all(isinstance(item, str) for item in document):
        raise Failure("generate-one --input-images-file must contain a JSON array of paths")
    listed = [item.strip() for item in document if item.strip()]
    if not listed:
        raise Failure("generate-one --input-images-file contains no image paths")
    return listed


def _provider(code: str | None, env: dict[str, str]) -> Provider:
    """`--provider`, else `openai` when a key is set (environment, then `.env`), else `local`."""
    key = env.get("OPENAI_API_KEY", "").strip()
    chosen = code or ("openai" if key else "local")
    if chosen == "local":
        return LocalProvider()
    if not key:
        raise Failure(MISSING_KEY)
    base_url = env.get("OPENAI_BASE_URL", "").strip() or None
    return OpenAIProvider(key, base_url=base_url, environ=env)


async def _generate(provider: Provider, request: GenerationRequest) -> GenerationResult:
    try:
        return await provider.generate(request)
    finally:
        await provider.aclose()


@click.command("generate-one")
@click.option("--project-slug", required=True, help="Project slug (the pipeline's slug rule).")
@click.option("--prompt", required=True, help="The prompt.")
@click.option(
    "--input-images-file",
    required=True,
    help="JSON array of image paths: the scene first, then style references.",
)
@click.option("--output", required=True, help="The image file to write (an existing one is archived).")
@click.option("--project-root", default=None, help="Project folder (default var/projects/<slug>).")
@click.option("--model", default=None, help="Model (openai: default env OPENAI_IMAGE_MODEL, gpt-image-1).")
@click.option("--size", default=None, help="WIDTHxHEIGHT (openai default 1024x1536; local: the scene's).")
@click.option("--quality", default=None, help="Quality (openai: default env OPENAI_IMAGE_QUALITY, high).")
@click.option(
    "--provider",
    type=click.Choice(["local", "openai"]),
    default=None,
    help="Default: openai when OPENAI_API_KEY is set (environment or .env), else local.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (the local provider uses it).")
@json_option
def generate_one(
    project_slug: str,
    prompt: str,
    input_images_file: str,
    output: str,
    project_root: str | None,
    model: str | None,
    size: str | None,
    quality: str | None,
    provider: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Generate one image from a prompt and input images (§4.4)."""
    slug = _slug(project_slug)
    listed = read_input_images(input_images_file)
    inputs = [_path(item) for item in listed]
    for item, path in zip(listed, inputs, strict=True):
        if not path.is_file():
            raise Failure(f"generate-one input image not found: {item}")
    root = _project_root(project_root, slug)
    assert root is not None
    target = _path(output)
    env = environment(_root(), dict(os.environ))
    chosen = _provider(provider, env)
    request = GenerationRequest(
        prompt=prompt,
        input_images=tuple(str(path) for path in inputs),
        seed=seed,
        model=model,
        size=size,
        quality=quality,
    )
    try:
        result = anyio.run(_generate, chosen, request)
    except ProviderError as exc:
        raise Failure(exc.message) from None
    image = result.image
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        fields = {
            "prompt": prompt,
            "provider": result.provider,
            "model": result.model,
            "size": result.size,
            "quality": result.quality,
            "seed": str(seed),
            "parameters": msgspec.json.encode(result.parameters, order="sorted").decode(),
        }
        with contextlib.suppress(ValueError):
            image = provenance.with_provenance(image, fields)
    try:
        files.write_new(target, image, root)
    except OSError as exc:
        raise Failure(f"generate-one could not write {output}: {exc.strerror or exc}") from None
    answer = {
        "ok": True,
        "project_slug": slug,
        "output": _shown(target),
        "input_images": [_shown(path) for path in inputs],
        "provider": result.provider,
        "model": result.model,
        "size": result.size,
        "quality": result.quality,
        "seed": seed,
        "request_id": result.request_id,
    }
    if as_json:
        _print_json(answer)
    else:
        click.echo(
            f"Generated {answer['output']} with {result.provider} "
            f"(model {result.model}, size {result.size}, quality {result.quality})"
        )


# -- upscale, color, bgremove: the engine's pass adapters on files ---------------------------------

PASS_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}


def _looks_like_file(output: str, path: Path) -> bool:
    """§5.3: an output with an image extension, not ending with `/`, not an existing folder."""
    return is_image_name(output.strip()) and not output.strip().endswith(("/", os.sep)) and not path.is_dir()


def pass_targets(source: Path, output: str, fmt: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs (§5.3, §5.5): a file to the output file as given, or into the output
    folder as `{sanitized stem}.{fmt}`; a folder's images (recursive) mirrored under the output
    folder with the extension replaced by `fmt`."""
    out = _path(output)
    if source.is_file():
        if _looks_like_file(output, out):
            return [(source, out)]
        return [(source, out / f"{files.sanitize_name(source.stem) or 'image'}.{fmt}")]
    return [
        (image, (out / image.relative_to(source)).with_suffix(f".{fmt}"))
        for image in list_images(source)
        if not is_within(image, out)  # never the outputs of an earlier run into the same folder
    ]


def _format_of(target: Path, default: str) -> str:
    return PASS_FORMATS.get(target.suffix.lower().lstrip("."), default)


@dataclass
class PassJob:
    """One pass over the command's files."""

    name: str  # bg_remove | upscale | color
    input_label: str  # as messages name the input: `upscale`, `color-correction`, `background-remove`
    none_found: str
    default_format: str


def _prepare(job: PassJob, input_path: str, output: str) -> tuple[Path, list[tuple[Path, Path]]]:
    source = _path(input_path)
    if not source.exists():
        raise Failure(f"{job.input_label} input does not exist: {_shown(source)}")
    try:
        pairs = pass_targets(source, output, job.default_format)
    except OSError as exc:
        raise Failure(f"{job.input_label} could not list {_shown(source)}: {exc.strerror or exc}") from None
    if not pairs:
        raise Failure(job.none_found)
    return source, pairs


def _archive_root(project_root: str | None, project_slug: str | None, output: str) -> Path:
    """Where a replaced output is archived (`archive/replaced/`): the project root when given, else
    the folder the outputs go to."""
    root = _project_root(project_root, project_slug)
    if root is not None:
        return root
    out = _path(output)
    return out.parent if _looks_like_file(output, out) else out


def _store(name: str, source: Path, target: Path, image: bytes, archive_root: Path) -> None:
    """Write a pass output as the engine does: provenance on a PNG, a replaced file archived."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        with contextlib.suppress(ValueError):
            image = provenance.with_provenance(image, {"pass": name, "derived_from": _shown(source)})
    try:
        files.write_new(target, image, archive_root)
    except OSError as exc:
        raise Failure(f"could not write {_shown(target)}: {exc.strerror or exc}") from None


Work = Callable[[passes.PassEnv, passes.AdapterConfig, Path, Path, bytes], Awaitable[tuple[bytes, dict[str, Any]]]]


def run_pass(job: PassJob, pairs: list[tuple[Path, Path]], archive_root: Path, work: Work) -> list[dict[str, Any]]:
    """Run the adapter on every (input, output) pair (adapter defaults: no postprocess config) and
    write each output; the adapters' records in order."""

    async def main() -> list[dict[str, Any]]:
        cfg = passes.adapter_config(None)
        records: list[dict[str, Any]] = []
        async with await passes.PassEnv.create(_root(), dict(os.environ)) as env:
            for source, target in pairs:
                try:
                    data = await anyio.Path(source).read_bytes()
                except OSError as exc:
                    raise Failure(f"{job.input_label} could not read {_shown(source)}: {exc.strerror or exc}") from None
                try:
                    image, record = await work(env, cfg, source, target, data)
                except passes.PassError as exc:
                    raise Failure(exc.message) from None
                await anyio.to_thread.run_sync(_store, job.name, source, target, image, archive_root)
                records.append(record)
        return records

    return anyio.run(main)


def _pass_answer(as_json: bool, answer: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        _print_json(answer)
        return
    for line in lines:
        click.echo(line)


@click.command("upscale")
@click.option("--input", "input_path", required=True, help="An image file or a folder (recursive).")
@click.option("--output", required=True, help="The output file, or a folder.")
@click.option(
    "--upscale-backend",
    default=None,
    help="builtin | ncnn | python (default: the installed Real-ESRGAN, else builtin).",
)
@click.option("--upscale-scale", type=click.IntRange(1, 255), default=None, help="Scale 1-255 (default 2).")
@project_root_option
@project_slug_option
@json_option
def upscale_command(
    input_path: str,
    output: str,
    upscale_backend: str | None,
    upscale_scale: int | None,
    project_root: str | None,
    project_slug: str | None,
    as_json: bool,
) -> None:
    """Upscale images (§5.4); the output format follows the output's extension (default png)."""
    defaults = passes.adapter_config(None)
    job = PassJob("upscale", "upscale", "No image files found for upscale", defaults.upscale_format)
    source, pairs = _prepare(job, input_path, output)
    backend = upscale_backend or defaults.upscale_backend or passes.default_upscale_backend(_root())
    scale = upscale_scale or defaults.upscale_scale

    async def work(env: passes.PassEnv, cfg: passes.AdapterConfig, src: Path, dst: Path, data: bytes) -> Any:
        return await passes.upscale(
            env, cfg, data, input_display=_shown(src), output_display=_shown(dst),
            backend=backend, scale=scale, fmt=_format_of(dst, cfg.upscale_format),
        )

    records = run_pass(job, pairs, _archive_root(project_root, project_slug, output), work)
    first = records[0]
    answer = {"ok": True, "input": _shown(source), "output": _shown(_path(output)), "backend": first["backend"],
              "scale": first["scale"], "model": first["model"], "processed": len(records), "results": records}
    lines = [f"upscaled {r['input']} -> {r['output']} ({r['backend']} x{r['scale']}, {r['model']})" for r in records]
    _pass_answer(as_json, answer, lines)


@click.command("color")
@click.option("--input", "input_path", required=True, help="An image file or a folder (recursive).")
@click.option("--output", required=True, help="The output file, or a folder (png).")
@click.option("--profile", default=None, help="neutral | cinematic_warm | cold_rain (default neutral).")
@project_root_option
@project_slug_option
@json_option
def color_command(
    input_path: str,
    output: str,
    profile: str | None,
    project_root: str | None,
    project_slug: str | None,
    as_json: bool,
) -> None:
    """Colour-correct images with a profile (§5.5); the output is saved as its extension says."""
    job = PassJob("color", "color-correction", "No image files found for correction", "png")
    source, pairs = _prepare(job, input_path, output)

    async def work(env: passes.PassEnv, cfg: passes.AdapterConfig, src: Path, dst: Path, data: bytes) -> Any:
        image, record = await passes.color(
            env, cfg, data, input_display=_shown(src), output_display=_shown(dst), profile=profile or ""
        )
        fmt = _format_of(dst, "png")
        if fmt != "png":  # the adapter answers PNG; save as the output's extension says
            image = await anyio.to_thread.run_sync(lambda: encode_image.encode(encode_image.decode(image), fmt))
        return image, record

    records = run_pass(job, pairs, _archive_root(project_root, project_slug, output), work)
    first = records[0]
    answer = {"ok": True, "input": _shown(source), "output": _shown(_path(output)), "profile": first["profile"],
              "settings": first["settings"], "processed": len(records), "results": records}
    lines = [f"color-corrected {r['input']} -> {r['output']} (profile {r['profile']})" for r in records]
    _pass_answer(as_json, answer, lines)


def _backends(value: str | None, default: tuple[str, ...]) -> list[str]:
    if value is None:
        return list(default)
    return [name.strip() for name in value.split(",") if name.strip()]


@click.command("bgremove")
@click.option("--input", "input_path", required=True, help="An image file or a folder (recursive).")
@click.option("--output", required=True, help="The output file, or a folder.")
@click.option(
    "--bg-remove-backends",
    default=None,
    help="Comma-separated fallback chain of rembg, photoroom, removebg, builtin (default rembg,builtin).",
)
@click.option(
    "--bg-refine-openai",
    type=click.BOOL,
    default=None,
    help="Refine the cut-out with OpenAI: true|false (default true; a failure is only recorded).",
)
@project_root_option
@project_slug_option
@json_option
def bgremove_command(
    input_path: str,
    output: str,
    bg_remove_backends: str | None,
    bg_refine_openai: bool | None,
    project_root: str | None,
    project_slug: str | None,
    as_json: bool,
) -> None:
    """Remove the background of images (§5.3); the format follows the output's extension (png)."""
    defaults = passes.adapter_config(None)
    job = PassJob("bg_remove", "background-remove", "No image files found for background remove", defaults.bg_format)
    source, pairs = _prepare(job, input_path, output)
    backends = _backends(bg_remove_backends, defaults.bg_backends)
    refine = defaults.openai_enabled if bg_refine_openai is None else bg_refine_openai
    required = defaults.openai_required

    async def work(env: passes.PassEnv, cfg: passes.AdapterConfig, src: Path, dst: Path, data: bytes) -> Any:
        return await passes.background_remove(
            env, cfg, data, input_name=src.name, input_display=_shown(src), output_display=_shown(dst),
            backends=backends, fmt=_format_of(dst, cfg.bg_format), refine=refine, refine_required=required,
        )

    records = run_pass(job, pairs, _archive_root(project_root, project_slug, output), work)
    answer = {"ok": True, "input": _shown(source), "output": _shown(_path(output)), "backends": backends,
              "refine_openai": refine, "refine_openai_required": required,
              "format": _format_of(pairs[0][1], defaults.bg_format), "processed": len(records), "results": records}
    lines = []
    for r in records:
        refined = ", refined with OpenAI" if r["refine_openai"] else ""
        failed = f", refine failed: {r['refine_error']}" if r.get("refine_error") else ""
        lines.append(f"background removed {r['input']} -> {r['output']} ({r['backend']}{refined}{failed})")
    _pass_answer(as_json, answer, lines)


# -- qa ------------------------------------------------------------------------------------------


def _max_chroma_delta(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise Failure(f"invalid max_chroma_delta '{value}'")
    return number


def _qa_entry(path: Path, settings: qa.GuardSettings) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {
            "file": _shown(path),
            "chroma_delta": None,
            "grayscale_like": None,
            "error": str(exc),
            "hard_fail_reasons": [qa.IMAGE_READ_FAILED],
            "soft_warnings": [],
        }
    return qa.check_file(data, _shown(path), settings)


def qa_report(path: Path, settings: qa.GuardSettings) -> dict[str, Any]:
    """The §6.3 report of a file or a folder (listed recursively like a trigger's `input`)."""
    shown = _shown(path)
    if not path.exists():
        entries = [qa.missing_entry(shown, qa.INPUT_NOT_FOUND)]
    else:
        try:
            images = list_images(path)
        except OSError as exc:
            images, entries = [], [qa.missing_entry(shown, qa.IMAGE_READ_FAILED, str(exc))]
        else:
            entries = [_qa_entry(image, settings) for image in images]
            if not images:
                entries = [qa.missing_entry(shown, qa.NO_IMAGES_FOUND)]
    return qa.report(entries, shown, settings)


@click.command("qa")
@click.option("--input", "input_path", required=True, help="An image file or a folder (recursive).")
@click.option(
    "--output-guard-enabled",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="false: check nothing and say so.",
)
@click.option("--max-chroma-delta", default="2.0", show_default=True, help="Chroma delta threshold.")
@click.option("--enforce-grayscale", is_flag=True, help="A file above the threshold is a hard failure.")
@click.option("--fail-on-chroma-exceed", is_flag=True, help="Exceeding the threshold is a hard failure.")
@json_option
def qa_command(
    input_path: str,
    output_guard_enabled: bool,
    max_chroma_delta: str,
    enforce_grayscale: bool,
    fail_on_chroma_exceed: bool,
    as_json: bool,
) -> None:
    """Check images with the output guard (§6); exit 1 when a file fails it."""
    if not output_guard_enabled:
        _print_json({"ok": True, "skipped": True, "enabled": False, "reason": "output_guard_disabled"})
        return
    settings = qa.GuardSettings(
        max_chroma_delta=_max_chroma_delta(max_chroma_delta),
        enforce_grayscale=enforce_grayscale,
        fail_on_chroma_exceed=fail_on_chroma_exceed,
    )
    report = qa_report(_path(input_path), settings)
    summary = report["summary"]
    if as_json:
        _print_json(report)
    else:
        click.echo(
            f"QA checked {summary['total_files']} file(s): hard_failures={summary['hard_failures']}, "
            f"soft_warnings={summary['soft_warnings']}, input={report['input']}"
        )
    if summary["hard_failures"] > 0:
        raise Failure("QA mode found hard failures.")


# -- archive-bad -----------------------------------------------------------------------------------


@click.command("archive-bad")
@click.option("--input", "input_path", required=True, help="An image file or a folder (recursive).")
@project_root_option
@project_slug_option
def archive_bad(input_path: str, project_root: str | None, project_slug: str | None) -> None:
    """Move images to <project root>/archive/bad/ (§6.5)."""
    root = _project_root(project_root, project_slug)
    if root is None:
        raise Failure("archive-bad requires --project-root or --project-slug")
    path = _path(input_path)
    if not path.exists():
        raise Failure(f"archive-bad input not found: {_shown(path)}")
    try:
        images = list_images(path)
    except OSError as exc:
        raise Failure(f"archive-bad could not list {_shown(path)}: {exc.strerror or exc}") from None
    if not images:
        raise Failure("archive-bad found no image files to move")
    moved: list[dict[str, str]] = []
    for image in images:
        try:
            target = files.archive(image, root, files.ARCHIVE_BAD, "bad")
        except OSError as exc:
            raise Failure(f"archive-bad could not move {_shown(image)}: {exc.strerror or exc}") from None
        moved.append({"from": _shown(image), "to": _shown(target)})
    _print_json(
        {
            "ok": True,
            "archive_dir": _shown(root / files.ARCHIVE_BAD),
            "moved_count": len(moved),
            "moved": moved,
        }
    )


# -- validate-pipeline-config ---------------------------------------------------------------------


@click.command("validate-pipeline-config")
@click.option("--app-root", default=None, help="App root (default: the current folder).")
@click.option("--project-root", default=None, help="Project root (its .kroma/pipeline.settings.json).")
@click.option("--app-settings", default=None, help="App settings file (default: the app root's lookup).")
@click.option("--project-settings", default=None, help="Project settings file (relative: to the project).")
@click.option("--manifest", default=None, help="Manifest path override (relative: to the app root).")
@click.option("--postprocess-config", default=None, help="Postprocess config path override.")
def validate_pipeline_config(
    app_root: str | None,
    project_root: str | None,
    app_settings: str | None,
    project_settings: str | None,
    manifest: str | None,
    postprocess_config: str | None,
) -> None:
    """Validate the settings layers, manifest and postprocess config (§2.6)."""
    try:
        summary = config_validation.validate_config(
            _path(app_root) if app_root and app_root.strip() else _root(),
            _path(project_root) if project_root and project_root.strip() else None,
            app_settings_path=app_settings,
            project_settings_path=project_settings,
            manifest_path=manifest,
            postprocess_config_path=postprocess_config,
        )
    except config_validation.ConfigValidationError as exc:
        raise Failure(exc.message) from None
    _print_json({"ok": True, "summary": summary})


# -- runs: trigger and watch over HTTP -------------------------------------------------------------

RUN_ENDS = ("run.completed", "run.failed", "run.canceled")
PASS_EVENTS = {
    "candidate.background_removed": "bg_remove",
    "candidate.upscaled": "upscale",
    "candidate.color_corrected": "color",
}


@dataclass
class JobView:
    key: str
    total: int
    generated: int = 0
    checked: int = 0
    outcome: str | None = None  # "winner cK" | "failed"
    task: Any = None

    def status(self) -> str:
        text = f"generated {self.generated}/{self.total}, checked {self.checked}/{self.total}"
        return f"{text}, {self.outcome}" if self.outcome else text


@dataclass
class RunView:
    """What the events of one run say so far."""

    run_id: str
    mode: str | None = None
    planned: int | None = None  # jobs the run requested
    jobs: dict[str, JobView] = field(default_factory=dict)
    end: dict[str, Any] | None = None  # the final event (a dry run: a synthetic one)
    cost: float = 0.0

    @property
    def done(self) -> bool:
        return self.end is not None

    def ok(self) -> bool:
        if self.end is None:
            return False
        return self.end["type"] == "dry" or (
            self.end["type"] == "run.completed" and self.end["data"].get("status") == "ok"
        )

    def summary(self) -> str:
        end = self.end or {}
        data = end.get("data") or {}
        count = len(self.jobs)
        kind = end.get("type")
        if kind == "dry":
            return f"Run {self.run_id}: ok (dry run, {count} job(s) planned)"
        if kind == "run.completed":
            failed = int(data.get("failed_jobs") or 0)
            winners = ", ".join(f"{j.key} {j.outcome}" for j in self.jobs.values() if j.outcome)
            status = data.get("status") or "failed"
            detail = f"{count} job(s), {failed} failed the output guard"
            cost = f", cost ${self.cost:.4f}" if self.cost else ""
            return f"Run {self.run_id}: {status} ({detail}{cost})" + (f": {winners}" if winners else "")
        if kind == "run.failed":
            return f"Run {self.run_id}: failed: {data.get('error') or 'unknown error'}"
        if kind == "run.canceled":
            return f"Run {self.run_id}: canceled"
        return f"Run {self.run_id}: unfinished"

    def apply(self, event: dict[str, Any]) -> tuple[JobView | None, str]:
        """Fold one event; (the job it changed, a one-line description)."""
        kind = event.get("type") or ""
        data = event.get("data") or {}
        if kind == "run.requested":
            self.mode, self.planned = data.get("mode"), int(data.get("jobs") or 0)
            if self.mode == "dry" and self.planned == 0:
                self.end = {"type": "dry", "data": {}}
            return None, (
                f"{kind} mode={self.mode} jobs={self.planned} candidates={data.get('candidates')}"
                f" provider={data.get('provider')}"
            )
        if kind == "job.planned":
            total = int((data.get("planned_generation") or {}).get("candidates") or 1)
            job_id = str(data.get("job_id") or data.get("job_key") or len(self.jobs))
            job = self.jobs[job_id] = JobView(str(data.get("job_key") or job_id), total)
            if self.mode == "dry" and self.planned is not None and len(self.jobs) >= self.planned:
                self.end = {"type": "dry", "data": {}}
            return job, f"{kind} {job.key} ({total} candidate(s))"
        if kind == "run.started":
            return None, f"{kind} provider={data.get('provider')}"
        if kind == "cost.recorded":
            cost = data.get("total_cost_usd")
            self.cost += float(cost) if isinstance(cost, int | float) else 0.0
            return None, f"{kind} {data.get('provider_code')} {data.get('model_name')} ${float(cost or 0):.4f}"
        if kind in RUN_ENDS:
            self.end = event
            line = f"{kind} {data.get('status') or ''}".rstrip()
            return None, line + (f": {data.get('error')}" if kind == "run.failed" else "")
        return self._job_event(kind, data)

    def _job_event(self, kind: str, data: dict[str, Any]) -> tuple[JobView | None, str]:
        job = self.jobs.get(data.get("job_id") or "")
        if job is None:
            return None, kind
        index = data.get("candidate_index")
        line = f"{kind} {job.key}"
        if kind == "candidate.generated":
            job.generated += 1
            line += f" c{index} -> {data.get('output')} ({data.get('model')}, {data.get('size')})"
        elif kind in PASS_EVENTS:
            line += f" c{index} -> {data.get('output')}"
        elif kind == "candidate.checked":
            job.checked += 1
            summary = (data.get("report") or {}).get("summary") or {}
            line += (
                f" c{index} {data.get('status')} (hard_failures={summary.get('hard_failures')},"
                f" soft_warnings={summary.get('soft_warnings')})"
            )
        elif kind == "candidate.rejected":
            line += f" c{index} -> {data.get('bad_archive')}"
        elif kind == "job.winner_selected":
            job.outcome = f"winner c{data.get('selected_candidate')}"
            line += f" {job.outcome} -> {data.get('final_output')}"
        elif kind == "job.failed":
            job.outcome = "failed"
            line += f" {data.get('failure_reason') or ''}".rstrip()
        return job, line


class PlainDisplay:
    """One line per event (stdout is not a terminal)."""

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, job: JobView | None, line: str) -> None:
        click.echo(line)


class BarsDisplay:
    """A live progress bar per job: generated k/N, checked k/N, then the winner or `failed`."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=sys.stdout),
        )

    def __enter__(self) -> BarsDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, job: JobView | None, line: str) -> None:
        if job is None:
            if line.startswith("run.") and not line.startswith("run.requested"):
                self.progress.console.print(line, markup=False, highlight=False)
            return
        if job.task is None:
            job.task = self.progress.add_task(job.key, total=job.total * 2, status=job.status())
        self.progress.update(job.task, completed=job.generated + job.checked, status=job.status())


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _error_text(response: httpx.Response) -> str:
    """The error envelope's message, or the status and body when the server sent no envelope."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"HTTP {response.status_code}: {response.text.strip()[:500]}"


def _unreachable(url: str, exc: Exception) -> Failure:
    return Failure(f"cannot reach the Kroma server at {url}: {str(exc) or type(exc).__name__}")


def sse_events(response: httpx.Response) -> Iterator[tuple[str | None, str | None, str]]:
    """(id, event, data) per Server-Sent Event of a streamed response (`data:` lines joined)."""
    event_id: str | None = None
    event_type: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield event_id, event_type, "\n".join(data)
            event_id, event_type, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event_type = value
        elif name == "data":
            data.append(value)
    if data:
        yield event_id, event_type, "\n".join(data)


def _follow(http: httpx.Client, path: str, view: RunView, display: PlainDisplay | BarsDisplay) -> None:
    """Follow the run's events until its end, resuming after a dropped connection."""
    last_id: str | None = None
    failures = 0
    connected = False
    while not view.done:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
        try:
            with http.stream("GET", path, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise Failure(_error_text(response))
                connected = True
                for event_id, _type, data in sse_events(response):
                    failures = 0
                    last_id = event_id or last_id
                    try:
                        event = json.loads(data)
                    except ValueError:
                        continue
                    job, line = view.apply(event)
                    display.event(job, line)
                    if view.done:
                        return
        except httpx.TransportError as exc:
            failures += 1
            if not connected or failures > 5:  # retry only a stream that was there
                raise _unreachable(str(http.base_url), exc) from None
        else:
            failures += 1
            if failures > 5:
                raise Failure(f"the event stream of run {view.run_id} ended before the run did")
        time.sleep(min(0.2 * 2**failures, 3.0))


def watch_run(url: str, token: str | None, slug: str, run_id: str) -> RunView:
    """Follow a run to its end with bars (a terminal) or one line per event; the folded view."""
    view = RunView(run_id)
    timeout = httpx.Timeout(10.0, read=None)
    display: PlainDisplay | BarsDisplay = BarsDisplay() if sys.stdout.isatty() else PlainDisplay()
    path = f"/api/projects/{slug}/runs/{run_id}/events"
    with httpx.Client(base_url=url, headers=_headers(token), timeout=timeout) as http, display:
        try:
            _follow(http, path, view, display)
        except KeyboardInterrupt:
            raise Failure(f"stopped watching; run {run_id} goes on on the server") from None
    return view


def _finish(view: RunView) -> None:
    """Print the end of a watched run and exit with its outcome."""
    data = (view.end or {}).get("data") or {}
    if view.end and view.end.get("type") == "run.completed":
        for line in (data.get("stdout") or "").splitlines():
            click.echo(line)
        for line in (data.get("stderr") or "").splitlines():
            click.echo(line, err=True)
    click.echo(view.summary())
    if not view.ok():
        raise click.exceptions.Exit(1)


url_option = click.option(
    "--url", envvar="KROMA_URL", default=DEFAULT_URL, show_default=True, help="Server (env KROMA_URL)."
)
token_option = click.option("--token", envvar="KROMA_TOKEN", default=None, help="API token (env KROMA_TOKEN).")


@click.group("runs")
def runs() -> None:
    """Trigger runs on a running server and watch them live."""


@runs.command("trigger")
@click.argument("slug")
@click.option("--mode", type=click.Choice(["dry", "run"], case_sensitive=False), default="dry", show_default=True)
@click.option("--confirm-spend", is_flag=True, help="Required for --mode run.")
@click.option("--scene-ref", "scene_refs", multiple=True, help="Scene image (repeatable).")
@click.option("--input", "input_path", default=None, help="Scene folder or file (instead of --scene-ref).")
@click.option("--style-ref", "style_refs", multiple=True, help="Style reference image (repeatable).")
@click.option("--stage", default=None, help="style | time | weather")
@click.option("--time", "time_of_day", default=None, help="day | night")
@click.option("--weather", default=None, help="clear | rain")
@click.option("--candidates", type=int, default=None, help="Candidates per job (1-6).")
@click.option("--provider", type=click.Choice(["local", "openai"]), default=None)
@click.option("--no-watch", is_flag=True, help="Print the run id and return at once.")
@url_option
@token_option
def runs_trigger(
    slug: str,
    mode: str,
    confirm_spend: bool,
    scene_refs: tuple[str, ...],
    input_path: str | None,
    style_refs: tuple[str, ...],
    stage: str | None,
    time_of_day: str | None,
    weather: str | None,
    candidates: int | None,
    provider: str | None,
    no_watch: bool,
    url: str,
    token: str | None,
) -> None:
    """Trigger a run of project SLUG, then watch it to its end."""
    mode = mode.lower()
    body: dict[str, Any] = {"mode": mode, "confirm_spend": confirm_spend}
    optional = {
        "scene_refs": list(scene_refs) or None,
        "input": input_path,
        "style_refs": list(style_refs) or None,
        "stage": stage,
        "time": time_of_day,
        "weather": weather,
        "candidates": candidates,
        "provider": provider,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    headers = {"Prefer": "respond-async"} if mode == "run" else {}
    try:
        with httpx.Client(base_url=url, headers=_headers(token), timeout=httpx.Timeout(30.0, read=None)) as http:
            response = http.post(f"/api/projects/{slug}/runs/trigger", json=body, headers=headers)
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from None
    if response.status_code >= 400:
        raise Failure(_error_text(response))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise Failure(f"unexpected answer from {url}: HTTP {response.status_code}: {response.text.strip()[:200]}")
    run_id = answer.get("run_id")
    if mode == "dry":
        for line in ((answer.get("pipeline_trigger") or {}).get("stdout") or "").splitlines():
            click.echo(line)
    else:
        click.echo(f"Run {run_id} queued")
    if not isinstance(run_id, str) or no_watch:
        return
    _finish(watch_run(url, token, slug, run_id))


@runs.command("watch")
@click.argument("run_id")
@click.option("--project", "slug", required=True, help="The run's project slug.")
@url_option
@token_option
def runs_watch(run_id: str, slug: str, url: str, token: str | None) -> None:
    """Follow a run's events live to its end; exit 0 for an `ok` run, 1 otherwise."""
    _finish(watch_run(url, token, slug, run_id))


COMMANDS = (
    generate_one,
    upscale_command,
    color_command,
    bgremove_command,
    qa_command,
    archive_bad,
    validate_pipeline_config,
    runs,
)
