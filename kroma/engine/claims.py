"""Claims on a run's jobs: which engine works a job, and until when (its lease).

The unit of work is a job (its candidates, passes, QA and outcome): a job's steps share files and
its outcome needs every candidate, so one engine does all of them, while the jobs of one run spread
over every engine that follows the log. A job's claims live on its own stream `job:<job_id>`:

| type                | data (always run_id, project_id, job_id, claim_id, worker_id)              |
|---------------------|---------------------------------------------------------------------------|
| `job.claimed`       | job_key, attempt (claims of the job so far), lease_expires_at, host, pid, |
|                     | taken_over: the unreleased claim it replaces (claim_id, worker_id,        |
|                     | lease_expires_at, reason `lease_expired` / `process_gone`) or null        |
| `job.lease_renewed` | lease_expires_at                                                          |
| `job.released`      | reason `decided` / `stopped` / `failed`; failure (the run's failure:      |
|                     | status, error, error_code, error_kind) or null                            |

Every append on the stream names the version its writer folded, so the store decides a race: two
engines never hold one job at once. The holder's step appends on the run's stream name that version
too (a fence): once another engine has taken the job over, a late step of the old holder is
refused. A claim can be taken when it is released, when its lease has expired, or when its holder
ran on this host (same hostname and boot id) in a process that is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kroma.clock import iso_micro
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.processes import process_alive

JOB_CLAIMED = "job.claimed"
JOB_LEASE_RENEWED = "job.lease_renewed"
JOB_RELEASED = "job.released"
CLAIM_EVENTS = (JOB_CLAIMED, JOB_LEASE_RENEWED, JOB_RELEASED)


def job_stream(job_id: str) -> str:
    return f"job:{job_id}"


@dataclass
class Claim:
    claim_id: str
    worker_id: str
    host: str
    pid: int
    expires_at: str  # envelope timestamp format (microseconds): compares as text
    event_id: str
    released: str | None = None  # the release's reason

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= iso_micro(now)


@dataclass
class JobClaims:
    """A job's claim stream folded: its version (what the next append expects), the current claim
    and the first failure a holder recorded."""

    job_id: str
    version: int = 0
    current: Claim | None = None
    attempts: int = 0
    failure: dict[str, Any] | None = None
    failure_position: int = 0
    failure_event_id: str | None = None

    @property
    def decided(self) -> bool:
        """The job's outcome is recorded (its holder let go with it): nothing left to claim."""
        return self.current is not None and self.current.released == "decided"


def fold_claims(job_id: str, events: list[Event]) -> JobClaims:
    claims = JobClaims(job_id)
    for event in events:
        d = event.data
        claims.version = event.stream_version
        if event.type == JOB_CLAIMED:
            claims.attempts = d["attempt"]
            claims.current = Claim(
                d["claim_id"], d["worker_id"], d["host"], d["pid"], d["lease_expires_at"], event.event_id
            )
        elif claims.current is None or d.get("claim_id") != claims.current.claim_id:
            continue
        elif event.type == JOB_LEASE_RENEWED:
            claims.current.expires_at = d["lease_expires_at"]
        elif event.type == JOB_RELEASED:
            claims.current.released = d["reason"]
            if d.get("failure") and claims.failure is None:
                claims.failure = d["failure"]
                claims.failure_position, claims.failure_event_id = event.position, event.event_id
    return claims


def open_claim(claims: JobClaims, now: datetime, host: str, pid: int) -> tuple[Claim | None, str | None]:
    """(the claim that still holds the job, or None; why an unreleased claim no longer holds it)."""
    current = claims.current
    if current is None or current.released is not None:
        return None, None
    if current.expired(now):
        return None, "lease_expired"
    if current.host == host and current.pid != pid and not process_alive(current.pid):
        return None, "process_gone"
    return current, None


@dataclass(frozen=True)
class Holder:
    """The engine taking claims: its name in the log and where it runs."""

    worker_id: str
    host: str
    pid: int
    lease_seconds: float


def decide_claim(
    claims: JobClaims,
    base: dict[str, Any],
    holder: Holder,
    claim_id: str,
    now: datetime,
    meta: Metadata,
) -> NewEvent | None:
    """`job.claimed` when no claim holds the job (None when one does)."""
    holding, why = open_claim(claims, now, holder.host, holder.pid)
    if holding is not None or claims.decided:
        return None
    previous = claims.current
    taken_over = None
    if why is not None and previous is not None:
        taken_over = {
            "claim_id": previous.claim_id,
            "worker_id": previous.worker_id,
            "lease_expires_at": previous.expires_at,
            "reason": why,
        }
    data = {
        **base,
        "claim_id": claim_id,
        "worker_id": holder.worker_id,
        "attempt": claims.attempts + 1,
        "lease_expires_at": lease_end(now, holder.lease_seconds),
        "host": holder.host,
        "pid": holder.pid,
        "taken_over": taken_over,
    }
    return NewEvent(job_stream(base["job_id"]), JOB_CLAIMED, data, meta)


def lease_end(now: datetime, seconds: float) -> str:
    return iso_micro(now + timedelta(seconds=seconds))


class JobLost(Exception):
    """This engine no longer holds the job (another took it over, or the lease ran out)."""


@dataclass
class HeldClaim:
    """A claim this engine holds: the stream version its appends expect and its lease."""

    base: dict[str, Any]  # run_id, project_id, job_id
    claim_id: str
    worker_id: str
    version: int
    expires_at: str
    event_id: str
    lost: bool = False
    released: bool = False

    @property
    def stream(self) -> str:
        return job_stream(self.base["job_id"])

    def usable(self, now: datetime, margin: float) -> bool:
        """Still safe to start a paid call or write a file: held, and the lease has `margin`
        seconds left (a taker on another host compares with its own clock)."""
        return not self.lost and iso_micro(now + timedelta(seconds=margin)) < self.expires_at

    def adopt(self, claims: JobClaims) -> None:
        """Follow the stream after an append by someone else; lost when it is not ours any more."""
        current = claims.current
        if current is None or current.claim_id != self.claim_id or current.released is not None:
            self.released = current is not None and current.claim_id == self.claim_id  # by this engine
            self.lost = True
            raise JobLost(self.base["job_id"])
        self.version, self.expires_at = claims.version, current.expires_at

    def event(self, kind: str, data: dict[str, Any], meta: Metadata) -> NewEvent:
        payload = {**self.base, "claim_id": self.claim_id, "worker_id": self.worker_id, **data}
        return NewEvent(self.stream, kind, payload, meta)
