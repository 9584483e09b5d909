"""Transports: one file each, peers that never import one another. A transport frames
and writes bytes (``core.transport.Transport``); the connection's life is the
``core.session.Session``'s.

``TRANSPORTS`` lists them in the server's default preference order, each with its
rules: the single stream (``/api/executions/ID/events``) and several streams over one
connection (``/api/streams``). Adding a transport is one file plus one line here.
"""

from transports import longpoll, sse, websocket

TRANSPORTS = {
    websocket.NAME.value: (websocket.rule, websocket.streams_rule),
    sse.NAME.value: (sse.rule, sse.streams_rule),
    longpoll.NAME.value: (longpoll.rule, longpoll.streams_rule),
}
