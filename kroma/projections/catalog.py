"""Every projection the application runs. Add a read model here to have it built and rebuilt."""

from __future__ import annotations

from kroma.projections.agent_instructions import AgentInstructionsProjection
from kroma.projections.asset_links import AssetLinksProjection
from kroma.projections.audit import AuditProjection
from kroma.projections.base import Projection
from kroma.projections.chat import ChatProjection
from kroma.projections.event_index import EventIndexProjection
from kroma.projections.projects import ProjectsProjection
from kroma.projections.records import record_projections
from kroma.projections.runs import RunsProjection
from kroma.projections.secrets import SecretsProjection
from kroma.projections.storage_sync import StorageSyncProjection
from kroma.projections.tokens import TokensProjection


def all_projections() -> list[Projection]:
    return [
        ProjectsProjection(),
        EventIndexProjection(),
        *record_projections(),
        RunsProjection(),
        ChatProjection(),
        AgentInstructionsProjection(),
        AssetLinksProjection(),
        TokensProjection(),
        SecretsProjection(),
        AuditProjection(),
        StorageSyncProjection(),
    ]
