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
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        self._buffer += chunk
        out: list[SseMessage] = []
        while True:
            cut = self._line_end()
            if cut is None:
                break
            end, skip = cut
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + skip :]
            message = self._line(line)
            if message is not None:
                out.append(message)
        return out

    def _line_end(self) -> tuple[int, int] | None:
        for i, byte in enumerate(self._buffer):
            if byte == 0x0A:
                return i, 1
            if byte == 0x0D:
                if i + 1 < len(self._buffer):
                    return i, 2 if self._buffer[i + 1] == 0x0A else 1
                return None  # wait: a \n may follow
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
