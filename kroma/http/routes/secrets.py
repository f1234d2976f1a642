"""Project secrets (contract §2 rows 70-74, §3.13): metadata reads, encrypted upsert, rotation,
crypto-shredding delete.

A value is sealed with a fresh per-secret data key before its event is built (only the
ciphertext enters the log); the key of the value it replaces, or of a deleted secret, is
destroyed once the command has committed. Nothing is destroyed for an idempotent replay.
"""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Response, Router, delete, get, post
from litestar.params import FromPath, JSONBody

from kroma.crypto import CryptoError, KeyStore
from kroma.domain import secrets as domain
from kroma.domain.errors import NotFound
from kroma.domain.handling import Decision
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import secrets as read
from kroma.vault import crypto_failure


@get("/")
async def list_secrets(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    project = await project_row(services, slug)
    rows = await read.list_secrets(services.reader, project["id"])
    return responses.ok(count=len(rows), secrets=rows)


@get("/rotation-status")
async def rotation_status(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    project = await project_row(services, slug)
    return responses.ok(status=await read.rotation_status(services.reader, project["id"]))


async def _destroy(keys: KeyStore, *key_ids: str | None) -> None:
    for key_id in key_ids:
        if key_id:
            try:
                await keys.destroy(key_id)
            except CryptoError as exc:
                raise crypto_failure(exc) from None


@post("/")
async def upsert_secret(
    slug: FromPath[str], data: JSONBody[domain.UpsertSecret], services: ServicesDep
) -> Response[bytes]:
    code, name, value = domain.validate_upsert(data)
    keys = await services.vault.keys(create_master_key=True)
    state = await project_state(services, slug)
    key_id = services.clock.new_id()  # a fresh data key per value: never reused after a destroy
    try:
        ciphertext = await keys.encrypt_secret(key_id, value)
    except CryptoError as exc:
        raise crypto_failure(exc) from None
    key_ref = services.vault.current_key_ref
    del value

    def decide(s: Any, meta: Metadata) -> Decision:
        event, previous = domain.decide_set(s, code, name, key_id, ciphertext, key_ref, meta)
        return Decision([event], result=previous)

    try:
        outcome = await services.commands.on_project(state.id, decide)
    except BaseException:
        with contextlib.suppress(Exception):
            await keys.destroy(key_id)  # nothing references it
        raise
    if outcome.append.replayed:
        await _destroy(keys, key_id)
    elif outcome.result != key_id:
        await _destroy(keys, outcome.result)  # the replaced value is shredded too
    await services.settle(outcome.append.last_position)
    secret = await read.find_secret(services.reader, state.id, code, name)
    return responses.ok(secret=secret, audit_id=outcome.audit_id)


@post("/rotate")
async def rotate_secrets(
    slug: FromPath[str], data: JSONBody[domain.RotateSecrets], services: ServicesDep
) -> Response[bytes]:
    """Re-wrap the data keys of the secrets in scope under the current master key (the event log
    keeps its ciphertext: the data keys do not change). Legacy plaintext rows are sealed."""
    state = await project_state(services, slug)
    force = bool(data.force)
    vault = services.vault
    created: list[str] = []
    used: set[str] = set()

    async def attempt(meta: Metadata) -> Decision:
        current, version = await services.commands.load_project(state.id)
        assert current is not None
        plan = domain.plan_rotation(current, data.from_key_ref, force, vault.current_key_ref)
        resealed: dict[str, tuple[str, str]] = {}
        if plan.rotated:  # nothing to do: no key is loaded at all
            keys = await vault.keys()
            try:
                if plan.rewrap:
                    report = await keys.rewrap([row["key_id"] for row in plan.rewrap], force=True)
                    if report.missing:
                        raise crypto_failure(KeyError(f"data keys missing: {report.missing}"))
                for row in plan.reseal:
                    new_id = services.clock.new_id()
                    created.append(new_id)
                    sealed = await keys.encrypt_secret(new_id, row["ciphertext"])
                    resealed[domain.secret_key(row["provider_code"], row["secret_name"])] = (new_id, sealed)
            except CryptoError as exc:
                raise crypto_failure(exc) from None
        used.clear()
        used.update(key_id for key_id, _ in resealed.values())
        event = domain.decide_rotation(current, plan, data.from_key_ref, force, resealed, meta)
        return Decision([event], {event.stream_id: version}, plan.counters())

    try:
        outcome = await services.commands.execute(attempt)
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                await _destroy(await vault.keys(), *created)
        raise
    if created:
        keep = set() if outcome.append.replayed else used
        await _destroy(await vault.keys(), *(k for k in created if k not in keep))
    await services.settle(outcome.append.last_position)
    return responses.ok(rotation=outcome.result, audit_id=outcome.audit_id)


@delete("/{provider_code:str}/{secret_name:str}", status_code=200)
async def delete_secret(
    slug: FromPath[str], provider_code: FromPath[str], secret_name: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    """Delete the row and destroy its data key: the ciphertext left in the log's old events can
    never be opened again (crypto-shredding); the hash chain is untouched."""
    code, name = domain.path_key(slug, provider_code, secret_name)
    state = await project_state(services, slug, domain.NOT_FOUND)
    existing = domain.find(state, code, name)
    if existing is None:
        raise NotFound(domain.NOT_FOUND)
    if existing["key_id"]:
        await services.vault.keys()  # a key store that cannot shred fails before the delete

    def decide(s: Any, meta: Metadata) -> Decision:
        event, key_id = domain.decide_delete(s, code, name, meta, (provider_code, secret_name))
        return Decision([event], result=key_id)

    outcome = await services.commands.on_project(state.id, decide)
    if outcome.result and not outcome.append.replayed:
        await _destroy(await services.vault.keys(), outcome.result)
    await services.settle(outcome.append.last_position)
    return responses.ok(deleted=True, audit_id=outcome.audit_id)


router = Router(
    "/api/projects/{slug:str}/secrets",
    route_handlers=[list_secrets, rotation_status, upsert_secret, rotate_secrets, delete_secret],
    tags=["secrets"],
)
