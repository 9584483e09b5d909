"""Pure timing decisions, kept apart so they are tested without clocks or sockets
(as Tornado's ``ping_sleep_time`` is)."""

from __future__ import annotations

import random


def heartbeat_due(*, last_sent: float, interval: float, now: float) -> bool:
    """Whether a connection that last heard from us at ``last_sent`` needs a heartbeat."""
    return now - last_sent >= interval


def backoff_delay(attempt: int, *, first: float = 1.0, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, first·2^attempt)]."""
    ceiling = min(cap, first * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


def coalesce_deadline(*, first_pending_at: float, window: float) -> float:
    """When a batch opened at ``first_pending_at`` must be flushed at the latest."""
    return first_pending_at + window
