"""Command-line plumbing the example workers share: where the server is, which token
(``--token``, ``$HERALD_TOKEN``, or the development token ``python server.py`` wrote to
``.herald/dev-token``), which queue and name, WebSocket or HTTP-claim mode."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Sequence

from worker import Worker, serve, serve_http

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(worker: Worker, description: str, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=os.environ.get("HERALD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("HERALD_TOKEN"))
    parser.add_argument("--queue", default=worker.queue)
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--capacity", type=int, default=worker.capacity)
    parser.add_argument("--http", action="store_true", help="long-poll claims instead of WebSocket")
    args = parser.parse_args(argv)
    token = args.token
    if not token:
        with open(os.path.join(HERE, ".herald", "dev-token")) as fh:
            token = fh.read().strip()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    options = {"queue": args.queue, "name": args.name, "capacity": args.capacity}
    runner = serve_http if args.http else serve
    try:
        asyncio.run(runner(worker, args.url, token, **options))
    except KeyboardInterrupt:
        pass
