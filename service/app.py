"""The application factory: routes, middleware, error handlers and the database's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from service import accounts, customers, operations, pages, purchases, reports, social
from service.access import Access, access_of, guarded
from service.auth import AuthSettings
from service.config import SCHEMA_CHECKED, Settings, load_settings
from service.db import open_database, watch_replicas
from service.draining import Drain
from service.errors import EXCEPTION_HANDLERS
from service.housekeeping import purge_forever, refresh_pool_gauges
from service.logs import configure_logging
from service.middleware import RequestContextMiddleware
from service.rate_limits import rate_limits_from
from service.tokens import signing_key
from service.tracing import (
    INSTRUMENTATION_NAME,
    TracingMiddleware,
    exporting_from_environment,
    tracing_requested,
)
from service.validation import USERNAME_REGEX

log = logging.getLogger("service")

# How long a thread may hold the GIL while another asks for it (Python's default: 5 ms); see serve_app.
SWITCH_INTERVAL_SECONDS = 0.001


# A route's own function: (request) for anyone's routes, (request, caller) behind service.access.
Handler = Callable[..., Awaitable[Response]]


class UsernameConvertor(Convertor[str]):
    """`{username:username}`: a path segment that can be a username, or no match (404) - so nothing
    else (a NUL, which PostgreSQL refuses in text) ever reaches a query."""

    regex = USERNAME_REGEX

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("username", UsernameConvertor())


class TemplatedRoute(Route):
    """A Route that leaves its path template (`/purchases/{id}`) in the scope for logs and metrics.

    `handlers` maps each method to its handler and `access` to what it needs (service.access), for
    the OpenAPI document.
    """

    handlers: Mapping[str, Handler]
    access: Mapping[str, Access]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route_path"] = self.path
        return match, child_scope


def route(path: str, handlers: Handler | Mapping[str, Handler]) -> TemplatedRoute:
    """One route per path: a handler for GET, or a handler per method (so 405's Allow lists them all).

    Each handler runs behind what service.access.WHO_MAY_CALL says it needs; one without an entry
    there stops the app from being built.
    """
    documented = {"GET": handlers} if callable(handlers) else dict(handlers)
    access = {method: access_of(method, path) for method in documented}
    by_method = {method: guarded(access[method], handler) for method, handler in documented.items()}
    if callable(handlers):
        single = TemplatedRoute(path, by_method["GET"], methods=["GET"])
        single.handlers, single.access = documented, access
        return single

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method[method](request)

    dispatch.__doc__ = " ".join(f"{method}: {handler.__doc__}" for method, handler in by_method.items())
    several = TemplatedRoute(path, dispatch, methods=list(by_method), name=path)
    several.handlers, several.access = documented, access
    return several


def all_routes() -> list[BaseRoute]:
    return [
        # The hottest routes first: the router tries each pattern in turn.
        route("/purchases", {"GET": purchases.index_purchases, "POST": purchases.create_purchase}),
        route("/posts", {"GET": social.list_posts, "POST": social.create_post}),
        route("/", pages.purchase_page),
        route("/docs", pages.docs),
        route("/openapi.json", pages.openapi_document),
        route("/health", operations.health),
        route("/ready", operations.ready),
        route("/metrics", operations.metrics),
        route("/purchases/batch", {"POST": purchases.create_purchase_batch}),
        route("/purchases/{id:int}", purchases.show_purchase),
        route("/customers", customers.list_customers),
        route("/customers/{id:int}", customers.show_customer),
        route("/customers/{id:int}/purchases", purchases.customer_purchases),
        route("/customers/{id:int}/summary", customers.show_customer_summary),
        route("/reports/sales", reports.sales),
        route("/auth/register", {"POST": accounts.register}),
        route("/auth/login", {"POST": accounts.login}),
        route("/auth/logout", {"POST": accounts.logout}),
        route("/auth/sessions", accounts.list_sessions),
        route("/auth/sessions/{id:int}", {"DELETE": accounts.end_session}),
        route("/users/me", accounts.me),  # before /users/{username}; "me" is too short to be a username
        route(
            "/posts/{id:int}",
            {"GET": social.show_post, "PATCH": social.edit_post, "DELETE": social.delete_post},
        ),
        route("/posts/{id:int}/comments", {"GET": social.list_comments, "POST": social.create_comment}),
        route("/posts/{id:int}/like", {"PUT": social.like, "DELETE": social.unlike}),
        route("/posts/{id:int}/repost", {"PUT": social.repost, "DELETE": social.unrepost}),
        route("/users/{username:username}", social.show_user),
        route("/users/{username:username}/posts", social.user_posts),
        route("/users/{username:username}/followers", social.followers),
        route("/users/{username:username}/following", social.following),
        route("/users/{username:username}/follow", {"PUT": social.follow, "DELETE": social.unfollow}),
        route("/feed", social.feed),
        *pages.static_mounts(),
    ]


def create_app(
    settings: Settings | None = None, *, check_schema: bool = True, tracer_provider: Any = None
) -> Starlette:
    """The app; it traces with `tracer_provider`, or as the OTEL_* variables say (off when they are unset)."""
    settings = settings or load_settings()
    exporting = exporting_from_environment() if tracer_provider is None and tracing_requested() else None
    if exporting is not None:
        tracer_provider = exporting.provider
    tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME) if tracer_provider is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if check_schema:
            from service.migrations.schema import prepare_schema

            log.info(
                await asyncio.to_thread(
                    prepare_schema, settings.schema_database_url, settings.migration_policy
                )
            )
        auth = AuthSettings(
            signing_key=await asyncio.to_thread(signing_key, settings),
            token_ttl=timedelta(seconds=settings.access_token_ttl),
            bcrypt_rounds=settings.bcrypt_rounds,
            session_retention=timedelta(hours=settings.session_retention_hours),
            dummy_hash=await accounts.make_dummy_hash(settings.bcrypt_rounds),
            login_throttle=settings.login_throttle,
        )
        db = open_database(settings, tracer=tracer)
        try:
            await db.connect()
        except asyncpg.ProtocolViolationError as exc:
            if "startup parameter" in str(exc):
                log.error(
                    "the database refused the timeouts as startup parameters (%s): a transaction-mode"
                    " pooler such as PgBouncer? Set DB_STATEMENT_CACHE=0 and MIGRATION_DATABASE_URL"
                    " (see Scaling out in the README)",
                    exc,
                )
            raise
        advice = await db.check_server_limits(settings.database_limits)
        if advice:
            log.warning(advice)
        if await accounts.first_staff(db) is None:
            log.warning(
                "no user is staff yet: only API keys can record or read purchases, customers and"
                " reports. Make one with: python -m service user set-role USERNAME staff"
            )
        chores = [asyncio.create_task(purge_forever(db, auth, tracer))]
        if db.replicas is not None:
            chores.append(asyncio.create_task(watch_replicas(db)))
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            chores.append(asyncio.create_task(refresh_pool_gauges(db)))
        drain = Drain()
        if drain.drain_on_sigterm(settings.shutdown_grace_seconds):
            log.info("SIGTERM drains for %s s (SHUTDOWN_GRACE_SECONDS)", settings.shutdown_grace_seconds)
        log.info("serving on %s", db.dialect)
        try:
            yield {
                "db": db,
                "settings": settings,
                "auth": auth,
                "drain": drain,
                "rate_limits": rate_limits_from(settings),
            }
        finally:
            for chore in chores:
                chore.cancel()
            await db.disconnect()
            if exporting is not None:
                await exporting.stop()  # the spans still queued go out first

    middleware = [Middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)]
    if tracer is not None:
        middleware.insert(0, Middleware(TracingMiddleware, tracer=tracer))  # outermost: the whole request
    return Starlette(
        routes=all_routes(),
        middleware=middleware,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )


def serve_app() -> Starlette:
    """What uvicorn loads in each worker (`service.app:serve_app`, factory): logging, then the app."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, check_schema=os.environ.get(SCHEMA_CHECKED) != "1")
    # What is loaded by now (modules, schemas, routes: ~100,000 objects) lives as long as the worker;
    # frozen, the cyclic collector stops walking it. Unfrozen, each full collection took 45-70 ms
    # under load and every request in flight waited it out: most of POST /purchases' p99.
    gc.collect()
    gc.freeze()
    # A request makes a few hundred container objects, nearly all freed by reference counting; at
    # the default 700 allocations a young collection ran every request or two (470 ms of each 10 s
    # under POST /purchases load), at 20,000 a few times a second (31 ms).
    gc.set_threshold(20_000, 10, 10)
    # On SQLite each statement runs on a connection's thread, which needs the GIL back between
    # steps: at the default 5 ms interval it waited for the event loop's thread (validating the
    # next batch) for ~7 ms of each 30 ms 1,000-row batch, while holding the write lock. At 1 ms,
    # batch rows/s rose 18% and 30% in two paired bench runs, single purchases unchanged.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return app
