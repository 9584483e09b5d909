"""Herald's Python client: the HTTP API and a stream follower over any transport.

Built on Tornado's own HTTP and WebSocket clients. Used by the tests, the load tests
and the worker SDK::

    client = HeraldClient("http://127.0.0.1:8080", token)
    execution = await client.create("chat")
    async for event in client.follow(execution["id"], transport="sse"):
        print(event["seq"], event["event"], event["data"])

    # several executions over one connection (/api/streams)
    async for execution_id, event in client.follow_many({first: 0, second: 0}, transport="sse"):
        print(execution_id, event["seq"], event["event"])
"""

from client.api import ApiError, HeraldClient
from client.follow import Follower, StreamEnded
from client.streams import StreamsFollower

__all__ = ["ApiError", "Follower", "HeraldClient", "StreamEnded", "StreamsFollower"]
