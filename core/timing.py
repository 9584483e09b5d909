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


def coalesce_window_end(*, start: float, took: float, gap: float, window: float, max_hold: float) -> float:
    """When the coalescing window opened by a fan-out that began at ``start`` and took
    ``took`` seconds closes; ``gap`` is the time since the fan-out before it began.

    Normally after ``window``. After a fan-out slower than the window that began less
    than ``2 * took`` after the previous one (fan-outs back to back: the hub is falling
    behind), live events are gathered for another ``min(took, max_hold)``: the last
    subscriber of that fan-out already waited ``took``, holding the next batch as long
    at most doubles it, and every subscriber gets one write for several events.
    """
    if took > window and gap < 2 * took:
        return start + took + min(took, max_hold)
    return start + window
