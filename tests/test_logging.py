"""One structured access line per request, in JSON or text."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.testclient import TestClient

from service.logs import JSONFormatter, TextFormatter


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "service.access"]


def test_each_request_writes_one_access_line_with_its_facts(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    response = client.get("/health", headers={"X-Request-ID": "trace-1"})
    client.get("/no/such/page")

    first, second = access_records(caplog)
    assert first.request_id == "trace-1" == response.headers["x-request-id"]  # type: ignore[attr-defined]
    assert (first.method, first.route, first.status) == ("GET", "/health", 200)  # type: ignore[attr-defined]
    assert isinstance(first.duration_ms, float)  # type: ignore[attr-defined]
    assert (second.route, second.status) == ("unmatched", 404)  # type: ignore[attr-defined]


def test_json_lines_carry_every_field(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    client.get("/ready")
    (record,) = access_records(caplog)
    line = json.loads(JSONFormatter().format(record))
    assert line["level"] == "info"
    assert line["message"] == "GET /ready 200"
    assert {key: line[key] for key in ("method", "route", "status")} == {
        "method": "GET",
        "route": "/ready",
        "status": 200,
    }
    assert line["request_id"] and line["time"].endswith("Z")
    assert "trace_id" not in line  # tracing is off
    assert line["duration_ms"] >= 0


def test_text_lines_are_readable(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    client.get("/health")
    (record,) = access_records(caplog)
    line = TextFormatter().format(record)
    assert "GET /health 200" in line
    assert "route=/health" in line and "status=200" in line and "duration_ms=" in line
