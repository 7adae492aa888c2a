"""JSON responses rendered with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def created(content: Any, location: str) -> JSONResponse:
    return JSONResponse(content, status_code=201, headers={"Location": location})


def no_content() -> Response:
    return Response(status_code=204)
