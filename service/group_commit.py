"""Group commit: writes that arrive while one is in flight go to the database together, next.

No timer: a write that finds nothing in flight goes at once, in its caller's own task (a lone
caller waits no longer than with no grouping); the ones that arrive meanwhile queue, and when the
flight lands they leave as one group of at most `cap`. Each caller still gets its own outcome - its
row or its own error - and only once the statement that holds its row has committed. A group's
write runs in a task of its own with a fresh context, so nothing of one member's request (its lock
budget, its span) leaks into the statement every member shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from service.metrics import group_size

T = TypeVar("T")
R = TypeVar("R")

# What a group's write gives back: an outcome per member, in the members' order.
Outcome = Any  # R, or the BaseException that member's caller is to raise


class GroupCommit(Generic[T, R]):
    """`await group.submit(item)` -> this item's result, written with whatever else is waiting.

    `write_group(items)` writes the items (in one statement, or one transaction) and returns one
    outcome per item; if it raises, every member of that group raises the same error. With a
    tracer, each flush is a span: a lone write's is a child of its request's span; a group's is a
    trace of its own, linked both ways with the requests it carried.
    """

    def __init__(
        self,
        name: str,
        write_group: Callable[[list[T]], Awaitable[list[Outcome]]],
        cap: int,
        tracer: Any = None,
    ) -> None:
        self.name = name
        self.cap = cap
        self._write_group = write_group
        self._tracer = tracer
        self._sizes = group_size(name)
        self._waiting: deque[tuple[T, asyncio.Future[R], Any]] = deque()
        self._in_flight = False
        self._flight: asyncio.Task[None] | None = None  # the task sending queued groups, while it runs

    async def submit(self, item: T) -> R:
        if not self._in_flight:
            return await self._write_alone(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future, self._request_span()))
        # A caller that gives up leaves its future cancelled: a group not yet sent skips it.
        return await future

    async def _write_alone(self, item: T) -> R:
        """Nothing in flight: the caller writes its item itself, at once, as it would with no grouping."""
        self._in_flight = True
        try:
            self._sizes.observe(1)
            with self._span([], 1):
                [outcome] = await self._write_group([item])
        finally:
            self._land()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _land(self) -> None:
        """A flight is over: the writes that queued meanwhile leave now, in a task of their own."""
        self._in_flight = False
        if self._waiting:
            self._in_flight = True
            self._flight = asyncio.get_running_loop().create_task(self._fly(), context=contextvars.Context())

    def _request_span(self) -> Any:
        if self._tracer is None:
            return None
        from opentelemetry import trace

        span = trace.get_current_span()
        return span if span.is_recording() else None

    async def _fly(self) -> None:
        """Send groups while members wait; then land (the next write goes at once)."""
        group: list[tuple[T, asyncio.Future[R], Any]] = []
        try:
            while self._waiting:
                group = []
                while self._waiting and len(group) < self.cap:
                    member = self._waiting.popleft()
                    if not member[1].done():
                        group.append(member)
                if group:
                    await self._send(group)
                group = []
        finally:
            self._in_flight = False
            self._flight = None
            for _, future, _ in [*group, *self._waiting]:  # only if this task itself was cancelled
                future.cancel()
            self._waiting.clear()

    async def _send(self, group: list[tuple[T, asyncio.Future[R], Any]]) -> None:
        self._sizes.observe(len(group))
        with self._span([span for _, _, span in group if span is not None], len(group)):
            try:
                outcomes = await self._write_group([item for item, _, _ in group])
            except Exception as exc:
                outcomes = [exc] * len(group)
        for (_, future, _), outcome in zip(group, outcomes, strict=True):
            if future.done():
                continue  # its caller gave up while the group was in flight
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _span(self, request_spans: list[Any], size: int) -> contextlib.AbstractContextManager[Any]:
        """The flush's span, when tracing is on and a request in it is traced: for a lone write a
        child of the current request's span; for a group, linked both ways with its requests."""
        if self._tracer is None:
            return contextlib.nullcontext()
        from opentelemetry import trace

        if not request_spans:
            if not trace.get_current_span().is_recording():
                return contextlib.nullcontext()
            child: contextlib.AbstractContextManager[Any] = self._tracer.start_as_current_span(
                f"{self.name} group", attributes={"group.size": size}
            )
            return child
        return _linked_flush_span(self._tracer, self.name, request_spans, size)


@contextlib.contextmanager
def _linked_flush_span(tracer: Any, name: str, request_spans: list[Any], size: int) -> Any:
    from opentelemetry import trace

    links = [trace.Link(span.get_span_context()) for span in request_spans]
    # The flush's task started with an empty context: this span is the root of a trace of its own.
    with tracer.start_as_current_span(f"{name} group", links=links, attributes={"group.size": size}) as flush:
        for span in request_spans:
            span.add_link(flush.get_span_context())
        yield flush
