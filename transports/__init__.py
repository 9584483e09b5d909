"""Transports: one file each, peers that never import one another. A transport frames
and writes bytes (``core.transport.Transport``); the connection's life is the
``core.session.Session``'s.

``TRANSPORTS`` lists them in the server's default preference order; adding a transport
is one file plus one line here.
"""

from transports import longpoll, sse, websocket

TRANSPORTS = {
    websocket.NAME.value: websocket.rule,
    sse.NAME.value: sse.rule,
    longpoll.NAME.value: longpoll.rule,
}
