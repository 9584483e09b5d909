"""Transports: one file each, peers that never import one another.

``TRANSPORTS`` lists them in the server's default preference order; adding a transport
is one file plus one line here.
"""

from transports import longpoll, sse, websocket

TRANSPORTS = {
    websocket.NAME: websocket.rule,
    sse.NAME: sse.rule,
    longpoll.NAME: longpoll.rule,
}
