"""Projects and their storage settings: commands, events and decisions (pure)."""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.domain.aggregate import ProjectState, evolves, project_stream, slug_stream
from kroma.domain.errors import ValidationError, at_least_one, required
from kroma.domain.slugs import normalize_slug, slugify
from kroma.events.envelope import ExpectedVersion, Metadata, NewEvent

DEFAULT_BASE_DIR = "var/projects"
DEFAULT_S3_PREFIX = "iat-projects"
DEFAULT_USERNAME = "local"
DEFAULT_DISPLAY_NAME = "Local User"
S3_FIELDS = ("bucket", "prefix", "region", "profile", "endpoint_url")


def default_storage() -> dict[str, Any]:
    return {
        "local_base_dir": DEFAULT_BASE_DIR,
        "local_project_root": None,
        "s3_enabled": False,
        "s3_bucket": None,
        "s3_prefix": None,
        "s3_region": None,
        "s3_profile": None,
        "s3_endpoint_url": None,
    }


# -- commands (request bodies; every field optional so validation gives the contract's message) --


class UpsertProject(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    slug: str | None = None
    description: str | None = None
    username: str | None = None
    user_display_name: str | None = None


class UpdateLocalStorage(msgspec.Struct, omit_defaults=True):
    base_dir: str | None = None
    project_root: str | None = None


class UpdateS3Storage(msgspec.Struct, omit_defaults=True):
    enabled: bool | None = None
    bucket: str | None = None
    prefix: str | None = None
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None


# -- decisions -----------------------------------------------------------------------------------


class ProjectTarget(msgspec.Struct):
    """A validated project upsert: what to create or update."""

    name: str
    slug: str
    description: str
    username: str
    display_name: str


def validate_upsert(cmd: UpsertProject) -> ProjectTarget:
    name = (cmd.name or "").strip()
    if not name:
        raise required("name")
    slug = normalize_slug(cmd.slug) or slugify(name)
    username = normalize_slug(cmd.username) or DEFAULT_USERNAME
    display = (cmd.user_display_name or "").strip() or DEFAULT_DISPLAY_NAME
    return ProjectTarget(name, slug, (cmd.description or "").strip(), username, display)


def decide_upsert(
    target: ProjectTarget, existing: ProjectState | None, new_project_id: str, meta: Metadata
) -> tuple[list[NewEvent], dict[str, int]]:
    """Create the project (reserving its slug in the same atomic append) or update it."""
    if existing is None:
        data = {
            "project_id": new_project_id,
            "slug": target.slug,
            "name": target.name,
            "description": target.description,
            "owner_username": target.username,
            "owner_display_name": target.display_name,
            "storage": default_storage(),
        }
        events = [
            NewEvent(project_stream(new_project_id), "project.created", data, meta),
            NewEvent(
                slug_stream(target.slug),
                "project_slug.reserved",
                {"project_id": new_project_id, "slug": target.slug, "owner_username": target.username},
                meta,
            ),
        ]
        return events, {
            project_stream(new_project_id): ExpectedVersion.NO_STREAM,
            slug_stream(target.slug): ExpectedVersion.NO_STREAM,
        }
    if existing.owner_username != target.username:
        raise ValidationError("Project slug is already used by another user. Choose a different slug.")
    data = {
        "project_id": existing.id,
        "name": target.name,
        "description": target.description,
        "owner_display_name": target.display_name,
    }
    return [NewEvent(project_stream(existing.id), "project.updated", data, meta)], {}


@evolves("project.updated")
def _project_updated(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
    state.name, state.description = d["name"], d["description"]
    state.owner_display_name = d["owner_display_name"]


def check_local_storage(cmd: UpdateLocalStorage) -> None:
    """The 'at least one of' rule runs before any lookup (contract §3.3)."""
    if cmd.base_dir is None and cmd.project_root is None:
        raise at_least_one("base_dir", "project_root")


def decide_local_storage(state: ProjectState, cmd: UpdateLocalStorage, meta: Metadata) -> NewEvent:
    storage = state.storage
    base_dir = storage["local_base_dir"]
    if cmd.base_dir is not None:
        base_dir = cmd.base_dir.strip()
        if not base_dir:
            raise ValidationError("Field 'base_dir' must not be empty")
    root = storage["local_project_root"]
    if cmd.project_root is not None:
        root = cmd.project_root.strip() or None
    data = {"project_id": state.id, "local_base_dir": base_dir, "local_project_root": root}
    return NewEvent(project_stream(state.id), "storage.local_updated", data, meta)


def decide_s3_storage(state: ProjectState, cmd: UpdateS3Storage, meta: Metadata) -> NewEvent:
    """Every field optional; `{}` is valid and still recorded (the contract audits it)."""
    data: dict[str, Any] = {"project_id": state.id}
    for name in ("enabled", *S3_FIELDS):
        key = f"s3_{name}"
        value = getattr(cmd, name)
        if value is None:
            data[key] = state.storage[key]
        elif isinstance(value, str):
            data[key] = value.strip() or None
        else:
            data[key] = value
    return NewEvent(project_stream(state.id), "storage.s3_updated", data, meta)


@evolves("storage.local_updated", "storage.s3_updated")
def _storage_updated(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
    state.storage.update({k: v for k, v in d.items() if k != "project_id"})
