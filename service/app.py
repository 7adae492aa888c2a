"""The application factory: routes, middleware, error handlers and the database's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from service import customers, operations, purchases, reports
from service.config import Settings, load_settings
from service.db import create_schema, open_database
from service.errors import EXCEPTION_HANDLERS
from service.idempotency import purge_forever
from service.logs import configure_logging
from service.metrics import observe_pool
from service.middleware import RequestContextMiddleware

log = logging.getLogger("service")


class TemplatedRoute(Route):
    """A Route that leaves its path template (`/purchases/{id}`) in the scope for logs and metrics."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route_path"] = self.path
        return match, child_scope


def route(
    path: str, endpoint: Callable[[Request], Awaitable[Response]], methods: Sequence[str] = ("GET",)
) -> TemplatedRoute:
    return TemplatedRoute(path, endpoint, methods=list(methods))


def all_routes() -> list[BaseRoute]:
    return [
        route("/health", operations.health),
        route("/ready", operations.ready),
        route("/metrics", operations.metrics),
        route("/purchases", purchases.create_purchase, methods=["POST"]),
        route("/purchases", purchases.index_purchases),
        route("/purchases/batch", purchases.create_purchase_batch, methods=["POST"]),
        route("/purchases/{id:int}", purchases.show_purchase),
        route("/customers", customers.list_customers),
        route("/customers/{id:int}", customers.show_customer),
        route("/customers/{id:int}/purchases", purchases.customer_purchases),
        route("/customers/{id:int}/summary", customers.show_customer_summary),
        route("/reports/sales", reports.sales),
    ]


async def _refresh_pool_gauges(db: Any) -> None:
    # With several workers a scrape reaches one of them; each keeps its own pool gauges current.
    while True:
        observe_pool(*db.pool_stats())
        await asyncio.sleep(1.0)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await asyncio.to_thread(create_schema, settings.database_url)
        db = open_database(settings)
        await db.connect()
        chores = [asyncio.create_task(purge_forever(db))]
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            chores.append(asyncio.create_task(_refresh_pool_gauges(db)))
        log.info("serving on %s", db.dialect)
        try:
            yield {"db": db, "settings": settings}
        finally:
            for chore in chores:
                chore.cancel()
            await db.disconnect()

    return Starlette(
        routes=all_routes(),
        middleware=[Middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )


def serve_app() -> Starlette:
    """What uvicorn loads in each worker (`service.app:serve_app`, factory): logging, then the app."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
