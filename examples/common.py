"""Command-line plumbing the example workers share, so ``python examples/llm_worker.py``
takes the options of ``herald worker ... examples.llm_worker``: where the server is,
which token (``--token``, ``$HERALD_TOKEN``, or the development token the server wrote
to ``.herald/dev-token``), which queue and name, WebSocket or HTTP-claim mode."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from herald_cli import add_worker_options, run_worker
from worker import Worker


def run_cli(worker: Worker, description: str, argv: Sequence[str] | None = None) -> None:
    """Parse the worker options and serve ``worker`` until Ctrl-C."""
    parser = argparse.ArgumentParser(description=description)
    add_worker_options(parser, default_queue=worker.queue)
    run_worker(worker, parser.parse_args(argv))
