"""The reference's run-log records (pipeline spec §4.5, §4.6) built from the engine's state, so
the read models' `meta_json` and the run log document show what the reference's files showed."""

from __future__ import annotations

from typing import Any

from kroma.engine.state import CandidateState, JobState

ZERO_RANK = {"hard_failures": 0, "soft_warnings": 0, "avg_chroma_exceed": 0.0}
PASS_KEYS = {"bg_remove": "bg_remove", "upscale": "upscale", "color": "color"}


def candidate_record(candidate: CandidateState) -> dict[str, Any]:
    """§4.5: candidate_index, output, status, rank, the passes run, output_guard, final_output."""
    generated = candidate.generated or {}
    record: dict[str, Any] = {
        "candidate_index": candidate.index,
        "output": generated.get("output"),
        "status": "generated",
        "rank": dict(ZERO_RANK),
    }
    for step in candidate.passes:
        record[step["pass"]] = step["details"]
    if candidate.checked:
        checked = candidate.checked
        record["status"] = checked["status"]
        record["rank"] = checked["rank"]
        record["output_guard"] = dict(checked["output_guard"])
        if candidate.rejected:
            record["output_guard"]["bad_archive"] = candidate.rejected["bad_archive"]
        if checked["status"] == "done":
            record["final_output"] = checked["final_output"]
    return record


def job_record(job: JobState, planned_object: dict[str, Any]) -> dict[str, Any]:
    """§4.6: the planned job with its candidates and, once decided, its outcome."""
    record = dict(planned_object)
    candidates = [candidate_record(job.candidates[k]) for k in sorted(job.candidates)]
    record["candidates"] = candidates
    record["selected_candidate"] = None
    record["final_output"] = None
    if job.outcome is None:
        record["status"] = "running" if candidates else planned_object["status"]
        return record
    selected = job.outcome.get("selected_candidate")
    if selected is None:
        record["status"] = "failed_output_guard"
        record["failure_reason"] = job.outcome.get("failure_reason", "all_candidates_failed_output_guard")
        return record
    winner = next(c for c in candidates if c["candidate_index"] == selected)
    record.update(status="done", selected_candidate=selected, final_output=winner.get("final_output"))
    record["output"] = winner.get("final_output")
    for key in ("bg_remove", "upscale", "color", "output_guard"):
        if key in winner:
            record[key] = winner[key]
    return record
