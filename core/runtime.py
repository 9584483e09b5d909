"""Process-wide tuning for a long-running server with many long-lived objects.

CPython's cyclic garbage collector runs a young collection every 700 net container
allocations and, every so often, a full one that walks every tracked object. A Herald
process holds thousands of long-lived connection objects, so a full collection walks all
of them (milliseconds at 2,000 connections, paid by whichever delivery triggers it) and
each long-poll request (~500 container allocations in Tornado's HTTP path) triggers a
young collection of its own. Profiles under 1,000 long-pollers put the collector at
15–20 % of the server's CPU.

``tune_gc`` does what large Python servers do (Instagram's ``gc.freeze``): objects that
exist once start-up is done (modules, classes, the application) move to the permanent
generation, which collections skip, and the young generation is collected less often.
Reference counting still frees almost everything at once; only garbage in reference
cycles waits longer (bounded by the threshold, a few MB at most).
"""

from __future__ import annotations

import gc

#: Young collections every 50,000 net allocations instead of 700; a full collection
#: after 20 young and 20 middle ones (CPython also waits until long-lived objects grew 25 %).
THRESHOLDS = (50_000, 20, 20)


def tune_gc(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Call once start-up is done, before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
