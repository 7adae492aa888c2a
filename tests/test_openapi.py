"""The OpenAPI document covers every route; the docs and the page load nothing from elsewhere."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient

from service.app import all_routes
from service.pages import STATIC


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def app_operations() -> set[tuple[str, str]]:
    operations = set()
    for route in all_routes():
        if isinstance(route, Mount):
            continue  # static files: served, not operations
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        for method in route.methods or ():  # type: ignore[attr-defined]
            if method != "HEAD":
                operations.add((method.lower(), path))
    return operations


def test_the_document_is_openapi_3_1_and_covers_exactly_the_apps_routes(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert documented == app_operations()
    assert len(documented) >= 37


def test_every_operation_has_an_id_a_summary_and_its_problem_answers(spec: dict[str, Any]) -> None:
    ids = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert operation["summary"], (method, path)
            responses = operation["responses"]
            assert "500" in responses and "503" in responses
            for status, answer in responses.items():
                if int(status) >= 400:
                    schema = answer["content"]["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ProblemOut"}
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
    assert len(ids) == len(set(ids))


def test_both_security_schemes_are_declared_and_used_where_they_apply(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["bearerAuth"]["description"],
    }
    assert schemes["apiKeyAuth"]["in"] == "header" and schemes["apiKeyAuth"]["name"] == "X-API-Key"
    paths = spec["paths"]
    # A scheme's list names the role (a token's) or the scope (a key's) the operation needs.
    assert paths["/purchases"]["post"]["security"] == [
        {"bearerAuth": ["staff"]},
        {"apiKeyAuth": ["purchases:write"]},
    ]
    assert paths["/purchases"]["get"]["security"] == [
        {"bearerAuth": ["staff"]},
        {"apiKeyAuth": ["purchases:read"]},
    ]
    assert paths["/reports/sales"]["get"]["security"] == [
        {"bearerAuth": ["staff"]},
        {"apiKeyAuth": ["reports:read"]},
    ]
    assert paths["/posts"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/posts"]["get"]  # reads are public
    assert {"401", "403"} <= set(paths["/purchases"]["post"]["responses"])
    assert {"401", "403"} <= set(paths["/posts"]["post"]["responses"])  # an API key is refused there
    assert not {"401", "403"} & set(paths["/posts"]["get"]["responses"])


def test_every_operation_says_in_words_who_may_call_it(spec: dict[str, Any]) -> None:
    described = {
        f"{method.upper()} {path}": operation["description"]
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    assert described["POST /purchases"] == (
        "Who may call it: a staff user, with their access token, or an API key with the"
        " purchases:write scope."
    )
    assert described["GET /feed"] == (
        "Who may call it: any signed-in user (member or staff), with their access token."
    )
    assert described["GET /posts"] == "Who may call it: anyone, with no credential."
    assert all(text.startswith("Who may call it: ") for text in described.values())


def test_request_bodies_come_from_the_marshmallow_schemas(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    purchase_in = schemas["PurchaseIn"]
    assert purchase_in["additionalProperties"] is False  # unknown fields are refused
    assert set(purchase_in["required"]) == {"customer", "item", "quantity", "unit_price"}
    assert purchase_in["properties"]["quantity"] == {"type": "integer", "minimum": 1, "maximum": 1_000_000}
    login = spec["paths"]["/auth/login"]["post"]["requestBody"]["content"]
    assert set(login) == {"application/json", "application/x-www-form-urlencoded"}
    assert set(schemas["PostOut"]["required"]) == {
        "id",
        "author",
        "content",
        "created_at",
        "edited_at",
        "like_count",
        "repost_count",
        "comment_count",
    }
    assert "null" in schemas["PostOut"]["properties"]["edited_at"]["type"]  # null until edited


def test_docs_are_served_with_every_asset_from_this_service(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_the_page_forbids_inline_script_and_loads_only_its_own_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]+)", policy)
    assert script_src and script_src.group(1).strip() == "'self'"
    assert "<script>" not in page.text and "onclick" not in page.text.lower()
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if asset.startswith("data:"):
            continue  # inline data (the empty favicon), not a fetch
        if asset.startswith("#"):
            continue  # one of the page's own views (#reports), not a fetch
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset


def test_shipped_files_reach_for_no_other_host() -> None:
    # The page's own files; Swagger UI's bundle (swagger-ui/) names URLs it never fetches, and the
    # docs page test above checks that every asset it loads comes from this service.
    files = [path for path in STATIC.iterdir() if path.is_file()]
    assert len(files) >= 4
    for path in files:
        assert not re.search(r"https?://", path.read_text()), path.name
