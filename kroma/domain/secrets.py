"""Project secrets (contract §3.13): encrypted values on the project stream, pure decisions.

A value never enters an event in plaintext. The HTTP layer seals it first with a per-secret data
key (`kroma.vault`); the event carries only the `enc:v1:` ciphertext and the data key's id:

- `secret.set` {project_id, provider_code, secret_name, key_id, ciphertext, key_ref}: upsert a
  value. Every set uses a fresh data key; the previous value's key is destroyed once the new
  event is committed, so an overwritten value is shredded too.
- `secret.declared` {project_id, provider_code, secret_name}: a metadata-only row (bootstrap
  import): a new row has an empty value (has_value false, key_ref `local-master`); an existing row
  only has its updated_at bumped, its value is never overwritten.
- `secret.deleted` (schema v2) {project_id, provider_code, secret_name, key_id, path_provider_code,
  path_secret_name (the raw path values, for the audit trail; v1 events lack them and are upcast
  on read, see `kroma.events.upcasting`)}: the row goes; the caller
  then destroys the data key, and every ciphertext of that value left in the log is undecryptable
  (crypto-shredding; the hash chain is untouched).
- `secrets.rotated` {project_id, from_key_ref, force, target_key_ref, <counters>, secrets[]}:
  the rotated rows now carry `target_key_ref`. Rotation re-wraps data keys (key material stays
  in keys.db, never in the event); a legacy plaintext row is sealed under a new data key and its
  entry carries the new key_id and ciphertext.

State: `state.items("secrets")`, keyed by `secret_key(code, name)`, values {provider_code,
secret_name, key_id, ciphertext, key_ref, created_at, updated_at}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from kroma.clock import to_seconds
from kroma.crypto.aead import is_sealed
from kroma.crypto.master_key import DEFAULT_KEY_REF
from kroma.domain.aggregate import ProjectState, evolves, project_stream
from kroma.domain.errors import NotFound, required
from kroma.domain.slugs import normalize_slug
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.events.upcasting import current_version

COLLECTION = "secrets"
NOT_FOUND = "Secret not found"


class UpsertSecret(msgspec.Struct, omit_defaults=True):
    provider_code: str | None = None
    secret_name: str | None = None
    secret_value: str | None = None


class RotateSecrets(msgspec.Struct, omit_defaults=True):
    from_key_ref: str | None = None
    force: bool | None = None


def secret_key(provider_code: str, secret_name: str) -> str:
    return f"{provider_code}\x00{secret_name}"


def value_state(ciphertext: str) -> str:
    """How a stored value counts in rotation-status: encrypted, plaintext (legacy) or empty."""
    if not ciphertext.strip():
        return "empty"
    return "encrypted" if is_sealed(ciphertext) else "plaintext"


# -- validation (no state needed) ------------------------------------------------------------------


def validate_upsert(cmd: UpsertSecret) -> tuple[str, str, str]:
    """(provider_code, secret_name, trimmed value), checked in the contract's order."""
    code = normalize_slug(cmd.provider_code)
    if code is None:
        raise required("provider_code")
    name = (cmd.secret_name or "").strip()
    if not name:
        raise required("secret_name")
    value = (cmd.secret_value or "").strip()
    if not value:
        raise required("secret_value")
    return code, name, value


def path_key(slug: str, provider_code: str, secret_name: str) -> tuple[str, str]:
    """The delete route's path checks: an un-normalisable slug is the handler's 404, then the code
    and the name are 400s."""
    if normalize_slug(slug) is None:
        raise NotFound(NOT_FOUND)
    code = normalize_slug(provider_code)
    if code is None:
        raise required("provider_code")
    name = secret_name.strip()
    if not name:
        raise required("secret_name")
    return code, name


# -- decisions -----------------------------------------------------------------------------------


def find(state: ProjectState, code: str, name: str) -> dict[str, Any] | None:
    return state.items(COLLECTION).get(secret_key(code, name))


def decide_set(
    state: ProjectState, code: str, name: str, key_id: str, ciphertext: str, key_ref: str, meta: Metadata
) -> tuple[NewEvent, str | None]:
    """The set event and the key id of the value it replaces (to destroy after the commit)."""
    assert is_sealed(ciphertext), "only sealed values go into events"
    existing = find(state, code, name)
    previous = existing["key_id"] if existing else None
    data = {
        "project_id": state.id,
        "provider_code": code,
        "secret_name": name,
        "key_id": key_id,
        "ciphertext": ciphertext,
        "key_ref": key_ref,
    }
    return NewEvent(project_stream(state.id), "secret.set", data, meta), previous


def decide_declare(state: ProjectState, code: str, name: str, meta: Metadata) -> NewEvent:
    """A metadata-only secret (bootstrap import): creates an empty row, or only bumps the
    updated_at of an existing one (never touching its value). `code` must be normalised."""
    data = {"project_id": state.id, "provider_code": code, "secret_name": name}
    return NewEvent(project_stream(state.id), "secret.declared", data, meta)


def decide_delete(
    state: ProjectState, code: str, name: str, meta: Metadata, path: tuple[str, str] | None = None
) -> tuple[NewEvent, str | None]:
    """The delete event and the data key to destroy after it commits (None for an empty row).
    `path`: the (provider code, secret name) as the request's path spelled them, which the audit
    trail shows (contract §6.1)."""
    existing = find(state, code, name)
    if existing is None:
        raise NotFound(NOT_FOUND)
    data: dict[str, Any] = {
        "project_id": state.id,
        "provider_code": code,
        "secret_name": name,
        "key_id": existing["key_id"],
    }
    data["path_provider_code"], data["path_secret_name"] = path if path is not None else (code, name)
    event = NewEvent(
        project_stream(state.id), "secret.deleted", data, meta, schema_version=current_version("secret.deleted")
    )
    return event, existing["key_id"]


@dataclass
class RotationPlan:
    """What a rotation will do, decided against one state. `rewrap` are data keys to re-wrap under
    the target master key; `reseal` are legacy plaintext rows to seal under a new data key."""

    target_key_ref: str
    scanned: int = 0
    skipped_empty: int = 0
    skipped_current_key_ref: int = 0
    rewrap: list[dict[str, Any]] = field(default_factory=list)
    reseal: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rotated(self) -> int:
        return len(self.rewrap) + len(self.reseal)

    def counters(self) -> dict[str, int]:
        return {
            "scanned": self.scanned,
            "rotated": self.rotated,
            "skipped_empty": self.skipped_empty,
            "skipped_current_key_ref": self.skipped_current_key_ref,
            "plaintext_reencrypted": len(self.reseal),
        }


def plan_rotation(
    state: ProjectState, from_key_ref: str | None, force: bool, target_key_ref: str
) -> RotationPlan:
    source = (from_key_ref or "").strip() or None
    plan = RotationPlan(target_key_ref)
    rows = sorted(state.items(COLLECTION).values(), key=lambda r: (r["provider_code"], r["secret_name"]))
    for row in rows:
        if source is not None and row["key_ref"] != source:
            continue
        plan.scanned += 1
        kind = value_state(row["ciphertext"])
        if kind == "empty":
            plan.skipped_empty += 1
        elif row["key_ref"] == target_key_ref and not force:
            plan.skipped_current_key_ref += 1
        elif kind == "plaintext":
            plan.reseal.append(row)
        else:
            plan.rewrap.append(row)
    return plan


def decide_rotation(
    state: ProjectState,
    plan: RotationPlan,
    from_key_ref: str | None,
    force: bool,
    resealed: dict[str, tuple[str, str]],
    meta: Metadata,
) -> NewEvent:
    """The rotation record. `resealed` maps secret_key -> (new key_id, ciphertext) for the
    plaintext rows the caller sealed."""
    entries: list[dict[str, Any]] = []
    for row in plan.rewrap:
        entries.append({"provider_code": row["provider_code"], "secret_name": row["secret_name"]})
    for row in plan.reseal:
        key_id, ciphertext = resealed[secret_key(row["provider_code"], row["secret_name"])]
        assert is_sealed(ciphertext)
        entries.append(
            {
                "provider_code": row["provider_code"],
                "secret_name": row["secret_name"],
                "key_id": key_id,
                "ciphertext": ciphertext,
            }
        )
    data = {
        "project_id": state.id,
        "from_key_ref": from_key_ref,
        "force": force,
        "target_key_ref": plan.target_key_ref,
        **plan.counters(),
        "secrets": entries,
    }
    return NewEvent(project_stream(state.id), "secrets.rotated", data, meta)


# -- evolvers ------------------------------------------------------------------------------------


@evolves("secret.set")
def _set(state: ProjectState, d: dict[str, Any], e: Event) -> None:
    at = to_seconds(e.recorded_at)
    key = secret_key(d["provider_code"], d["secret_name"])
    rows = state.items(COLLECTION)
    created = rows[key]["created_at"] if key in rows else at
    rows[key] = {
        "provider_code": d["provider_code"],
        "secret_name": d["secret_name"],
        "key_id": d.get("key_id"),
        "ciphertext": d.get("ciphertext") or "",
        "key_ref": d.get("key_ref") or DEFAULT_KEY_REF,
        "created_at": created,
        "updated_at": at,
    }


@evolves("secret.declared")
def _declared(state: ProjectState, d: dict[str, Any], e: Event) -> None:
    at = to_seconds(e.recorded_at)
    key = secret_key(d["provider_code"], d["secret_name"])
    rows = state.items(COLLECTION)
    if key in rows:
        rows[key]["updated_at"] = at
        return
    rows[key] = {
        "provider_code": d["provider_code"],
        "secret_name": d["secret_name"],
        "key_id": None,
        "ciphertext": "",
        "key_ref": DEFAULT_KEY_REF,
        "created_at": at,
        "updated_at": at,
    }


@evolves("secret.deleted")
def _deleted(state: ProjectState, d: dict[str, Any], _e: Event) -> None:
    state.items(COLLECTION).pop(secret_key(d["provider_code"], d["secret_name"]), None)


@evolves("secrets.rotated")
def _rotated(state: ProjectState, d: dict[str, Any], e: Event) -> None:
    at = to_seconds(e.recorded_at)
    rows = state.items(COLLECTION)
    for entry in d["secrets"]:
        row = rows.get(secret_key(entry["provider_code"], entry["secret_name"]))
        if row is None:
            continue
        row["key_ref"] = d["target_key_ref"]
        row["updated_at"] = at
        if "ciphertext" in entry:
            row["key_id"], row["ciphertext"] = entry["key_id"], entry["ciphertext"]
