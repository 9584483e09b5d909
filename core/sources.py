"""What an execution's connection follows: ``ExecutionStream`` (WebSocket and SSE: every
event as it comes) and ``ExecutionPage`` (long-poll: one page, answered as soon as it
has something, or when ``wait`` runs out).

Both wrap the same ``Subscription``, so the cursor rules are the same on every
transport. ``PageAnswers`` is the long-poll-only batching of answers under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.auth import Principal, may_read
from core.codec import Encoded, page_json
from core.metrics import Metrics
from core.model import Execution
from core.session import Session
from core.subscription import CATCH_UP_PAGE, DirectWriter, Subscription
from core.transport import ANSWERED, Disconnect, TransportName

if TYPE_CHECKING:
    from core.service import Core

#: With at least this many long-polls held in the process, an answer to a live event
#: waits up to ``PAGE_HOLD`` seconds so that events published meanwhile share it.
BATCH_FROM = 100
PAGE_HOLD = 0.025


class ExecutionStream:
    """Every event of one execution after a cursor, as it is stored (the session is
    the subscription's sink; the hub may write to its socket directly)."""

    def __init__(self, core: Core, execution: Execution, after: int) -> None:
        self.core = core
        self.execution = execution
        self.after = after
        self.subscription: Subscription | None = None

    async def start(self, session: Session) -> None:
        self.subscription = self.core.follow(self.execution.id, self.after, session)
        await self.subscription.start(self.execution)

    def stop(self) -> None:
        subscription, self.subscription = self.subscription, None  # it refers back here
        if subscription is not None:
            subscription.close()

    async def finish(self, disconnect: Disconnect) -> None:
        return None

    def allows(self, principal: Principal) -> bool:
        return may_read(principal, self.execution)


class ExecutionPage:
    """One long-poll page: the events after the cursor (up to ``limit``), a ``reset``,
    or, after ``wait``, nothing. It is the subscription's sink; the session ends
    (``ANSWERED``) as soon as the page has something, and ``finish`` writes it."""

    transport_name = TransportName.LONGPOLL.value
    writer: DirectWriter | None = None

    def __init__(self, core: Core, execution: Execution, after: int, limit: int = CATCH_UP_PAGE) -> None:
        self.core = core
        self.execution = execution
        self.after = after
        self.limit = limit
        self.events: list[Encoded] = []
        self.reset: dict[str, Any] | None = None
        self.done = False
        self.session: Session | None = None
        self.subscription: Subscription | None = None

    async def start(self, session: Session) -> None:
        self.session = session
        self.subscription = self.core.follow(self.execution.id, self.after, self, limit=self.limit)
        await self.subscription.start(self.execution)
        if session.deadline is None:  # a plain page (no ``wait``): answer what there is
            self._answer()

    def stop(self) -> None:
        subscription, self.subscription = self.subscription, None  # it refers back here
        if subscription is not None:
            subscription.close()

    async def finish(self, disconnect: Disconnect) -> None:
        """Write the page, unless the connection ended in an error (rendered by the
        transport) or the client left."""
        session = self.session
        if session is None or disconnect.error is not None or disconnect.outcome == "client":
            return
        next_after = self.events[-1].seq if self.events else self.after
        if self.reset is not None and not self.events:
            next_after = self.reset["last_seq"]
        session.write(page_json(self.events, next_after, self.done, self.reset))  # the one answer

    def allows(self, principal: Principal) -> bool:
        return may_read(principal, self.execution)

    # --- Sink -------------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        room = self.limit - len(self.events)
        if room > 0:
            self.events.extend(batch[:room])
            if len(batch) > room:
                self.done = False  # the rest, and the terminal event, go to the next page
        subscription = self.subscription
        if len(self.events) >= self.limit:
            self._answer()  # full: stop the catch-up before it reads the rest of the log
        elif subscription is not None and subscription.live:
            self.core.page_answers.soon(self._answer)  # under load, later events may join
        else:
            self._answer()

    def send_reset(self, execution: Execution) -> None:
        self.reset = execution.to_public()
        self._answer()

    def end_stream(self) -> None:
        # Terminal only if the terminal event made it into this page (or was before it).
        if not self.events or self.events[-1].terminal:
            self.done = True
        self._answer()

    def _answer(self) -> None:
        if self.session is not None:
            self.session.close(ANSWERED)


class PageAnswers:
    """Answers to live events for held long-polls: now, or, with many polls held, up to
    ``PAGE_HOLD`` later together with the others.

    A poll is a whole HTTP request: 1,000 pollers woken by one event cost ~0.5 s of
    server time to answer and to take back, and every event published during that time
    wakes them all again, one event per answer. Holding the answers 25 ms (a twentieth
    of that cost) lets events published together share one answer, as the hub
    coalesces stream writes after a slow fan-out. With few polls held nothing waits.
    """

    def __init__(self, metrics: Metrics, batch_from: int = BATCH_FROM) -> None:
        self.metrics = metrics
        self.batch_from = batch_from
        self._held: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def soon(self, answer: Callable[[], None]) -> None:
        if self.metrics.connections[TransportName.LONGPOLL.value] < self.batch_from:
            answer()
            return
        self._held.append(answer)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(PAGE_HOLD, self.flush)

    def flush(self) -> None:
        """Answer every held poll now."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        answers, self._held = self._held, []
        for answer in answers:
            answer()
