"""Tracing: a request joins the caller's trace, each statement gets a span, logs carry the trace id."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, use_span
from starlette.testclient import TestClient

from service import db as db_module
from service import housekeeping, purchases
from service.app import create_app
from service.config import Settings
from service.logs import JSONFormatter, TextFormatter
from service.queries import Queries, Statement, load_queries
from service.tracing import FLUSH_SECONDS, tracing_requested
from tests.conftest import free_port
from tests.otlp_receiver import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
EMAIL = "traced@example.com"


def purchase(email: str = EMAIL) -> dict[str, Any]:
    return {"customer": {"email": email, "name": "Tim"}, "item": "book", "quantity": 2, "unit_price": "12.50"}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both databases; not again through PgBouncer, which changes nothing a span shows."""
    return str(request.param)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(settings: Settings, exporter: InMemorySpanExporter, api_key: str) -> Iterator[TestClient]:
    """The app tracing into `exporter`, every request sent with a live API key."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(settings, tracer_provider=provider), raise_server_exceptions=False) as client:
        client.headers["X-API-Key"] = api_key
        exporter.clear()  # start-up's statements are not the test's
        yield client


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    return span


def children_of(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    return [
        span for span in exporter.get_finished_spans() if span.parent and span.parent.span_id == parent_id
    ]


def dialect(settings: Settings) -> str:
    return "sqlite" if settings.is_sqlite else "postgresql"


def flush_of(exporter: InMemorySpanExporter, request_span: ReadableSpan) -> ReadableSpan:
    """The group-commit flush that wrote a lone request's purchase: a child of the request's span
    (a group's is a trace of its own, linked both ways: tests/test_group_commit.py)."""
    [flush] = [span for span in children_of(exporter, request_span) if span.name == "purchase group"]
    assert request_span.links == () and flush.links == ()
    return flush


def purchase_statements(settings: Settings) -> set[str]:
    """The statements a purchase sent with an API key runs on this dialect."""
    queries = load_queries(dialect(settings))
    if "record_purchase" in queries:
        return {"record_purchase"}  # the key check, the upsert and the insert in one
    return {"upsert_customer", "insert_purchase"}  # each checks the key itself


def test_purchase_joins_the_callers_trace_with_a_span_for_each_statement(
    traced: TestClient, exporter: InMemorySpanExporter, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    response = traced.post("/purchases", json=purchase(), headers={"traceparent": TRACEPARENT})
    assert response.status_code == 201, response.text

    span = server_span(exporter)
    assert span.name == "POST /purchases"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN_ID
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/purchases"
    assert span.attributes["http.response.status_code"] == 201
    assert span.status.status_code is StatusCode.UNSET

    # The purchase went through group commit, alone: its statements are its flush's.
    flush = flush_of(exporter, span)
    assert flush.attributes is not None and flush.attributes["group.size"] == 1
    statements = children_of(exporter, flush)
    assert {child.name for child in statements} == purchase_statements(settings)
    for child in statements:
        assert child.kind is SpanKind.CLIENT
        assert child.context.trace_id == flush.context.trace_id
        assert child.attributes is not None
        assert child.attributes["db.system.name"] == dialect(settings)
        assert "db.target" not in child.attributes  # no replicas here
    everything = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    for secret in (EMAIL, "INSERT", "SELECT", "12.50"):
        assert secret not in everything, f"{secret} is in a span"

    [line] = [r for r in caplog.records if r.name == "service.access" and r.getMessage().startswith("POST")]
    assert line.trace_id == TRACE_ID  # type: ignore[attr-defined]
    assert json.loads(JSONFormatter().format(line))["trace_id"] == TRACE_ID
    assert f"trace_id={TRACE_ID}" in TextFormatter().format(line)


@pytest.mark.parametrize("traceparent", [None, "00-not-a-trace-01", f"00-{'0' * 32}-{CALLER_SPAN_ID}-01"])
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(
    traced: TestClient, exporter: InMemorySpanExporter, traceparent: str | None
) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    response = traced.post("/purchases", json=purchase(), headers=headers)
    assert response.status_code == 201, response.text
    span = server_span(exporter)
    assert span.parent is None
    assert span.context.trace_id != 0 and format(span.context.trace_id, "032x") != TRACE_ID


def test_a_rejected_request_records_its_status_without_failing_the_span(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    response = traced.post(
        "/purchases", json={**purchase(), "quantity": 0}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 422
    span = server_span(exporter)
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 422
    assert span.status.status_code is StatusCode.UNSET  # the caller's mistake
    written = {span.name for span in exporter.get_finished_spans()} & {
        "purchase group",
        "record_purchase",
        "upsert_customer",
    }
    assert written == set()  # refused before any write


def test_a_failing_request_marks_its_span_as_an_error_with_the_exception(
    traced: TestClient, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("the purchase could not be written")

    monkeypatch.setattr(purchases, "record_purchase", broken)
    response = traced.post("/purchases", json=purchase(), headers={"traceparent": TRACEPARENT})
    assert response.status_code == 500
    span = server_span(exporter)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 500
    assert span.status.status_code is StatusCode.ERROR
    [event] = [event for event in span.events if event.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "RuntimeError"


def test_a_failing_statement_marks_its_span_and_the_requests_as_errors(
    settings: Settings, exporter: InMemorySpanExporter, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_broken_get_purchase(dialect: str) -> Queries:
        statements = {statement.name: statement for statement in load_queries(dialect)}
        broken = "SELECT id FROM no_such_table WHERE id = :id"
        statements["get_purchase"] = Statement("get_purchase", "", broken, dialect)
        return Queries(statements)

    monkeypatch.setattr(db_module, "load_queries", with_broken_get_purchase)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(settings, tracer_provider=provider), raise_server_exceptions=False) as client:
        exporter.clear()
        response = client.get("/purchases/1", headers={"X-API-Key": api_key})
    assert response.status_code == 500
    span = server_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    [statement] = [child for child in children_of(exporter, span) if child.name == "get_purchase"]
    assert statement.status.status_code is StatusCode.ERROR
    assert [event.name for event in statement.events] == ["exception"]


def test_each_housekeeping_pass_is_a_trace_of_its_own(
    settings: Settings, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PURGE_EVERY_SECONDS", 0.05)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(settings, tracer_provider=provider)):
        deadline = time.monotonic() + 10
        while not [s for s in exporter.get_finished_spans() if s.name == "housekeeping purge"]:
            assert time.monotonic() < deadline, "no housekeeping pass was traced"
            time.sleep(0.05)
    chore = next(s for s in exporter.get_finished_spans() if s.name == "housekeeping purge")
    assert chore.parent is None and chore.kind is SpanKind.INTERNAL
    assert chore.status.status_code is StatusCode.UNSET
    statements = children_of(exporter, chore)
    assert [s.name for s in statements] == [
        "purge_idempotency_keys",
        "purge_dead_sessions",
        "purge_ended_login_windows",
        *(["fold_ended_days"] if not settings.is_sqlite else []),  # (SQLite has no shards to fold)
    ]
    assert all(s.kind is SpanKind.CLIENT for s in statements)


@pytest.mark.parametrize(
    ("environ", "requested"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ: dict[str, str], requested: bool) -> None:
    assert tracing_requested(environ) is requested


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "zipkin"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
)
def test_an_exporter_this_service_cannot_use_stops_start_up_with_one_line(variable: str, value: str) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {variable} must be") and value in done.stderr
    assert "Traceback" not in done.stderr


def post_purchase(base: str, api_key: str, traceparent: str | None = None) -> httpx.Response:
    """A purchase sent to a running service, with the caller's traceparent when given."""
    headers = {"X-API-Key": api_key, **({"traceparent": traceparent} if traceparent else {})}
    return httpx.post(f"{base}/purchases", json=purchase(), headers=headers, timeout=5)


@contextmanager
def exporting_service(live_service: Any, **env: str) -> Iterator[tuple[str, OtlpReceiver]]:
    """The service running with `env`, exporting every 50 ms to a receiver: (its URL, the receiver)."""
    with (
        OtlpReceiver() as receiver,
        live_service(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50", **env
        ) as base,
    ):
        yield base, receiver


@pytest.mark.slow
def test_the_running_service_exports_to_an_otlp_http_receiver(
    live_service: Any, settings: Settings, api_key: str
) -> None:
    with exporting_service(
        live_service,
        OTEL_SERVICE_NAME="checkout-under-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
    ) as (base, receiver):
        assert post_purchase(base, api_key, TRACEPARENT).status_code == 201
        span = receiver.wait_for("POST /purchases")
        flush = receiver.wait_for("purchase group")
        statement = receiver.wait_for(sorted(purchase_statements(settings))[0])
    assert receiver.refused == []
    assert span.resource["service.name"] == "checkout-under-test"
    assert span.resource["deployment.environment.name"] == "test"
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, CALLER_SPAN_ID)
    assert span.kind == 2  # SPAN_KIND_SERVER
    assert span.attributes["http.response.status_code"] == 201
    assert (flush.trace_id, flush.parent_span_id) == (TRACE_ID, span.span_id)  # alone: the request's child
    assert (statement.trace_id, statement.parent_span_id) == (TRACE_ID, flush.span_id)
    assert statement.attributes == {"db.system.name": dialect(settings)}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the exporter's behaviour, whatever the database
def test_the_sampler_setting_is_honoured(live_service: Any, api_key: str) -> None:
    with exporting_service(live_service, OTEL_TRACES_SAMPLER="parentbased_always_off") as (base, receiver):
        sampled = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
        unsampled = f"00-{'1' * 32}-{CALLER_SPAN_ID}-00"
        for traceparent in (unsampled, sampled):
            assert post_purchase(base, api_key, traceparent).status_code == 201
        # The caller sampled this one: it is exported; its own requests and the unsampled one are not.
        receiver.wait_for("POST /purchases")
        time.sleep(0.5)  # ten export intervals for anything else to arrive
    assert {span.trace_id for span in receiver.spans} == {TRACE_ID}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the exporter's behaviour, whatever the database
def test_a_collector_that_is_away_costs_no_request(live_service: Any, api_key: str) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with live_service(OTEL_EXPORTER_OTLP_ENDPOINT=nobody, OTEL_BSP_SCHEDULE_DELAY="10") as base:
        statuses = [post_purchase(base, api_key).status_code for _ in range(20)]
        assert httpx.get(f"{base}/ready").status_code == 200
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    assert statuses == [201] * 20
    # The exporter would retry for its 10 s timeout and more; the stop gives it FLUSH_SECONDS.
    assert stopped_in < FLUSH_SECONDS + 3


def test_only_statements_inside_a_recorded_span_are_traced(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    """Start-up's statements and the replica monitor's polls make no traces of their own, and an
    unsampled request's statements cost no spans."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")

    async def run() -> None:
        db = db_module.open_database(settings, tracer=tracer)
        await db.connect()
        try:
            await db.fetch_one(db.sql.ping, {})  # outside any span
            with tracer.start_as_current_span("job"):
                await db.fetch_one(db.sql.ping, {})
            unsampled = NonRecordingSpan(
                SpanContext(int(TRACE_ID, 16), int(CALLER_SPAN_ID, 16), is_remote=True)
            )
            with use_span(unsampled):
                await db.fetch_one(db.sql.ping, {})
        finally:
            await db.disconnect()

    asyncio.run(run())
    [job] = [span for span in exporter.get_finished_spans() if span.name == "job"]
    assert [
        (span.name, span.parent.span_id if span.parent else None) for span in exporter.get_finished_spans()
    ] == [
        ("ping", job.context.span_id),
        ("job", None),
    ]
