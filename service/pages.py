"""What a person opens in a browser: the purchase page, the API docs, and the OpenAPI document.

Everything is served from the package (no CDN, no build step), under a Content-Security-Policy
that allows scripts from this origin only - never inline script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from service.openapi import build_spec, documented
from service.responses import JSONResponse

STATIC = Path(__file__).resolve().parent / "static"
# Swagger UI 5.24.2's bundle, stylesheet and icon (Apache-2.0, LICENSE beside them): the three
# files /docs loads, kept here rather than through a package that ships 25 MB around them.
SWAGGER_UI = STATIC / "swagger-ui"

_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from its script; scripts are still this origin's files only.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _html(name: str, policy: str) -> Response:
    return FileResponse(
        STATIC / name, media_type="text/html", headers={**_COMMON, "Content-Security-Policy": policy}
    )


@documented(responses={200: "text/html"})
async def purchase_page(request: Request) -> Response:
    """The purchase page: sign in, record a purchase, see the latest ones."""
    return _html("index.html", PAGE_POLICY)


@documented(responses={200: "text/html"})
async def docs(request: Request) -> Response:
    """Interactive API docs (Swagger UI, served by this service)."""
    return _html("docs.html", DOCS_POLICY)


@documented(responses={200: "application/json"})
async def openapi_document(request: Request) -> Response:
    """This API's OpenAPI 3.1 document."""
    spec: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if spec is None:
        spec = request.app.state.openapi = build_spec(request.app.routes)
    return JSONResponse(spec)


def static_mounts() -> list[BaseRoute]:
    return [
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Mount("/docs/assets", StaticFiles(directory=SWAGGER_UI), name="swagger-ui"),
    ]
