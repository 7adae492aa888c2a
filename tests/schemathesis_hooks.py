"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS): a fresh user session for every request.

Logout and DELETE /auth/sessions/{id} are operations under test too, so a shared token would die
part-way through the run. Signing in again each time (BCRYPT_ROUNDS=4 in tests) keeps every
operation reachable with a valid credential.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2 as httpx
import schemathesis


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
