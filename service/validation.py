"""Reading a JSON body and checking it against a marshmallow schema, with errors keyed by field path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from marshmallow import Schema, ValidationError
from starlette.requests import Request

from service.errors import Problem, ValidationProblem

JSON_TYPES = ("application/json",)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request) -> Any:
    """The parsed body; 415 for another content type, 400 for an empty or malformed one."""
    if not is_json(request.headers.get("content-type", "")):
        raise Problem(415, "Send the body as Content-Type: application/json.")
    body = await request.body()
    if not body.strip():
        raise Problem(400, "The request body is empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"The body is not valid JSON: {exc}.") from None


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages -> {"purchases.3.customer.email": ["Not a valid email address."]}."""
    if isinstance(messages, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            part = "" if key == "_schema" else str(key)
            path = ".".join(p for p in (prefix, part) if p)
            for field, errors in flatten_errors(value, path).items():
                flat.setdefault(field, []).extend(errors)
        return flat
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": list(messages)}
    return {prefix or "body": [str(messages)]}


def load(schema: Schema, data: Any) -> Any:
    """Validate and convert `data`, or raise a 422 problem naming every field at fault."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationProblem(flatten_errors(exc.messages)) from None


async def read_valid_json(request: Request, schema: Schema) -> Any:
    return load(schema, await read_json(request))
