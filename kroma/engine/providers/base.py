"""The image-provider protocol: one call makes one candidate image (contract §4.4: no `n`)."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class GenerationRequest(msgspec.Struct, kw_only=True, frozen=True):
    """What the engine asks of a provider for one candidate."""

    prompt: str
    input_images: tuple[str, ...]  # absolute paths: the scene first, then the style references
    seed: int  # per candidate; deterministic providers use it, remote ones record it
    model: str | None = None  # None: the provider's own resolution (env, defaults)
    size: str | None = None  # "WIDTHxHEIGHT"
    quality: str | None = None


class GenerationResult(msgspec.Struct, kw_only=True, frozen=True):
    """The image (PNG bytes as returned) and everything needed to reproduce and price the call."""

    image: bytes
    provider: str
    model: str
    size: str
    quality: str
    seed: int | None = None
    request_id: str | None = None  # the provider's id for the call, when it gives one
    attempts: int = 1  # HTTP attempts including retries
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)  # what was sent, no secrets


class ProviderError(Exception):
    """A provider call failed; `message` is the contract's verbatim text (§4.4), e.g.
    `HTTP 500: {body}`, `API returned no image payload`, `OpenAI request failed: {e}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Provider(Protocol):
    @property
    def code(self) -> str: ...  # "local" | "openai"

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def aclose(self) -> None: ...
