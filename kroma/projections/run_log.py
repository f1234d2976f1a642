"""The run log document (pipeline spec §4.7, §4.8), folded from one run's stream.

Tools that read the reference's run-log files get the same document from
`GET .../runs/{runId}/log`; it is computed from the events each time (a run's stream is short), so
it can never disagree with the log.
"""

from __future__ import annotations

from typing import Any

from kroma.domain import runs as ev
from kroma.events.envelope import Event

CANDIDATE_STEPS = (ev.CANDIDATE_GENERATED, *ev.POST_PASSES, ev.CANDIDATE_CHECKED, ev.CANDIDATE_REJECTED)


def document(events: list[Event]) -> dict[str, Any]:
    """The run log of the run whose stream is `events` (KeyError when it has no `run.requested`)."""
    requested = next(e.data for e in events if e.type == ev.RUN_REQUESTED)
    first = next((e.data for e in events if e.type == ev.CANDIDATE_GENERATED), {})  # the run's model (§4.2)
    jobs: dict[str, dict[str, Any]] = {}
    candidates: dict[str, dict[int, dict[str, Any]]] = {}
    for event in events:
        d = event.data
        if event.type == ev.JOB_PLANNED:
            jobs[d["job_id"]] = ev.planned_job_record(d)
        elif event.type in CANDIDATE_STEPS and "record" in d:
            candidates.setdefault(d["job_id"], {})[d["candidate_index"]] = d["record"]
        elif event.type in (ev.JOB_WINNER_SELECTED, ev.JOB_FAILED) and "record" in d:
            jobs[d["job_id"]] = d["record"]
    for job_id, records in candidates.items():
        if job_id in jobs and "candidates" not in jobs[job_id]:  # a job still being worked
            jobs[job_id] = {**jobs[job_id], "status": "running", "candidates": [records[k] for k in sorted(records)]}
    return {
        "timestamp": requested["timestamp"],
        "project": requested["project_slug"],
        "mode": requested["mode"],
        "stage": requested["stage"],
        "time": requested["time"],
        "weather": requested["weather"],
        "model": first.get("model", ""),
        "size": first.get("size", ""),
        "quality": first.get("quality", ""),
        "generation": requested["generation"],
        "postprocess": requested["postprocess"],
        "output_guard": requested["output_guard"],
        "storage": requested["storage"],
        "jobs": list(jobs.values()),
    }
