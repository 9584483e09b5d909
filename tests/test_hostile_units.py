"""Issue 11 without sockets: the strict JSON reader, the publish rate's token bucket
(with an injected clock), the redaction of URIs and of tracebacks, and strict JSON out.
The same rules against a real server process are in tests/test_hostile_server.py."""

from __future__ import annotations

import io
import json
import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import jsonstrict
from core.codec import dumps
from core.errors import ErrorCode, HeraldError
from core.logs import configure_logging
from core.ratelimit import SWEEP_EVERY, PublishLimits
from transports.access_log import redacted_uri

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def refusal(raw: bytes | str) -> HeraldError:
    with pytest.raises(HeraldError) as caught:
        jsonstrict.loads(raw)
    return caught.value


# --- strict JSON in ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b'{"data": {"x": NaN}}',
        b"[Infinity]",
        b'{"x": -Infinity}',
        b'"\\ud800"',  # a lone high surrogate as a value
        b'{"\\udfff": 1}',  # a lone low surrogate as a key
        b'["\\ude00\\ud83d"]',  # a pair in the wrong order is two lone ones
        "[1]".encode("utf-16"),  # UTF-16 with its BOM
        "[1]".encode("utf-16-le"),
        "[1]".encode("utf-32"),
        b"\xef\xbb\xbf[1]",  # a UTF-8 byte order mark
        b"\xff",  # not UTF-8 at all
        b"[" * 100_000,
        b'{"data": ' * 5_000 + b"1" + b"}" * 5_000,
        b"[" * 33 + b"]" * 33,
        b"{",
        b"",
    ],
)
def test_non_strict_json_is_bad_json(raw: bytes) -> None:
    error = refusal(raw)
    assert (error.status, error.code) == (400, ErrorCode.BAD_JSON)


def test_strict_json_accepts_what_rfc_8259_allows() -> None:
    assert jsonstrict.loads(b"[" * 32 + b"]" * 32) is not None  # 32 levels: the limit
    assert jsonstrict.loads(b'"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate pair
    assert jsonstrict.loads('[1e308, -0.5, "é"]') == [1e308, -0.5, "é"]
    # Brackets inside strings are text, not nesting; escaped quotes do not end a string.
    text = json.dumps({"text": "[" * 100 + '\\" {{{' + "]" * 7})
    assert jsonstrict.loads(text) == json.loads(text)


def test_depth_scan_is_linear_on_unterminated_strings() -> None:
    """A string that never ends (escaped quotes all along) must not make the bracket
    scan backtrack: 1 MiB of it is refused as malformed, quickly."""
    raw = b"[" * 40 + b'"' + b'\\"' * 500_000
    error = refusal(raw)
    assert error.code is ErrorCode.BAD_JSON


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=30,
    )
)
def test_strict_json_round_trips_what_the_server_writes(value: object) -> None:
    """Whatever JSON value Herald serialises, its strict reader takes back unchanged."""
    text = dumps(value)
    assert jsonstrict.loads(text.encode()) == json.loads(text)


# --- strict JSON out ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_the_serialiser_never_writes_a_non_json_token(value: object) -> None:
    with pytest.raises(ValueError):
        dumps(value)


# --- the publish rate ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_subject_publishes_its_burst_then_the_rate() -> None:
    clock = Clock()
    limits = PublishLimits(rate=10, burst=20, clock=clock)
    assert limits.take("alice", 20) == 0.0  # the whole burst at once
    assert limits.take("alice", 1) == pytest.approx(0.1)  # then one token per 1/rate s
    assert limits.take("bob", 20) == 0.0  # another subject has its own bucket
    clock.now += 0.5
    assert limits.take("alice", 5) == 0.0
    assert limits.take("alice", 5) == pytest.approx(0.5)
    # A refused take takes nothing: after the wait the batch passes whole.
    clock.now += 0.5
    assert limits.take("alice", 5) == 0.0


def test_a_batch_is_charged_per_event_and_refused_whole() -> None:
    clock = Clock()
    limits = PublishLimits(rate=100, burst=100, clock=clock)
    assert limits.take("alice", 60) == 0.0
    assert limits.take("alice", 60) == pytest.approx(0.2)  # 20 short, at 100/s
    assert limits.take("alice", 40) == 0.0  # the refused 60 took nothing


def test_a_batch_larger_than_the_burst_never_passes() -> None:
    limits = PublishLimits(rate=10, burst=20, clock=Clock())
    assert limits.take("alice", 21) == math.inf
    with pytest.raises(HeraldError) as caught:
        limits.charge("alice", 21)
    assert caught.value.status == 429 and caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.details == {"publish_rate": 10, "publish_burst": 20}


def test_charge_raises_429_with_the_seconds_to_wait() -> None:
    clock = Clock()
    limits = PublishLimits(rate=2, burst=4, clock=clock)
    limits.charge("alice", 4)
    with pytest.raises(HeraldError) as caught:
        limits.charge("alice", 3)
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, ErrorCode.RATE_LIMITED, 2)  # 1.5 s, rounded up


def test_the_default_burst_is_twice_the_rate_and_zero_rate_is_no_limit() -> None:
    assert PublishLimits(rate=1000).burst == 2000
    unlimited = PublishLimits(rate=0, clock=Clock())
    assert unlimited.take("alice", 10**9) == 0.0
    assert len(unlimited) == 0


def test_refilled_buckets_are_forgotten() -> None:
    """Memory is bounded by the subjects active in the last burst/rate seconds."""
    clock = Clock()
    limits = PublishLimits(rate=10, burst=20, clock=clock)
    for n in range(10_000):
        limits.take(f"subject-{n}", 1)
    assert len(limits) == 10_000
    clock.now += max(SWEEP_EVERY, 0.1)  # one token back: each bucket is full again
    limits.take("alice", 1)
    assert len(limits) == 1
    clock.now += SWEEP_EVERY
    limits.take("bob", 20)  # alice refilled meanwhile; bob's is empty and kept
    assert len(limits) == 1


# --- redaction ---------------------------------------------------------------------------
def test_redacted_uri_hides_every_credential_parameter() -> None:
    uri = f"/api/executions/ex_1/events?after=3&access_token={JWT}&ticket=tk_abcdefgh12345&token={JWT}"
    redacted = redacted_uri(uri)
    assert JWT not in redacted and "tk_abcdefgh12345" not in redacted
    assert redacted.startswith("/api/executions/ex_1/events?after=3&access_token=***")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_quoting_a_token_is_redacted_in_both_formats(fmt: str) -> None:
    stream = io.StringIO()
    handler = configure_logging("info", fmt, stream)
    try:
        try:
            raise ValueError(f"bad request /api/x?access_token={JWT} with Authorization: Bearer {JWT}")
        except ValueError:
            logging.getLogger("tornado.application").exception("Uncaught exception GET /api/x (127.0.0.1)")
        logging.getLogger("herald").warning("stack", stack_info=True, extra={"path": f"/x?ticket={JWT}"})
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "ValueError" in out and "Traceback" in out
    assert JWT not in out and "c2lnbmF0dXJl" not in out
