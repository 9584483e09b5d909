"""An incremental ``text/event-stream`` parser (WHATWG HTML, "Parsing an event stream").

Pure: feed it bytes as they arrive, get complete messages back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SseMessage:
    event: str
    data: str
    id: str | None


class SseParser:
    """Feeds bytes, returns dispatched messages; comments and ``retry`` are consumed."""

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split between two chunks
        self._after_cr = False
        buffer = self._buffer + chunk
        out: list[SseMessage] = []
        start = 0
        while True:
            cut = self._line_end(buffer, start)
            if cut is None:
                break
            end, skip = cut
            message = self._line(buffer[start:end].decode("utf-8", "replace"))
            start = end + skip
            if message is not None:
                out.append(message)
        self._buffer = buffer[start:]
        return out

    def _line_end(self, buffer: bytes, start: int) -> tuple[int, int] | None:
        """Where the line at ``start`` ends (LF, CRLF or CR) and how long its end is.
        A CR ends its line at once, so a CR-only stream is not held back a message;
        an LF arriving first in the next chunk is then skipped by ``feed``."""
        lf = buffer.find(b"\n", start)
        cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
        if cr >= 0:
            if cr + 1 == len(buffer):
                self._after_cr = True
                return cr, 1
            return cr, 2 if buffer[cr + 1] == 0x0A else 1
        if lf >= 0:
            return lf, 1
        return None

    def _line(self, line: str) -> SseMessage | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            message = SseMessage(self._event or "message", "\n".join(self._data), self._id)
            if self._id is not None:
                self.last_event_id = self._id
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
