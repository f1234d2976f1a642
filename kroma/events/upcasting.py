"""Schema evolution: old event shapes are upcast on read, never rewritten.

An event type whose data changes shape in a way msgspec's rules do not allow (a new field without
a default, a renamed or retyped field) gets a new schema version. Events already in the log keep
their stored bytes, so the hash chain still verifies; every reader of the log (projections, the
project aggregate, the engine, the HTTP views of the log) gets them through `upcast`, which applies
the registered upcasters in order (N -> N+1 -> ... -> current), so all code downstream of the store
only ever sees the current shape. An Event read back carries the schema version of the data it
holds (the upcast one); exports and verification use the stored bytes and stored version.

An upcaster is a pure function of the old data (a dict) to the new data; it must not depend on the
time or anything outside the event, so a rebuild reproduces the read models exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}
_CURRENT: dict[str, int] = {}
EVOLVED: set[str] = set()  # event types with at least one upcaster (a cheap test on the read path)


def upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn` as the step from `from_version` to `from_version + 1` of `type_`."""

    def register(fn: Upcaster) -> Upcaster:
        key = (type_, from_version)
        if key in _UPCASTERS and _UPCASTERS[key] is not fn:
            raise ValueError(f"{type_} v{from_version} already has an upcaster")
        _UPCASTERS[key] = fn
        _CURRENT[type_] = max(_CURRENT.get(type_, 1), from_version + 1)
        EVOLVED.add(type_)
        return fn

    return register


def unregister(type_: str, from_version: int) -> None:
    """Drop one step (for tests that register their own evolutions)."""
    _UPCASTERS.pop((type_, from_version), None)
    versions = [v + 1 for (t, v) in _UPCASTERS if t == type_]
    if versions:
        _CURRENT[type_] = max(versions)
    else:
        _CURRENT.pop(type_, None)
        EVOLVED.discard(type_)


def current_version(type_: str) -> int:
    """The schema version writers use for `type_` (1 until it has evolved)."""
    return _CURRENT.get(type_, 1)


def upcast(type_: str, version: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(version, data) brought to the newest shape this code knows. Data of a version with no
    upcaster (the current one, or a newer one written by later code) is returned unchanged."""
    while (step := _UPCASTERS.get((type_, version))) is not None:
        data = step(data)
        version += 1
    return version, data


# -- the evolutions ---------------------------------------------------------------------------------


@upcaster("secret.deleted", 1)
def _secret_deleted_path_spelling(data: dict[str, Any]) -> dict[str, Any]:
    """v2 always carries how the request path spelled the provider code and secret name (the audit
    trail shows them, contract §6.1). v1 events written before that have only the normalised key,
    which is also what the path said as far as anyone can know."""
    return {
        **data,
        "path_provider_code": data.get("path_provider_code", data.get("provider_code")),
        "path_secret_name": data.get("path_secret_name", data.get("secret_name")),
    }
