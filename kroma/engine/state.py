"""A run's own stream folded into what the engine needs to know: what is planned, what is done.

The engine is a process manager: it never keeps progress anywhere but the log, so a restarted (or
duplicated) engine folds the stream again and continues from the last recorded step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kroma.domain import runs as ev
from kroma.events.envelope import Event


@dataclass
class CandidateState:
    index: int
    candidate_id: str | None = None
    generated: dict[str, Any] | None = None  # candidate.generated data
    passes: list[dict[str, Any]] = field(default_factory=list)  # post-process pass events' data
    checked: dict[str, Any] | None = None  # candidate.checked data
    rejected: dict[str, Any] | None = None
    last_event_id: str | None = None  # the candidate's latest step: the next step's causation

    @property
    def current_path(self) -> str | None:
        """The absolute path of the candidate's latest file (the last pass's output)."""
        if self.passes:
            return self.passes[-1]["output_abs"]
        return self.generated["output_abs"] if self.generated else None

    @property
    def current_asset_id(self) -> str | None:
        if self.passes:
            return self.passes[-1]["asset_id"]
        return self.generated["output_asset_id"] if self.generated else None


@dataclass
class JobState:
    planned: dict[str, Any]
    candidates: dict[int, CandidateState] = field(default_factory=dict)
    outcome: dict[str, Any] | None = None  # job.winner_selected or job.failed data
    outcome_type: str | None = None
    outcome_event_id: str | None = None

    @property
    def job_id(self) -> str:
        return self.planned["job_id"]

    def candidate(self, index: int) -> CandidateState:
        return self.candidates.setdefault(index, CandidateState(index))


@dataclass
class RunState:
    requested: dict[str, Any]
    requested_event_id: str
    jobs: dict[str, JobState] = field(default_factory=dict)
    started: dict[str, Any] | None = None
    started_event_id: str | None = None
    cancel_requested: dict[str, Any] | None = None
    cancel_event_id: str | None = None
    ended: Event | None = None
    last_outcome_event_id: str | None = None  # the latest job outcome in log order
    version: int = 0

    @property
    def run_id(self) -> str:
        return self.requested["run_id"]

    @property
    def project_id(self) -> str:
        return self.requested["project_id"]

    def ordered_jobs(self) -> list[JobState]:
        return sorted(self.jobs.values(), key=lambda j: j.planned["index"])


CANDIDATE_EVENTS = frozenset({ev.CANDIDATE_GENERATED, *ev.POST_PASSES, ev.CANDIDATE_CHECKED, ev.CANDIDATE_REJECTED})


def _apply_candidate(job: JobState, event: Event) -> None:
    d = event.data
    candidate = job.candidate(d["candidate_index"])
    candidate.candidate_id = d["candidate_id"]
    candidate.last_event_id = event.event_id
    if event.type == ev.CANDIDATE_GENERATED:
        candidate.generated = d
    elif event.type == ev.CANDIDATE_CHECKED:
        candidate.checked = d
    elif event.type == ev.CANDIDATE_REJECTED:
        candidate.rejected = d
    else:
        candidate.passes.append(d)


def fold_run(events: list[Event]) -> RunState | None:
    """The run's state from its stream (None when the stream holds no `run.requested`)."""
    state: RunState | None = None
    for event in events:
        d = event.data
        if event.type == ev.RUN_REQUESTED:
            state = RunState(requested=d, requested_event_id=event.event_id)
        if state is None:
            continue
        state.version = event.stream_version
        if event.type == ev.JOB_PLANNED:
            state.jobs[d["job_id"]] = JobState(planned=d)
        elif event.type == ev.RUN_STARTED:
            state.started, state.started_event_id = d, event.event_id
        elif event.type == ev.RUN_CANCEL_REQUESTED:
            state.cancel_requested = d
            state.cancel_event_id = event.event_id
        elif event.type in ev.RUN_ENDS:
            state.ended = event
        elif event.type in CANDIDATE_EVENTS and d.get("job_id") in state.jobs:
            _apply_candidate(state.jobs[d["job_id"]], event)
        elif event.type in (ev.JOB_WINNER_SELECTED, ev.JOB_FAILED) and d.get("job_id") in state.jobs:
            job = state.jobs[d["job_id"]]
            job.outcome, job.outcome_type, job.outcome_event_id = d, event.type, event.event_id
            state.last_outcome_event_id = event.event_id
    return state
