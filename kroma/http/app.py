"""create_app(settings) -> the Litestar application."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware

from kroma import __version__
from kroma.config import Settings
from kroma.http import docs
from kroma.http.deps import get_services
from kroma.http.errors import to_response
from kroma.http.middleware import RequestMiddleware, options_allow
from kroma.http.routes.catalog import all_routes
from kroma.http.streams import StreamSlots
from kroma.services import Services

# The reference catalog's size: /health reports it (contract §0).
CONTRACT_ROUTE_COUNT = 74


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    services = services or Services(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        await services.open()
        try:
            yield
        finally:
            await services.close()

    app = Litestar(
        route_handlers=[*all_routes(), docs.assets_router()],
        dependencies={"services": Provide(get_services, sync_to_thread=False)},
        # One layer: 401/403, then the request context, idempotency and strict body types.
        middleware=[DefineMiddleware(RequestMiddleware)],
        exception_handlers={Exception: to_response},
        lifespan=[lifespan],
        openapi_config=docs.openapi_config("Kroma API", __version__),  # offline page, real statuses
        request_max_body_size=settings.request_max_bytes,  # uploads have their own (upload_max_bytes)
        debug=False,
        logging_config=None,
    )
    docs.install(app)
    app.asgi_handler = options_allow(app.routes, app.asgi_handler)
    app.state.services = services
    app.state.stream_slots = StreamSlots(settings.sse_streams_per_token)
    app.state.started_unix_ms = int(time.time() * 1000)
    app.state.route_count = CONTRACT_ROUTE_COUNT
    logging.getLogger("kroma").setLevel(settings.log_level.upper())
    return app
