"""``--log-format json``: a real ``server.py`` writes one JSON object per line with the
documented fields, and no token, ticket or Bearer credential appears in any line, in
either format, even where a client put one in a URL or an error message quoted one."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.error
import urllib.request

import pytest

from core.auth import Authenticator
from core.logs import configure_logging, redact
from tests.services import HeraldProcess


def get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_server_log_lines_carry_fields_and_no_secret(fmt: str) -> None:
    herald = HeraldProcess("--log-format", fmt)
    if os.path.exists(herald.log_path):
        os.remove(herald.log_path)
    herald.start()
    try:
        token = Authenticator(secret=herald.secret).mint("logger-test", ("executions:read",), ttl=600)
        url = herald.base_url
        assert get(f"{url}/api/executions?access_token={token}") == 200
        assert get(f"{url}/api/executions/ex_nope/events?ticket=tk_abcdefghijklmnop", token) == 404
        assert get(f"{url}/api/executions", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged") == 401
        writer = Authenticator(secret=herald.secret).mint("logger-test", ("executions:write",), ttl=600)
        created = urllib.request.Request(
            f"{url}/api/executions", data=b'{"kind": "chat"}', headers={"Content-Type": "application/json"}
        )
        created.add_header("Authorization", "Bearer " + writer)
        with urllib.request.urlopen(created, timeout=10) as response:
            ex = json.load(response)["id"]
        assert get(f"{url}/api/executions/{ex}/events?wait=0", token) == 200  # a long-poll page
    finally:
        herald.stop()
    with open(herald.log_path) as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    text = "\n".join(lines)
    assert token not in text and token.split(".")[1] not in text
    assert "tk_abcdefghijklmnop" not in text and "forged" not in text
    if fmt == "text":
        assert any("GET /api/executions?access_token=***" in line for line in lines), text
        return
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if not line.startswith("Dashboard")]), "one object a line"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    access = [r for r in records if r["logger"] == "tornado.access"]
    listed = next(r for r in access if r["path"] == "/api/executions" and r["status"] == 200)
    assert listed["method"] == "GET" and listed["level"] == "info" and listed["duration_ms"] >= 0
    missing = next(r for r in access if r["status"] == 404)
    assert missing["execution_id"] == "ex_nope" and missing["level"] == "warning"
    assert listed["subject"] == "logger-test"  # who asked, on an API call
    poll = next(r for r in access if r["path"].endswith("/events") and r["status"] == 200)
    assert (poll["transport"], poll["subject"]) == ("longpoll", "logger-test")


def test_redaction_covers_messages_and_fields() -> None:
    jwt = Authenticator(secret="s" * 32).mint("x", (), ttl=60)
    assert redact(f"Authorization: Bearer {jwt}") == "Authorization: Bearer ***"
    assert redact(f"/a?x=1&access_token={jwt}&ticket=tk_0123456789") == "/a?x=1&access_token=***&ticket=***"
    assert redact(f"bad token {jwt} from tk_0123456789abc") == "bad token *** from tk_***"
    stream = io.StringIO()
    handler = configure_logging("info", "json", stream)
    try:
        logging.getLogger("herald.test").warning(
            "refused %s", jwt, extra={"subject": "dana", "transport": "sse", "path": f"/x?token={jwt}", "secret": jwt}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["message"] == "refused ***"
    assert record["subject"] == "dana" and record["transport"] == "sse" and record["path"] == "/x?token=***"
    assert "secret" not in record, "undocumented extras stay out of the shipped line"
    assert jwt not in stream.getvalue()
