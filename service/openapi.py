"""The OpenAPI 3.1 document, built from the app's own routes and their marshmallow schemas.

Each route handler says what it takes and gives with `@documented(...)`; service.access says who
may call it (each operation's `security` names the role or scope, as OpenAPI 3.1 allows). Error
responses follow from that (a body can be malformed, a path id missing, a credential absent or
without the right), so every operation lists the problem+json answers it can give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields
from starlette.routing import BaseRoute

from service.access import Access
from service.money import PRICE_PATTERN, Price
from service.pagination import Cursor
from service.validation import USERNAME_REGEX

F = TypeVar("F", bound=Callable[..., Any])
PROBLEM_JSON = "application/problem+json"
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A user's access token from POST /auth/login. `staff` in an operation's"
        " requirement: only a staff user's (`python -m service user set-role USERNAME staff`).",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A machine caller's key from `python -m service apikey create NAME [--scope S]`."
        " An operation's requirement names the scope the key must hold.",
    },
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retry safely: the same key and body get the first response (24 h); another body is 409.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$",
    },
}


UNAVAILABLE = {
    "description": "Service Unavailable: the database is out of reach, or a limit was reached (a lock held"
    " too long, no pooled connection free in time, too many requests waiting, a statement too slow;"
    " `detail` names the setting), or this instance is shutting down. Nothing was written.",
    "headers": {
        "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
    },
}

FORBIDDEN = (
    "Forbidden: the credential is live but may not do this - a member's token where staff is needed,"
    " an API key without the operation's scope, or an API key where a person's token is needed."
    " `detail` names what is missing. Nothing was done."
)

TOO_MANY_REQUESTS = {
    "description": "Too Many Requests: the caller's rate limit (RATE_LIMIT_API_KEY, RATE_LIMIT_USER;"
    " off unless set) or, on POST /auth/login, too many failed sign-ins in the window (the password"
    " was not checked). Nothing was done. With a rate limit on, every response to a caller carries"
    " its RateLimit-Policy and RateLimit.",
    "headers": {
        "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
        "RateLimit-Policy": {
            "description": 'The caller\'s limit (IETF draft): `"api_key";q=100;w=1` is 100 a second.',
            "schema": {"type": "string"},
        },
        "RateLimit": {
            "description": 'What is left of it: `"api_key";r=0;t=1` - requests left, seconds until full.',
            "schema": {"type": "string"},
        },
    },
}

CONSISTENCY = (
    "With read replicas (DATABASE_REPLICA_URLS): the primary's write-ahead log position after this"
    " write committed. Send it back on a read, on any instance, to see this write."
)
CONSISTENCY_TOKEN = {
    "name": "X-Consistency-Token",
    "in": "header",
    "required": False,
    "description": "From a write's response: this read is served by a replica that has replayed at least"
    " that far, or by the primary. Any other value: the primary serves it.",
    # No pattern: a value that is not a position is not refused - the primary serves that read.
    "schema": {"type": "string", "examples": ["0/3020420"]},
}


class ProblemOut(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={
            "description": "For 422 and some 409s: messages by field path (purchases.3.customer.email)."
        },
    )


def documented(
    *,
    body: type[Schema] | None = None,
    form: type[Schema] | None = None,
    query: type[Schema] | None = None,
    responses: Mapping[int, type[Schema] | str | None],
    errors: Iterable[int] = (),
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Record what a route handler takes and gives, for the OpenAPI document."""

    def record(handler: F) -> F:
        handler.openapi = {  # type: ignore[attr-defined]
            "body": body,
            "form": form,
            "query": query,
            "responses": dict(responses),
            "errors": set(errors),
            "idempotent": idempotent,
        }
        return handler

    return record


def _price_and_cursor(converter: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    # apispec binds attribute functions to its field converter, hence the first argument.
    if isinstance(field, Price):
        return {
            "type": ["string", "number"],
            "description": 'At least 0, below 10^9, at most two decimal places: 12.5 or "12.50".',
            "pattern": PRICE_PATTERN,
            "minimum": 0,
            "exclusiveMaximum": 1_000_000_000,
            "multipleOf": 0.01,
            "examples": ["12.50"],
        }
    if isinstance(field, Cursor):
        return {"type": "string", "description": "next_cursor from the previous page."}
    return {}


def _openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    """`/posts/{id:int}` -> `/posts/{id}` and its path parameters."""
    parameters = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name, _, kind = part[1:-1].partition(":")
            if kind == "int":
                schema: dict[str, Any] = {"type": "integer", "minimum": 1}
            elif name == "username":
                schema = {"type": "string", "pattern": f"^{USERNAME_REGEX}$"}
            else:
                schema = {"type": "string"}
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
            path = path.replace(part, "{" + name + "}")
    return path, parameters


def _query_parameters(plugin: MarshmallowPlugin, schema: type[Schema]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = plugin.converter.schema2parameters(schema, location="query")  # type: ignore[union-attr]
    for parameter in parameters:
        # An optional query parameter is absent, never JSON null.
        kind = parameter["schema"].get("type")
        if isinstance(kind, list):
            parameter["schema"]["type"] = next(t for t in kind if t != "null")
        if parameter["schema"].get("default", 0) is None:
            del parameter["schema"]["default"]
    return parameters


def _responses(
    handler: Any, has_body: bool, has_query: bool, has_path: bool, access: Access
) -> dict[str, Any]:
    doc = handler.openapi
    answers: dict[str, Any] = {}
    for status, schema in doc["responses"].items():
        description = HTTPStatus(status).phrase
        if schema is None:
            answers[str(status)] = {"description": description}
        elif isinstance(schema, str):  # a media type: text, HTML, or a JSON document of its own
            shape = {"type": "object"} if schema.endswith("json") else {"type": "string"}
            answers[str(status)] = {"description": description, "content": {schema: {"schema": shape}}}
        else:
            answers[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
    problems = set(doc["errors"]) | {500, 503}
    if has_body:
        problems |= {400, 413, 415, 422}
    if has_query:
        problems.add(422)
    if has_path:
        problems.add(404)
    if not access.anonymous:
        problems |= {401, 403, 429}
    for status in sorted(problems):
        answers[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": "ProblemOut"}},
        }
    answers["503"].update(UNAVAILABLE)
    if "403" in answers:
        answers["403"]["description"] = FORBIDDEN
    if "429" in answers:
        answers["429"].update(TOO_MANY_REQUESTS)
    return answers


def build_spec(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="purchase-feed-service",
        version="0.1.0",
        openapi_version="3.1.0",
        plugins=[plugin],
        info={
            "description": "Purchase capture with upserted customers, a small social feed, and revocable "
            "sessions. Errors are RFC 9457 problem details; lists are keyset-paginated."
        },
    )
    plugin.converter.add_attribute_function(_price_and_cursor)  # type: ignore[union-attr]
    spec.components.schema("ProblemOut", schema=ProblemOut)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)

    for route in routes:
        handlers: Mapping[str, Any] | None = getattr(route, "handlers", None)
        if handlers is None:
            continue
        path, path_parameters = _openapi_path(route.path)  # type: ignore[attr-defined]
        operations: dict[str, Any] = {}
        for method, handler in handlers.items():
            doc = getattr(handler, "openapi", None)
            if doc is None:
                raise ValueError(f"{method} {route.path} has no @documented(...)")  # type: ignore[attr-defined]
            access: Access = route.access[method]  # type: ignore[attr-defined]
            operation: dict[str, Any] = {
                "operationId": f"{handler.__module__.rsplit('.', 1)[-1]}_{handler.__name__}",
                "summary": (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else "",
                "description": f"Who may call it: {access.who}.",
                "tags": [handler.__module__.rsplit(".", 1)[-1]],
                "parameters": list(path_parameters),
                "responses": _responses(
                    handler,
                    bool(doc["body"] or doc["form"]),
                    bool(doc["query"]),
                    bool(path_parameters),
                    access,
                ),
            }
            if not access.anonymous:
                operation["security"] = access.security()
            if doc["query"] is not None:
                operation["parameters"] += _query_parameters(plugin, doc["query"])
            if doc["idempotent"]:
                operation["parameters"].append(IDEMPOTENCY_KEY)
            if method == "GET":
                operation["parameters"].append(CONSISTENCY_TOKEN)
            else:
                for status, answer in operation["responses"].items():
                    if status.startswith("2"):
                        answer["headers"] = {
                            "X-Consistency-Token": {"description": CONSISTENCY, "schema": {"type": "string"}}
                        }
            if doc["body"] is not None or doc["form"] is not None:
                content: dict[str, Any] = {}
                if doc["body"] is not None:
                    content["application/json"] = {"schema": doc["body"]}
                if doc["form"] is not None:
                    content["application/x-www-form-urlencoded"] = {"schema": doc["form"]}
                operation["requestBody"] = {"required": True, "content": content}
            operations[method.lower()] = operation
        spec.path(path=path, operations=operations)
    return spec.to_dict()
