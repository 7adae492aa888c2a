"""Health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import live_client
from tests.tcp_proxy import TcpProxy


def test_health_answers_without_the_database(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_answers_when_the_database_does(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def _ready_status(client: TestClient) -> int:
    return client.get("/ready").status_code


def test_ready_is_503_while_postgres_is_down_and_200_once_it_is_back(
    postgres_database: str, settings: Settings
) -> None:
    address = urlsplit(postgres_database)
    proxy = TcpProxy(address.hostname or "127.0.0.1", address.port or 5432)
    proxy.start()
    through_proxy = postgres_database.replace(address.netloc, f"{address.username}@127.0.0.1:{proxy.port}")
    app = create_app(replace(settings, database_url=through_proxy))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert _ready_status(client) == 200

            proxy.stop()
            down = client.get("/ready")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"
            assert down.json()["detail"] == "The database is not answering."
            assert _ready_status(client) == 503

            proxy.start()
            # Back without a restart: the pool reconnects on its own within a few tries.
            deadline = time.monotonic() + 5
            while _ready_status(client) != 200:
                assert time.monotonic() < deadline, "/ready did not recover after the database came back"
                time.sleep(0.1)
    finally:
        proxy.stop()


def test_metrics_count_requests_by_route_template_method_and_status(client: TestClient) -> None:
    def count(line_start: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    label = 'http_requests_total{method="GET",route="/health",status="200"}'
    before = count(label)
    for _ in range(3):
        client.get("/health")
    assert count(label) == before + 3

    client.get("/no/such/page")
    assert count('http_requests_total{method="GET",route="unmatched",status="404"}') >= 1


def test_metrics_expose_latency_histogram_and_pool_in_use(client: TestClient) -> None:
    client.get("/ready")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/ready"}' in text
    assert "db_pool_connections_in_use " in text
    open_line = next(line for line in text.splitlines() if line.startswith("db_pool_connections_open "))
    assert float(open_line.split()[1]) >= 1


@pytest.mark.slow
def test_metrics_sum_every_worker(live_service: object, backend: str) -> None:
    async def scrape(base: str) -> str:
        async with live_client(base) as http:
            for _ in range(40):
                await http.get("/health", headers={"Connection": "close"})  # spread over both workers
            return (await http.get("/metrics")).text

    with live_service(workers=2) as base:  # type: ignore[operator]
        text = asyncio.run(scrape(base))
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('http_requests_total{method="GET",route="/health"')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 40
