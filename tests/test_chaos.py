"""The chaos benchmark as a test (issue 13), small and with loose bounds: ~100
subscribers over WebSocket, SSE and long-poll, each killing its own connection (a FIN
without a close frame, or a TCP reset) every few seconds and resuming with its cursor,
for ~16 s against a real ``server.py`` — every event delivered once, in order, on every
transport. Its wire helpers (chunked decoding, WebSocket frames) are tested without
sockets first, since a bug there would pass for the server's.
"""

from __future__ import annotations

import asyncio

import pytest

from loadtests import chaos

pytestmark = pytest.mark.timeout(150)


def test_dechunk_reassembles_a_chunked_body_fed_in_any_pieces() -> None:
    body = b"event: control\ndata: {}\n\n" * 3 + b"id: 4\nevent: token\ndata: x\n\n"
    wire = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:40], body[40:])) + b"0\r\n\r\n"
    for size in (1, 2, 3, 5, 64, len(wire)):
        dechunk = chaos.Dechunk()
        out = b"".join(dechunk.feed(wire[i : i + size]) for i in range(0, len(wire), size))
        assert out == body and dechunk.ended, size


def test_ws_frames_reads_complete_frames_and_leaves_the_rest() -> None:
    small, medium, large = b"a" * 5, b"b" * 300, b"c" * 70000
    wire = bytes([0x81, 5]) + small + bytes([0x81, 126]) + (300).to_bytes(2, "big") + medium
    wire += bytes([0x81, 127]) + (70000).to_bytes(8, "big") + large + bytes([0x88, 2]) + b"\x03\xe9"
    frames, used = chaos.ws_frames(bytearray(wire[:-3]))
    assert [(op, len(p)) for op, p in frames] == [(1, 5), (1, 300), (1, 70000)] and used == len(wire) - 4
    frames, used = chaos.ws_frames(bytearray(wire))
    assert frames[-1] == (0x8, b"\x03\xe9") and used == len(wire)
    masked = chaos.ws_frame(0xA, b"ping!")
    assert masked[0] == 0x8A and masked[1] == 0x80 | 5 and len(masked) == 2 + 4 + 5


def test_chaos_every_event_once_in_order_on_every_transport() -> None:
    options = chaos.parse_args(
        [
            "--subscribers",
            "96",
            "--executions",
            "3",
            "--rate",
            "10",
            "--duration",
            "16",
            "--kill-every",
            "2:4",
            "--offline",
            "1",
            "--settle",
            "30",
            "--seed",
            "13",
        ]
    )
    report = asyncio.run(chaos.main(options))
    print(report.table())
    for name, stats in report.stats.items():
        assert stats.subscribers == 32, name
        assert stats.kills >= 3 * 32, f"{name}: only {stats.kills} kills"
        assert report.delivered_pct(name) == 100.0, f"{name}: {report.delivered_pct(name):.2f} % delivered"
        assert (stats.duplicates, stats.order, stats.lost, stats.stuck) == (0, 0, 0, 0), (name, stats)
        assert stats.replay and max(stats.replay) < 10, f"{name}: replay max {max(stats.replay, default=None)}"
    assert report.from_memory_pct is not None and report.from_memory_pct >= 95, report.resumes
