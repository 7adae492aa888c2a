"""The one middleware on every request, written as plain ASGI (no per-request task or body copy).

It gives the request its id, refuses oversized bodies before they are read, turns any exception
that escaped the routes into a problem+json 500 (or 503 when the database is out of reach or a
database limit was reached), asks clients to close their connections while the worker drains, and
writes the access log line and the request metrics.
"""

from __future__ import annotations

import logging
import os
import re
from time import perf_counter

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import is_database_unavailable
from service.errors import Problem, problem_response
from service.limits import DETAILS, limit_reached
from service.metrics import observe_limit_reached, observe_request
from service.replicas import TOKEN_HEADER, parse_token, required_position

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first", for logs and metrics

access_log = logging.getLogger("service.access")
error_log = logging.getLogger("service.errors")

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# A caller's id is echoed back only if it is short and plain: no header or log injection.
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BodyTooLarge(Problem):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the limit of {limit} bytes.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = perf_counter()
        caller_id = _header(scope, b"x-request-id")
        request_id = (
            caller_id.decode() if caller_id and _SANE_REQUEST_ID.match(caller_id) else os.urandom(16).hex()
        )
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # The ids a log line of this request carries: the trace's too when tracing is on.
        log_ids = {"request_id": request_id}
        if "trace_id" in state:
            log_ids["trace_id"] = state["trace_id"]
        drain = state.get("drain")
        db = state.get("db")
        with_replicas = db is not None and db.replicas is not None
        if with_replicas and (token := _header(scope, TOKEN_HEADER)) is not None:
            required_position.set(parse_token(token))  # this request's task only
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), id_header]
                if (rate_limit := state.get("rate_limit")) is not None:
                    message["headers"].extend(rate_limit)  # the caller's RateLimit-Policy and RateLimit
                if with_replicas and scope["method"] not in _READS and 200 <= status < 300:
                    # Committed: where the primary's log stands now is at or past this write.
                    try:
                        token = (await db.consistency_token()).encode()
                    except Exception as exc:  # the write stands; its answer goes out without a token
                        error_log.warning("no consistency token: %s", exc.__class__.__name__)
                    else:
                        message["headers"].append((b"x-consistency-token", token))
                if drain is not None and drain.active:
                    # Draining: the client's next request should open a connection elsewhere.
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                # Answer from the header alone: the body is never read.
                await problem_response(scope, 413, BodyTooLarge(limit).detail)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_within_limit, send_with_id)
        except ClientDisconnect:
            # The caller hung up before its body arrived: nobody to answer, nothing went wrong here.
            status = CLIENT_CLOSED_REQUEST
        except Problem as exc:
            # Raised outside a route (the body limit while another layer read the body).
            status = exc.status
            if not response_started:
                await problem_response(scope, exc.status, exc.detail)(scope, receive, send_with_id)
        except Exception as exc:
            reason = limit_reached(exc)
            if reason is not None:
                # Expected under load or contention, not a bug: a warning, a count, a 503.
                observe_limit_reached(reason)
                error_log.warning("database limit reached: %s", reason, extra=log_ids)
                if not response_started:
                    await problem_response(scope, 503, DETAILS[reason], headers={"Retry-After": "1"})(
                        scope, receive, send_with_id
                    )
                return
            unavailable = is_database_unavailable(exc)
            if unavailable:
                error_log.warning("database unavailable: %s", exc.__class__.__name__, extra=log_ids)
            else:
                error_log.exception("unhandled error", extra=log_ids)
                if "span" in state:
                    state["span"].record_exception(exc)
            if not response_started:
                await self._answer_failure(scope, receive, send_with_id, unavailable)
        finally:
            self._record(scope, status, perf_counter() - started, log_ids)

    @staticmethod
    async def _answer_failure(scope: Scope, receive: Receive, send: Send, unavailable: bool) -> None:
        # Never a stack trace or SQL in the body; the log line above has the details and the request id.
        if unavailable:
            response = problem_response(
                scope, 503, "The database is unavailable; try again shortly.", headers={"Retry-After": "1"}
            )
        else:
            response = problem_response(scope, 500, "An unexpected error occurred; it has been logged.")
        await response(scope, receive, send)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float, log_ids: dict[str, str]) -> None:
        route = scope.get("route_path", "unmatched")
        method = scope["method"]
        observe_request(route, method, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %s",
                method,
                scope["path"],
                status,
                extra={
                    **log_ids,
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
