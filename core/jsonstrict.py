"""Strict JSON in (RFC 8259): the one reader of every client body and message.

Python's ``json.loads`` is lenient in four ways a hostile client can use:

- it accepts ``NaN``, ``Infinity`` and ``-Infinity``, which Herald would store and then
  serve as bare tokens that a browser's ``JSON.parse`` rejects, breaking that
  execution's stream on every transport;
- it turns ``"\\ud800"`` into a lone surrogate, a ``str`` that cannot be encoded as
  UTF-8 (every later ``.encode()`` raises);
- it recurses once per nesting level, so ``[`` × 100,000 is a ``RecursionError``;
- given bytes, it guesses UTF-16 and UTF-32 as well as UTF-8.

``loads`` refuses all four with ``400 bad_json``. The nesting is measured before
parsing, by a scan that never recurses; the scan is skipped when the text has too few
brackets to be that deep, so an ordinary publish pays one ``str.count`` per bracket.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from core.errors import ErrorCode, HeraldError, bad_request

#: Deepest nesting accepted: the top-level array or object is level 1.
MAX_DEPTH = 32

# A JSON string, removed before brackets are counted. Possessive, and an unterminated
# string runs to the end, so a match never backtracks: the scan is linear in the text.
_STRING = re.compile(r'"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)')
_BRACKET = re.compile(r"[\[\]{}]")
# A \u escape of a UTF-16 surrogate: the only way a lone surrogate reaches a value,
# since the text itself was decoded from valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _refuse_constant(name: str) -> Any:
    raise bad_request(f"{name} is not JSON: numbers must be finite", ErrorCode.BAD_JSON)


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(raw: bytes | str) -> Any:
    """Parse ``raw`` as strict JSON; raise ``400 bad_json`` for anything else."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request(f"the body is not UTF-8: {exc.reason} at byte {exc.start}", ErrorCode.BAD_JSON) from None
    else:
        text = raw
    check_depth(text)
    try:
        value = _decoder.decode(text)
    except HeraldError:
        raise
    except ValueError as exc:
        raise bad_request(f"malformed JSON: {exc}", ErrorCode.BAD_JSON) from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        check_no_lone_surrogate(value)
    return value


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """``400 bad_json`` when ``text`` nests arrays and objects deeper than ``limit``."""
    if text.count("[") + text.count("{") <= limit:
        return  # too few brackets to be that deep
    steps = (1 if char in "[{" else -1 for char in _BRACKET.findall(_STRING.sub("", text)))
    if max(accumulate(steps), default=0) > limit:
        raise bad_request(f"JSON nested deeper than {limit} levels", ErrorCode.BAD_JSON, max_depth=limit)


def check_no_lone_surrogate(value: Any) -> None:
    """``400 bad_json`` when a string (key or value) holds a lone UTF-16 surrogate.
    ``value`` is at most ``MAX_DEPTH`` deep (checked before parsing)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)", ErrorCode.BAD_JSON) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_no_lone_surrogate(key)
            check_no_lone_surrogate(item)
    elif isinstance(value, list):
        for item in value:
            check_no_lone_surrogate(item)
