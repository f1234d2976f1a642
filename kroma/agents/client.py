"""One dispatch to the agent API (pipeline spec §7.2): POST the instruction, with tries and backoff.

The URL and token are passed in and never logged or put into an error text by this module.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec

from kroma.domain.agent_instructions import DISPATCH_FAILED_TEXT, DispatchOutcome

ERROR_BODY_LIMIT = 2000  # characters of a non-2xx body kept in the error text
MIN_SECONDS = 0.1

Sleep = Callable[[float], Awaitable[None]]
Proceed = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Target:
    """Where an instruction goes. Both values may come from a project's secrets: no repr."""

    url: str = field(repr=False)
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Tries:
    """`--dispatch-timeout`, `--dispatch-retries`, `--dispatch-backoff-seconds`."""

    timeout: float = 20.0
    retries: int = 2
    backoff: float = 1.5

    @property
    def count(self) -> int:
        return max(0, self.retries) + 1

    @property
    def per_try_seconds(self) -> float:
        return max(self.timeout, MIN_SECONDS)

    def pause_after(self, try_number: int) -> float:
        return max(self.backoff, MIN_SECONDS) * try_number

    @property
    def worst_case_seconds(self) -> float:
        """The longest a dispatch can take: every try timing out, with every pause between."""
        pauses = sum(self.pause_after(n) for n in range(1, self.count))
        return self.count * self.per_try_seconds + pauses


class _RedactAgentUrls(logging.Filter):
    """httpx logs every request's URL at INFO; an agent URL may come from a project secret, so
    while it is being dispatched to it appears in that log as `<agent_api_url>`."""

    def __init__(self) -> None:
        super().__init__()
        self.active: collections.Counter[str] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and isinstance(record.args, tuple):
            record.args = tuple("<agent_api_url>" if str(arg) in self.active else arg for arg in record.args)
        return True


_redact = _RedactAgentUrls()
logging.getLogger("httpx").addFilter(_redact)


@contextmanager
def _redacted(url: str) -> Iterator[None]:
    _redact.active[url] += 1
    try:
        yield
    finally:
        _redact.active[url] -= 1
        if _redact.active[url] <= 0:
            del _redact.active[url]


def request_body(instruction_id: str, project_slug: str, text: str) -> bytes:
    return msgspec.json.encode(
        {
            "instruction_id": instruction_id,
            "project_slug": project_slug,
            "instruction_type": "agent_instruction",
            "objective": text,
            "payload": {"instruction_text": text},
        }
    )


def parse_response(content: bytes) -> Any:
    """The 2xx body as JSON; an empty or invalid body is `{}`."""
    try:
        return msgspec.json.decode(content) if content.strip() else {}
    except msgspec.DecodeError:
        return {}


async def _always() -> bool:
    return True


async def dispatch(
    target: Target,
    body: bytes,
    tries: Tries,
    *,
    sleep: Sleep = anyio.sleep,
    proceed: Proceed = _always,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DispatchOutcome:
    """POST `body` up to `tries.count` times; any 2xx is success. After a failed try (not the last)
    wait `backoff x try number` seconds, then ask `proceed` whether to go on (a canceled
    instruction is not tried again). Each try ends after `timeout` seconds at the latest."""
    headers = {"Content-Type": "application/json"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    timeout = tries.per_try_seconds
    error, status = "", None
    with _redacted(_logged_form(target.url)):
        async with httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False) as http:
            for number in range(1, tries.count + 1):
                if number > 1:
                    await sleep(tries.pause_after(number - 1))
                    if not await proceed():
                        break
                try:
                    with anyio.fail_after(timeout):
                        response = await http.post(target.url, content=body, headers=headers)
                except (TimeoutError, httpx.TimeoutException):
                    error, status = f"timeout: no response within {timeout:g}s", None
                    continue
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    error, status = str(exc).strip() or type(exc).__name__, None
                    continue
                if 200 <= response.status_code < 300:
                    parsed = parse_response(response.content)
                    return DispatchOutcome(ok=True, http_status=response.status_code, response=parsed)
                status = response.status_code
                error = f"http_{status}:{response.text[:ERROR_BODY_LIMIT]}"
    return DispatchOutcome(ok=False, http_status=status, error=scrub(error, target) or DISPATCH_FAILED_TEXT)


def _logged_form(url: str) -> str:
    """The URL as httpx writes it into its log."""
    try:
        return str(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return url


def scrub(text: str, target: Target) -> str:
    """An error text without the URL or token in it (a remote may echo them)."""
    for secret, mark in ((target.token, "<agent_api_token>"), (target.url, "<agent_api_url>")):
        if len(secret) >= 6:  # a tiny value would mangle the text and hide nothing
            text = text.replace(secret, mark)
    return text
