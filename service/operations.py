"""Health, readiness and metrics: what an orchestrator and a scraper call."""

from __future__ import annotations

import logging

from marshmallow import Schema, fields
from starlette.requests import Request
from starlette.responses import Response

from service.auth import database
from service.db import is_database_unavailable
from service.errors import Problem
from service.metrics import exposition, observe_pool, observe_replicas
from service.openapi import documented
from service.responses import JSONResponse

log = logging.getLogger("service.operations")


class StatusOut(Schema):
    status = fields.String(required=True)


@documented(responses={200: StatusOut})
async def health(request: Request) -> Response:
    """200 while the process serves; touches no database."""
    return JSONResponse({"status": "ok"})


@documented(responses={200: StatusOut})
async def ready(request: Request) -> Response:
    """200 when the database answers, 503 while it does not (and 200 again once it is back), and
    503 from the moment this worker is told to stop (SIGTERM), so a load balancer sends no more."""
    if request.state.drain.active:
        raise Problem(503, "This instance is shutting down.", headers={"Retry-After": "1"})
    try:
        await database(request).ping()
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        log.warning("not ready: database unavailable (%s)", exc.__class__.__name__)
        raise Problem(503, "The database is not answering.", headers={"Retry-After": "1"}) from None
    return JSONResponse({"status": "ready"})


@documented(responses={200: "text/plain"})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    db = database(request)
    observe_pool(*db.pool_stats())
    if db.replicas is not None:  # as this worker sees them now, not at its monitor's last look
        observe_replicas(db.replicas.replicas)
    body, content_type = exposition()
    return Response(body, media_type=content_type)
