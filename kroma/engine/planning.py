"""Run planning (pipeline spec §1, §3, §4.1, §4.8): settings layers, manifest, scene sources, job
ids, prompt composition with the project's world, candidate count and batch limit.

`plan_run` reads only configuration files and the `input` folder (call it in a worker thread); it
returns the events' content, or raises `PlanningError` with the reference's message verbatim.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kroma.domain.run_requests import TriggerRequest
from kroma.engine import manifest as manifests
from kroma.engine import postprocess_config as postprocess
from kroma.engine import settings_layer as layers
from kroma.engine.paths import PathRefused, display_path, is_within, list_images, resolve_reference

MAX_EXECUTION_CANDIDATES = 255
_SLUG = re.compile(r"[A-Za-z0-9_-]+")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NO_INVENTION = "Do not invent new object categories."


class PlanningError(Exception):
    """A planning/preflight failure: the HTTP layer answers 400 `planning_preflight_failed` with
    `message` verbatim (§2.4)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class World:
    """The project's configuration a run uses beyond the reference (all optional)."""

    template: dict[str, Any] | None = None  # {id, name, template_text}
    template_vars: Mapping[str, str] = field(default_factory=dict)
    style_guide: dict[str, Any] | None = None  # {id, name, instructions}
    characters: tuple[dict[str, Any], ...] = ()  # ({id, name, prompt_text}, ...)
    reference_set: dict[str, Any] | None = None  # {id, name}
    reference_images: tuple[str, ...] = ()  # the set's image items' content_uri, in item order

    @property
    def used(self) -> bool:
        return bool(self.template or self.style_guide or self.characters or self.reference_set)


@dataclass(frozen=True)
class PlannedJob:
    key: str
    mode: str
    time: str
    weather: str
    input_images: list[str]  # display paths
    input_paths: list[str]  # absolute
    prompt: str


@dataclass(frozen=True)
class Plan:
    jobs: list[PlannedJob]
    candidates: int
    generation: dict[str, Any]
    postprocess: dict[str, Any]
    output_guard: dict[str, Any]
    storage: dict[str, Any]
    run_log_path: str  # display path
    timestamp: str
    world: dict[str, Any] | None
    postprocess_outputs: dict[str, Any]  # bg format, upscale scale/format, colour profile (§3.4)
    postprocess_config: dict[str, Any]  # the config file's document ({} without one), for the passes


def check_slug(raw_slug: str) -> str:
    """The pipeline's slug rule on the raw path slug (§10.5)."""
    slug = raw_slug.strip()
    if not _SLUG.fullmatch(slug):
        raise ValueError("Invalid project slug for pipeline run")
    return slug


def ascii_lower(text: str) -> str:
    """Rust's `to_ascii_lowercase`: only A-Z change (so no non-ASCII letter becomes ASCII)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def sanitize_job_id(text: str) -> str:
    """HEAD's `sanitize_id` (§3.4): lowercase ASCII letters/digits and `-` kept, anything else
    (`_` included) becomes `_`, runs of `_` collapse, leading/trailing `_` removed."""
    out = re.sub(r"[^a-z0-9-]", "_", ascii_lower(text))
    return re.sub(r"_+", "_", out).strip("_")


def _stem(path_text: str) -> str:
    name = PurePosixPath(path_text.replace("\\", "/")).name
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def job_key(stage: str, index: int, scene: str) -> str:
    suffix = sanitize_job_id(_stem(scene)) or str(index)
    return f"{stage}_{index}_{suffix}"


def compose_prompt(manifest: manifests.Manifest, stage: str, time_of_day: str, weather: str) -> str:
    """§3.5: style base, then time (stages time/weather), then weather (stage weather), then the
    no-invention policy line, joined by single spaces."""
    prompts = manifest.prompts
    keys = ["style_base"]
    if stage in ("time", "weather"):
        keys.append(f"time_{time_of_day}")
    if stage == "weather":
        keys.append(f"weather_{weather}")
    chunks = []
    for key in keys:
        text = (prompts.get(key) or "").strip()
        if not text:
            raise PlanningError(f"missing prompts.{key}")
        chunks.append(text)
    if manifest.policy.default_no_invention:
        chunks.append(NO_INVENTION)
    return " ".join(chunks)


def fill_template(text: str, values: Mapping[str, str]) -> str:
    """`{name}` placeholders filled from `values`; one without a value is an error naming it."""
    for name in _PLACEHOLDER.findall(text):
        if name not in values:
            raise ValueError(f"Template variable '{name}' has no value in template_vars")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def world_prompt(world: World) -> list[str]:
    """The world's chunks, in order: template, style guide instructions, each character."""
    chunks: list[str] = []
    if world.template:
        chunks.append(fill_template(world.template["template_text"], world.template_vars).strip())
    if world.style_guide and world.style_guide["instructions"].strip():
        chunks.append(world.style_guide["instructions"].strip())
    for character in world.characters:
        text = character["prompt_text"].strip()
        if text:
            chunks.append(f"{character['name']}: {text}")
    return [c for c in chunks if c]


def world_record(world: World) -> dict[str, Any] | None:
    """What `run.requested`/`job.planned` record of the world, so each image traces to its style
    and cast."""
    if not world.used:
        return None
    return {
        "prompt_template": world.template and {k: world.template[k] for k in ("id", "name")},
        "template_vars": dict(world.template_vars),
        "style_guide": world.style_guide and {k: world.style_guide[k] for k in ("id", "name")},
        "characters": [{k: c[k] for k in ("id", "name")} for c in world.characters],
        "reference_set": world.reference_set,
        "reference_images": list(world.reference_images),
    }


def timestamps(now_ns: int | None = None) -> tuple[str, str]:
    """(run-log stamp `<secs>-<ms>`, run-log timestamp `<secs>.<ms>Z`) per §4.1."""
    ns = time.time_ns() if now_ns is None else now_ns
    secs, ms = divmod(ns // 1_000_000, 1000)
    return f"{secs}-{ms:03d}", f"{secs}.{ms:03d}Z"


@dataclass(frozen=True)
class PlanContext:
    request: TriggerRequest
    slug: str
    app_root: Path
    project_root: Path
    resolved_from_backend: bool = True
    world: World = field(default_factory=World)
    now_ns: int | None = None


def _settings(ctx: PlanContext) -> layers.Overlay:
    try:
        app = layers.load_app_layer(ctx.app_root)
        project = layers.load_project_layer(ctx.project_root)
    except layers.SettingsError as exc:
        raise PlanningError(exc.message) from None
    return layers.merge(project, app)  # the HTTP trigger sets no layered field (§1.6)


def _manifest(ctx: PlanContext, overlay: layers.Overlay) -> manifests.Manifest:
    if not overlay.manifest_path:
        return manifests.DEFAULT_MANIFEST
    path = layers.resolve_path(ctx.app_root, overlay.manifest_path)
    try:
        return manifests.load_manifest(path)
    except manifests.ManifestError as exc:
        raise PlanningError(f"manifest parse failed ({path}): {exc.message}") from None


def _ref(ctx: PlanContext, value: str, field_name: str) -> Path:
    try:
        return resolve_reference(value, field_name, ctx.project_root, ctx.app_root)
    except PathRefused as exc:
        raise PlanningError(exc.message) from None


def _scenes(ctx: PlanContext, manifest: manifests.Manifest) -> list[tuple[str, Path]]:
    """(display, absolute) per scene: the request's scene_refs or input, else the manifest's."""
    request = ctx.request
    if request.input is not None:
        root = _ref(ctx, request.input, "input_path")
        if not root.exists():
            raise PlanningError(f"input not found: {request.input}")
        found = []
        for image in list_images(root):
            if not (is_within(image.resolve(), ctx.project_root.resolve()) or
                    is_within(image.resolve(), ctx.app_root.resolve())):
                raise PlanningError("input_image resolved outside app root (symlink traversal detected)")
            found.append((display_path(image, ctx.app_root), image))
        return found
    given = request.scene_refs if request.scene_refs is not None else manifest.scene_refs
    return [(text, _ref(ctx, text, "input_image")) for text in given]


def _style_refs(ctx: PlanContext, manifest: manifests.Manifest) -> list[tuple[str, Path]]:
    given = list(ctx.request.style_refs or manifest.style_refs)
    given += list(ctx.world.reference_images)
    return [(text, _ref(ctx, text, "input_image")) for text in given]


def _postprocess(
    ctx: PlanContext, overlay: layers.Overlay
) -> tuple[dict[str, Any], postprocess.PostprocessConfig]:
    path = layers.resolve_path(ctx.app_root, overlay.postprocess_config_path) if overlay.postprocess_config_path else None
    try:
        config = postprocess.load_postprocess_config(path)
        record = postprocess.planned_record(
            upscale=bool(overlay.post_upscale),
            color=bool(overlay.post_color),
            bg_remove=bool(overlay.post_bg_remove),
            config=config,
            upscale_backend=overlay.upscale_backend,
            color_profile=overlay.color_profile,
            bg_remove_backends=overlay.bg_remove_backends,
            bg_refine_openai=overlay.bg_refine_openai,
            bg_refine_openai_required=overlay.bg_refine_openai_required,
            app_root=ctx.app_root,
        )
    except postprocess.PostprocessConfigError as exc:
        raise PlanningError(exc.message) from None
    return record, config


def _outputs(record: dict[str, Any], config: postprocess.PostprocessConfig) -> dict[str, Any]:
    """What names the passes' files: bg format, upscale scale and format, the colour profile."""
    return {
        "bg_remove_format": config.bg_remove_format if record["bg_remove"] else None,
        "upscale_scale": config.upscale_scale if record["upscale"] else None,
        "upscale_format": config.upscale_format if record["upscale"] else None,
        "color_profile": record["color_profile"] if record["color"] else None,
    }


def _candidate_count(ctx: PlanContext, manifest: manifests.Manifest) -> int:
    count = ctx.request.candidates if ctx.request.candidates is not None else manifest.generation.candidates
    if ctx.request.mode == "run":  # dry runs record the count unchecked (§3.7)
        limit = manifest.generation.max_candidates
        if count < 1:
            raise PlanningError("Invalid candidate count: expected >= 1")
        if count > limit:
            raise PlanningError(f"Candidate count {count} exceeds limit {limit}.")
        if count > MAX_EXECUTION_CANDIDATES:
            raise PlanningError(f"Candidate count {count} exceeds Rust execution limit {MAX_EXECUTION_CANDIDATES}.")
    return count


def plan_run(ctx: PlanContext) -> Plan:
    """Everything §3.4 builds, in its order, plus the world's prompt and references."""
    request = ctx.request
    overlay = _settings(ctx)
    manifest = _manifest(ctx, overlay)
    scenes = _scenes(ctx, manifest)
    styles = _style_refs(ctx, manifest)
    if not scenes:
        raise PlanningError("manifest planning preflight failed: no scene references configured")
    try:
        chunks = world_prompt(ctx.world)
    except ValueError as exc:
        raise PlanningError(str(exc)) from None
    prompt = " ".join([*chunks, compose_prompt(manifest, request.stage, request.time, request.weather)])
    jobs = [
        PlannedJob(
            key=job_key(request.stage, i, display),
            mode=request.stage,
            time=request.time,
            weather=request.weather,
            input_images=[display, *(d for d, _ in styles)],
            input_paths=[str(path), *(str(p) for _, p in styles)],
            prompt=prompt,
        )
        for i, (display, path) in enumerate(scenes, start=1)
    ]
    if len(jobs) > manifest.safe_batch_limit:
        raise PlanningError(
            f"Batch exceeds safety limit ({manifest.safe_batch_limit}). Use --allow-large-batch to override."
        )
    record, config = _postprocess(ctx, overlay)
    candidates = _candidate_count(ctx, manifest)
    guard = manifest.output_guard
    stamp, timestamp = timestamps(ctx.now_ns)
    return Plan(
        jobs=jobs,
        candidates=candidates,
        generation={"candidates": candidates, "max_candidates": manifest.generation.max_candidates},
        postprocess=record,
        output_guard=guard.record(),
        storage={
            "project_root": display_path(ctx.project_root, ctx.app_root),
            "resolved_from_backend": ctx.resolved_from_backend,
        },
        run_log_path=display_path(ctx.project_root / "runs" / f"run_{stamp}.json", ctx.app_root),
        timestamp=timestamp,
        world=world_record(ctx.world),
        postprocess_outputs=_outputs(record, config),
        postprocess_config=config.raw,
    )


RUN_FOLDERS = ("outputs", "runs", "archive/bad", "archive/replaced")


def create_run_folders(project_root: Path) -> None:
    """The folders a run (dry included) creates under the project root (§2.5)."""
    for name in RUN_FOLDERS:
        (project_root / name).mkdir(parents=True, exist_ok=True)
