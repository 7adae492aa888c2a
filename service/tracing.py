"""Distributed tracing: OpenTelemetry spans for requests, database statements and background chores.

Off unless the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER`; `OTEL_SDK_DISABLED=true` wins).
Off costs nothing: the middleware is not installed, the database is the plain `Database`, and the
SDK is never imported. On, the SDK reads the rest of its `OTEL_*` variables itself (service name,
resource attributes, sampler, batch processor, the exporter's headers, timeout and compression).

The spans:
- one SERVER span a request, named `METHOD /route/{template}`, joined to the caller's trace when a
  valid `traceparent` arrives (W3C Trace Context, or what OTEL_PROPAGATORS names), else a new one;
- one CLIENT span a database statement, named by its statement name (`record_purchase`), with
  `db.system.name` and, with read replicas, `db.target` (`primary` or the replica that served it);
  never SQL text or values;
- one INTERNAL root span for each pass of a background chore (`housekeeping purge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import SettingsError
from service.db import Database

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = logging.getLogger("service.tracing")

SERVICE_NAME = "purchase-feed-service"
INSTRUMENTATION_NAME = "service"
EXPORTERS = ("otlp", "console", "none")
# How long a stopping worker waits for its last spans to leave.
FLUSH_SECONDS = 2.0


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def checked_exporter(environ: Mapping[str, str] = os.environ) -> str:
    """The exporter the OTEL_* variables name, if this service can use it; else SettingsError naming
    the variable (checked before serving, so a typo is one line at start-up, not a traceback)."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter not in EXPORTERS:
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip()
        if exporter == "otlp" and protocol not in ("", "http/protobuf"):
            raise SettingsError(f"{name} must be http/protobuf (this service's exporter), got {protocol!r}")
    return exporter


@dataclass
class Exporting:
    """The tracer provider made from the OTEL_* variables, and the exporter its spans leave through."""

    provider: TracerProvider
    exporter: SpanExporter

    async def stop(self, seconds: float = FLUSH_SECONDS) -> None:
        """Send the spans still queued, for at most `seconds`; then the exporter stops retrying, so
        a collector that is away does not hold up the worker's stop (it would for 10 s or more)."""
        give_up = threading.Timer(seconds, self.exporter.shutdown)
        give_up.start()
        try:
            await asyncio.to_thread(self.provider.shutdown)
        finally:
            give_up.cancel()


def exporting_from_environment() -> Exporting:
    """A tracer provider exporting as the OTEL_* variables say (OTLP over HTTP/protobuf by default);
    the SDK reads them from the process's environment."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter_name = checked_exporter()
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the name given here.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Exporting(provider, exporter)


def _carrier(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}


class TracingMiddleware:
    """The request's SERVER span around everything else (installed only when tracing is on).

    It leaves the span and its trace id in the request's state: the access log line carries the
    trace id, and an unexpected error is recorded on the span.
    """

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace

        self.app = app
        self.tracer = tracer
        self.extract = propagate.extract
        self.server = trace.SpanKind.SERVER
        self.error = trace.Status(trace.StatusCode.ERROR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]}
        status = 500
        with self.tracer.start_as_current_span(
            method,
            context=self.extract(_carrier(scope)),  # an absent or malformed traceparent: a new trace
            kind=self.server,
            attributes=attributes,
            record_exception=False,  # RequestContextMiddleware records what it catches
            set_status_on_exception=False,
        ) as span:
            state = scope.setdefault("state", {})
            state["span"] = span
            state["trace_id"] = format(span.get_span_context().trace_id, "032x")

            async def send_with_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = scope.get("route_path")
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:  # a 4xx is the caller's mistake, not this span's failure
                    span.set_status(self.error)


class TracedDatabase(Database):
    """A `Database` that puts a CLIENT span around each statement, named by the statement's name."""

    def __init__(self, url: str, queries: Any = None, *, tracer: Tracer, **options: Any) -> None:
        from opentelemetry import trace

        super().__init__(url, queries, **options)
        self.tracer = tracer
        self.client = trace.SpanKind.CLIENT
        self.error = trace.Status(trace.StatusCode.ERROR)
        self.current_span = trace.get_current_span

    def _attributes(self) -> dict[str, str]:
        attributes = {"db.system.name": self.dialect}
        if self.replicas is not None:
            attributes["db.target"] = "primary"  # until a replica serves it (_served_by)
        return attributes

    def _span(self, query: Any) -> contextlib.AbstractContextManager[Any]:
        """The statement's span, when the request's (or chore's) span is being recorded: so no
        statement outside a trace (start-up, the replica monitor's polls) makes a trace of its own,
        and an unsampled request costs no more spans."""
        if not self.current_span().is_recording():
            return contextlib.nullcontext()
        name = getattr(query, "name", None) or "statement"  # a statement without a name: no SQL, ever
        return self.tracer.start_as_current_span(name, kind=self.client, attributes=self._attributes())

    def _served_by(self, target: str) -> None:
        super()._served_by(target)
        self.current_span().set_attribute("db.target", target)

    async def fetch_all(self, query: Any, values: dict[str, Any] | None = None) -> list[Any]:
        with self._span(query):
            return await super().fetch_all(query, values)

    async def fetch_one(self, query: Any, values: dict[str, Any] | None = None) -> Any:
        with self._span(query):
            return await super().fetch_one(query, values)

    async def execute(self, query: Any, values: dict[str, Any] | None = None) -> Any:
        with self._span(query):
            return await super().execute(query, values)

    async def fetch_all_atomically(self, steps: list[tuple[Any, dict[str, Any]]]) -> list[list[Any]]:
        # The statements run together (one hop to SQLite's thread, one transaction on PostgreSQL):
        # a span each, all with the transaction's timing.
        if not self.current_span().is_recording():
            return await super().fetch_all_atomically(steps)
        spans = [
            self.tracer.start_span(statement.name, kind=self.client, attributes=self._attributes())
            for statement, _ in steps
        ]
        try:
            return await super().fetch_all_atomically(steps)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(self.error)
            raise
        finally:
            for span in spans:
                span.end()


def background_span(tracer: Tracer | None, name: str) -> contextlib.AbstractContextManager[Any]:
    """A root span around one pass of a background chore; nothing when tracing is off."""
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(name)
