"""Reading one ``text/event-stream`` response with Tornado's HTTP client, message by
message: what the single-stream follower and the multiplexed one share.

Tornado's client gives a streamed body to a callback; the messages are handed to the
caller through a queue so that it can wait for them with an idle timeout (a stream that
stays silent past the heartbeat is dead, or behind a buffering proxy). A non-200 answer
is raised as ``HTTPClientError`` with its body, as a plain fetch would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from client.sse import SseMessage, SseParser


class _Stopped(Exception):
    """Raised in the streaming callback: how Tornado's client is told to drop a
    connection. A stopped reader's stream thus closes at its next byte (at the latest
    the next heartbeat), instead of living until the stream ends."""


async def read_event_stream(
    http: AsyncHTTPClient, url: str, headers: dict[str, str], idle_timeout: float, parser: SseParser
) -> AsyncIterator[SseMessage]:
    """The messages of one event-stream response, until the server ends it. Raises
    ``TimeoutError`` after ``idle_timeout`` seconds without a byte, ``HTTPClientError``
    for a non-200 answer; ``parser`` is the caller's (it keeps ``retry:``)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    status: list[int] = []
    error_body: list[bytes] = []
    stopped = False

    def on_header(line: str) -> None:
        if line.startswith("HTTP/"):
            status.append(int(line.split()[1]))

    def on_chunk(chunk: bytes) -> None:
        if stopped:
            raise _Stopped
        if status and status[-1] != 200:
            error_body.append(chunk)
        else:
            queue.put_nowait(chunk)

    request = HTTPRequest(
        url,
        headers={**headers, "Accept": "text/event-stream"},
        header_callback=on_header,
        streaming_callback=on_chunk,
        connect_timeout=10,
        request_timeout=24 * 3600,
    )
    fetch = asyncio.ensure_future(http.fetch(request, raise_error=False))
    fetch.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (chunk := await asyncio.wait_for(queue.get(), idle_timeout)) is not None:
            for message in parser.feed(chunk):
                yield message
    finally:
        stopped = True
        if not fetch.done():
            fetch.cancel()
    response = fetch.result() if not fetch.cancelled() else None
    if response is not None and response.code != 200:
        response._body = b"".join(error_body)  # noqa: SLF001 - a streamed error body, as a fetch keeps it
        raise HTTPClientError(response.code, response=response)
