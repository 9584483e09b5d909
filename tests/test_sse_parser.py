"""The client's incremental ``text/event-stream`` parser (client/sse.py), fed bytes the
way a socket delivers them."""

from __future__ import annotations

from client.sse import SseMessage, SseParser


def feed_bytewise(parser: SseParser, data: bytes) -> list[SseMessage]:
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


def test_lf_crlf_and_cr_line_ends():
    for eol in (b"\n", b"\r\n", b"\r"):
        data = b"id: 1" + eol + b"event: token" + eol + b"data: {}" + eol + eol
        assert SseParser().feed(data) == [SseMessage("token", "{}", "1")]
        assert feed_bytewise(SseParser(), data) == [SseMessage("token", "{}", "1")]


def test_crlf_split_between_chunks_is_one_line_end():
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r\n\r\n") == [SseMessage("message", "a\nb", None)]


def test_multi_line_data_and_default_event():
    assert SseParser().feed(b"data: one\ndata: two\ndata:three\n\n") == [SseMessage("message", "one\ntwo\nthree", None)]


def test_comments_and_padding_are_skipped():
    parser = SseParser()
    data = b"retry: 1000\n\n:" + b" " * 2048 + b'\n\n: keep-alive\nevent: control\ndata: {"control":"ready"}\n\n'
    assert parser.feed(data) == [SseMessage("control", '{"control":"ready"}', None)]
    assert parser.retry_ms == 1000


def test_retry_must_be_digits_and_id_is_remembered():
    parser = SseParser()
    parser.feed(b"retry: soon\n\n")
    assert parser.retry_ms is None
    parser.feed(b"retry: 2500\nid: 41\ndata: x\n\n")
    assert parser.retry_ms == 2500 and parser.last_event_id == "41"
    # A message without id keeps the last one; an id with NUL is ignored.
    parser.feed(b"data: y\n\nid: 4\x002\ndata: z\n\n")
    assert parser.last_event_id == "41"


def test_event_without_data_is_not_dispatched_and_its_name_is_dropped():
    parser = SseParser()
    assert parser.feed(b"event: lonely\n\ndata: later\n\n") == [SseMessage("message", "later", None)]


def test_field_without_colon_and_value_without_space():
    assert SseParser().feed(b"data\ndata:x\n\n") == [SseMessage("message", "\nx", None)]


def test_utf8_split_across_chunks():
    data = "data: héllo\n\n".encode()
    cut = data.index(b"\xc3") + 1
    parser = SseParser()
    assert parser.feed(data[:cut]) == []
    assert parser.feed(data[cut:]) == [SseMessage("message", "héllo", None)]
