"""The ``herald`` command: one entry point for what a user does with an installed Herald.

    herald serve [options]                  # the server: the options of ``python server.py``
    herald token --sub alice --scope "executions:read events:publish" --ttl 1h
    herald worker --queue llm examples.llm_worker
    herald --version

``serve`` hands its options to ``server.main`` untouched, so ``python server.py`` and
``herald serve`` cannot drift apart. ``token`` signs with the key the server would use
(``--jwt-secret`` / ``HERALD_JWT_SECRET``, else the development secret ``server.py``
keeps in ``.herald/``), so the token it prints is accepted by a server started the same
way. ``worker`` runs a ``worker.Worker`` subclass named by its module, as ``uvicorn`` or
``gunicorn`` take an application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from core.auth import Authenticator, Scope
from worker import Worker, serve, serve_http

#: What a token gets without ``--scope``: a user's, not an operator's (``admin`` and
#: ``workers`` are asked for by name).
DEFAULT_SCOPES = "executions:read executions:write events:publish"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def herald_version() -> str:
    """The installed distribution's version (``pip install .`` records it)."""
    try:
        return version("herald")
    except PackageNotFoundError:  # run as ``python herald_cli.py`` from a checkout never installed
        return "unknown (not installed)"


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds (argparse ``type``)."""
    found = DURATION.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90s, 15m, 1h or 7d")
    return float(found.group(1)) * UNIT_SECONDS[found.group(2)]


def scopes(text: str) -> tuple[str, ...]:
    """A space- (or comma-) separated scope list, each one Herald knows (argparse ``type``):
    a typo would otherwise give a token that is refused later with a puzzling 403."""
    names = tuple(s for s in re.split(r"[\s,]+", text) if s)
    known = {s.value for s in Scope}
    unknown = [s for s in names if s not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scope {', '.join(unknown)}; known: {' '.join(sorted(known))}")
    return names


def signing_secret(jwt_secret: str | None) -> str:
    """``--jwt-secret`` (or ``HERALD_JWT_SECRET``), else the development secret that
    ``python server.py`` without a key uses: the same function, so the same file."""
    if jwt_secret:
        return jwt_secret
    from server import dev_secret

    return dev_secret()


def load_worker(target: str) -> type[Worker]:
    """``module`` (its one ``Worker`` subclass) or ``module:Class`` → the class. The
    current directory is importable, as with ``python -m``, so ``herald worker mine``
    runs ``./mine.py``."""
    module_name, _, class_name = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if class_name:
        found = getattr(module, class_name, None)
        if not (inspect.isclass(found) and issubclass(found, Worker)):
            raise SystemExit(f"herald worker: {target} is not a worker.Worker subclass")
        return found
    candidates = [
        c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, Worker) and c.__module__ == module_name
    ]
    if len(candidates) != 1:
        names = ", ".join(c.__name__ for c in candidates) or "none"
        raise SystemExit(f"herald worker: {module_name} defines {len(candidates)} Worker classes ({names}); name one")
    return candidates[0]


def add_worker_options(parser: argparse.ArgumentParser, default_queue: str | None = None) -> None:
    """The options every way of starting a worker takes (``herald worker`` and the
    example scripts' own command lines)."""
    parser.add_argument("--url", default=os.environ.get("HERALD_URL", "http://127.0.0.1:8080"), help="$HERALD_URL")
    parser.add_argument(
        "--token", default=os.environ.get("HERALD_TOKEN"), help="a token with the workers scope ($HERALD_TOKEN)"
    )
    parser.add_argument("--queue", default=default_queue, help="the queue to serve (default: the class's)")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="unique per queue")
    parser.add_argument("--capacity", type=int, default=None, help="executions run at once (default: the class's)")
    parser.add_argument("--http", action="store_true", help="long-poll claims instead of WebSocket")


def worker_token(token: str | None) -> str:
    """The given token, else the development token the server wrote to ``.herald/``."""
    if token:
        return token
    from server import dev_directory

    path = os.path.join(dev_directory(), "dev-token")
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        raise SystemExit(
            f"no --token, no $HERALD_TOKEN and no {path} (a development server writes it);"
            " mint one with: herald token --sub worker-1 --scope workers --jwt-secret ..."
        ) from None


def run_worker(worker: Worker, args: argparse.Namespace) -> None:
    """Serve ``worker`` with the options of ``add_worker_options`` until Ctrl-C."""
    token = worker_token(args.token)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    options: dict[str, Any] = {
        "queue": args.queue or worker.queue,
        "name": args.name,
        "capacity": args.capacity or worker.capacity,
    }
    runner = serve_http if args.http else serve
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner(worker, args.url, token, **options))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description="Herald: execution event streams")
    parser.add_argument("--version", action="version", version=f"herald {herald_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,token,worker}")
    # serve's options are server.py's own parser's: its --help lists them.
    commands.add_parser("serve", add_help=False, help="run the server (options: herald serve --help)")
    token = commands.add_parser("token", help="print a JWT signed with the server's secret")
    token.add_argument("--sub", required=True, help="the token's subject (owner of what it creates)")
    token.add_argument(
        "--scope", type=scopes, default=scopes(DEFAULT_SCOPES), help=f'space-separated (default "{DEFAULT_SCOPES}")'
    )
    token.add_argument("--ttl", type=duration, default=3600.0, help="lifetime: 3600, 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--execution", action="append", default=None, help="limit reading to this id (repeatable)")
    token.add_argument(
        "--jwt-secret",
        default=os.environ.get("HERALD_JWT_SECRET"),
        help="HS256 secret ($HERALD_JWT_SECRET); default: the development secret in .herald/",
    )
    token.add_argument(
        "--jwt-algorithms",
        default=os.environ.get("HERALD_JWT_ALGORITHMS", ""),
        help="as the server's; the token is signed with the first (default HS256)",
    )
    worker = commands.add_parser("worker", help="serve a queue with a worker.Worker class")
    worker.add_argument("target", help="module or module:Class, e.g. examples.llm_worker")
    add_worker_options(worker)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``herald`` console script."""
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        import server

        server.main(rest, prog="herald serve")
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "token":
        algorithms = [a.strip() for a in args.jwt_algorithms.split(",") if a.strip()]
        try:
            auth = Authenticator(secret=signing_secret(args.jwt_secret), algorithms=algorithms)
        except ValueError as exc:  # e.g. RS256: those tokens come from the identity provider
            parser.error(f"--jwt-algorithms: {exc}")
        print(auth.mint(args.sub, args.scope, ttl=args.ttl, executions=args.execution))
    elif args.command == "worker":
        run_worker(load_worker(args.target)(), args)


if __name__ == "__main__":
    main()
