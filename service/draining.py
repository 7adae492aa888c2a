"""Stopping without cutting anyone off: SIGTERM drains a worker before it stops.

On SIGTERM, `/ready` turns 503 at once and responses ask clients to close their connections, while
every request is still served; that lasts SHUTDOWN_GRACE_SECONDS, long enough for a load balancer
to stop sending. Then uvicorn's own shutdown runs: it stops accepting, lets every request in flight
finish, runs the lifespan's end (the pool closes) and the process exits 0. A second SIGTERM skips
what is left of the grace period. SIGINT (Ctrl-C) keeps uvicorn's behaviour: no grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

log = logging.getLogger("service")


class Drain:
    """Whether this worker is draining; the lifespan puts it in every request's state."""

    def __init__(self) -> None:
        self.active = False

    def drain_on_sigterm(self, grace_seconds: float) -> bool:
        """Make SIGTERM drain, when uvicorn's server runs this process (`python -m service`).

        uvicorn sets its own handler before the lifespan starts; this one replaces it and, after
        the grace period, asks the same server to exit, as uvicorn's handler would - but without
        raising SIGTERM again at the end, so the worker exits 0. Elsewhere (tests, another server)
        it does nothing and says so.
        """
        import uvicorn

        server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        if not isinstance(server, uvicorn.Server):
            return False
        loop = asyncio.get_running_loop()

        def stop() -> None:
            server.should_exit = True

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.active:  # a second SIGTERM: stop now
                loop.call_soon_threadsafe(stop)
                return
            self.active = True
            log.info("SIGTERM: draining; /ready is 503, stopping in %s s", grace_seconds)
            loop.call_soon_threadsafe(loop.call_later, grace_seconds, stop)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True
