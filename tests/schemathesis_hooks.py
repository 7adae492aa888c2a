"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS): a fresh user session for every request.

Logout and DELETE /auth/sessions/{id} are operations under test too, so a shared token would die
part-way through the run. Signing in again each time (BCRYPT_ROUNDS=4 in tests) keeps every
operation reachable with a valid credential.
"""

from __future__ import annotations

import ast
import functools
import os
import threading
from typing import Any

import httpx2 as httpx
import schemathesis

# CPython 3.11 keeps the AST builder's recursion depth in per-interpreter state, so two threads
# parsing at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905). Hypothesis parses lambda sources while it describes strategies, in each
# of schemathesis's worker threads: one parse at a time.
_one_parse_at_a_time = threading.Lock()
_parse = ast.parse


@functools.wraps(_parse)
def _serialized_parse(*args: Any, **kwargs: Any) -> Any:
    with _one_parse_at_a_time:
        return _parse(*args, **kwargs)


ast.parse = _serialized_parse


@schemathesis.auth(refresh_interval=None)
class FreshSession:
    def get(self, case: Any, context: Any) -> str:
        response = httpx.post(
            f"{os.environ['FUZZ_BASE_URL']}/auth/login",
            json={"username": os.environ["FUZZ_USERNAME"], "password": os.environ["FUZZ_PASSWORD"]},
        )
        token: str = response.json()["access_token"]
        return token

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
