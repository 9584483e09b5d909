"""Per-subject publish rate: a token bucket for each token subject.

``--publish-rate N`` events per second with a burst of ``--publish-burst`` (default
2N): a subject may publish ``burst`` events at once, then ``N`` per second. A batch
costs one token per event, and is taken whole or not at all, so a refused request
stores nothing. The refusal is ``429 rate_limited`` with ``Retry-After``: the seconds
until the bucket holds the batch.

Memory stays bounded by the subjects active in the last ``burst / rate`` seconds
(2 s by default): a bucket that has refilled is the same as no bucket, so each sweep
(at most once a second, during a ``take``) forgets every bucket that is full again.
Pure code with an injectable clock; the handlers and the worker socket call ``charge``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from core.errors import ErrorCode, HeraldError

#: Seconds between sweeps of refilled buckets.
SWEEP_EVERY = 1.0


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class PublishLimits:
    """One token bucket per subject; ``rate`` 0 turns the limit off."""

    def __init__(self, rate: float, burst: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst or 2 * rate
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def __len__(self) -> int:
        """Subjects with a bucket that is not full (what the limiter keeps in memory)."""
        return len(self._buckets)

    def take(self, subject: str, events: int) -> float:
        """Take ``events`` tokens from ``subject``'s bucket: 0.0 when taken, else the
        seconds until the bucket would hold them (``inf`` when ``events`` > burst)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        if now - self._last_sweep >= SWEEP_EVERY:
            self._sweep(now)
        bucket = self._buckets.get(subject)
        if bucket is None:
            bucket = self._buckets[subject] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if events > self.burst:
            return math.inf
        if bucket.tokens >= events:
            bucket.tokens -= events
            return 0.0
        return (events - bucket.tokens) / self.rate

    def charge(self, subject: str, events: int) -> None:
        """``take``, or raise ``429 rate_limited`` with the seconds to wait."""
        wait = self.take(subject, events)
        if wait == 0.0:
            return
        if math.isinf(wait):
            raise HeraldError(
                ErrorCode.RATE_LIMITED,
                429,
                f"a batch of {events} events is more than this server's publish burst ({self.burst:g}); "
                "send smaller batches",
                {"publish_rate": self.rate, "publish_burst": self.burst},
                retry_after=max(1, math.ceil(self.burst / self.rate)),
            )
        raise HeraldError(
            ErrorCode.RATE_LIMITED,
            429,
            f"this token's subject publishes more than {self.rate:g} events per second; retry later",
            {"publish_rate": self.rate, "publish_burst": self.burst},
            retry_after=max(1, math.ceil(wait)),
        )

    def _sweep(self, now: float) -> None:
        """Forget the buckets that are full again (as if never used)."""
        self._last_sweep = now
        rate, burst = self.rate, self.burst
        full = [s for s, b in self._buckets.items() if b.tokens + (now - b.updated) * rate >= burst]
        for subject in full:
            del self._buckets[subject]
