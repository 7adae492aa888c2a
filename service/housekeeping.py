"""Background chores each worker runs while it serves: forgetting what has outlived its purpose."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.accounts import purge_dead_sessions
from service.auth import AuthSettings
from service.db import Database
from service.idempotency import purge_expired_keys
from service.login_throttle import purge_ended_windows
from service.metrics import observe_pool
from service.reports import fold_ended_days
from service.timestamps import utc_now
from service.tracing import background_span

PURGE_EVERY_SECONDS = 900

log = logging.getLogger("service.housekeeping")


async def purge_once(db: Database, auth: AuthSettings) -> tuple[int, int, int]:
    """Drop expired idempotency keys, sessions dead for longer than the retention period, and the
    login throttle's counts of windows that have ended; fold the sales rollups of ended days."""
    now = utc_now()
    keys = await purge_expired_keys(db)
    sessions = await purge_dead_sessions(db, now - auth.session_retention)
    windows = await purge_ended_windows(db, now)
    await fold_ended_days(db, now)
    return keys, sessions, windows


async def purge_forever(db: Database, auth: AuthSettings, tracer: Any = None) -> None:
    while True:
        await asyncio.sleep(PURGE_EVERY_SECONDS)
        try:
            with background_span(tracer, "housekeeping purge"):  # a failure is recorded on the span
                keys, sessions, windows = await purge_once(db, auth)
        except Exception as exc:  # the database may be away for a while; try again next time
            log.warning("housekeeping failed: %s", exc.__class__.__name__)
            continue
        if keys or sessions or windows:
            log.info(
                "purged %d idempotency keys, %d sessions and %d login failure counts", keys, sessions, windows
            )


async def refresh_pool_gauges(db: Database) -> None:
    """With several workers a scrape reaches one of them; each keeps its own pool gauges current."""
    while True:
        observe_pool(*db.pool_stats())
        await asyncio.sleep(1.0)
