from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from kroma import __version__
from kroma.http import responses

SERVICE = "kroma-backend-core"


@get("/health", sync_to_thread=False)
def health(state: State) -> Response[bytes]:
    return responses.ok(
        status="ok",
        service=SERVICE,
        version=__version__,
        started_unix_ms=state.started_unix_ms,
        route_count=state.route_count,
    )
