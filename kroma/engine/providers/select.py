"""Which provider a run uses, built with its credentials (decrypted only in memory, never logged).

OpenAI's key: the project's secret `openai`/`api_key`, else `OPENAI_API_KEY` from the process
environment, else from `<app root>/.env` (§4.4). Its base URL: the project's `openai` provider
account `base_url`, else `OPENAI_BASE_URL`, else the public endpoint, so any compatible server works.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio

from kroma.domain import secrets
from kroma.domain.aggregate import ProjectState
from kroma.engine.providers.base import Provider, ProviderError
from kroma.engine.providers.local import LocalProvider
from kroma.engine.providers.openai import OpenAIProvider
from kroma.vault import Vault

MISSING_KEY = "Missing OPENAI_API_KEY in environment or .env"


def parse_dotenv(text: str) -> dict[str, str]:
    """`dotenv_utils.rs`: trimmed lines, `#` comments, optional `export `, split at the first `=`,
    matching quotes removed, otherwise anything after ` #` is a comment."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def environment(app_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The process environment over `<app root>/.env` (the process wins)."""
    dotenv = app_root / ".env"
    merged = parse_dotenv(dotenv.read_text(errors="replace")) if dotenv.is_file() else {}
    merged.update(environ)
    return merged


async def openai_key(state: ProjectState, vault: Vault, env: Mapping[str, str]) -> str | None:
    stored = secrets.find(state, "openai", "api_key")
    if stored and stored.get("ciphertext") and stored.get("key_id"):
        keys = await vault.keys()
        return await keys.decrypt_secret(stored["key_id"], stored["ciphertext"])
    return env.get("OPENAI_API_KEY", "").strip() or None


def openai_base_url(state: ProjectState, env: Mapping[str, str]) -> str | None:
    account = state.items("provider_accounts").get("openai") or {}
    return (account.get("base_url") or "").strip() or env.get("OPENAI_BASE_URL", "").strip() or None


async def build_provider(
    code: str,
    state: ProjectState,
    vault: Vault,
    app_root: Path,
    environ: Mapping[str, str],
    cpu: anyio.CapacityLimiter,
) -> Provider:
    """The run's provider; an OpenAI run without a key fails with the reference's message."""
    if code == "local":
        return LocalProvider(limiter=cpu)
    env = await anyio.to_thread.run_sync(environment, app_root, environ)
    key = await openai_key(state, vault, env)
    if not key:
        raise ProviderError(MISSING_KEY)
    return OpenAIProvider(key, base_url=openai_base_url(state, env), environ=env)
