"""The ``herald`` command (herald_cli.py) and the start-up options it shares with
``python server.py``: tokens the server accepts, ``serve`` and ``worker`` as real
processes that start without a single warning, the MongoDB database rule, and where
development mode keeps its secret."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import herald_cli
import server
from core.auth import Authenticator
from tests.services import HeraldProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-test-secret-of-at-least-32-bytes!!"
HERALD = [sys.executable, "-W", "error::DeprecationWarning", "-m", "herald_cli"]


def herald(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HERALD, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60
    )


# --- argument types -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("1.5h", 5400)]
)
def test_duration(text: str, seconds: float) -> None:
    assert herald_cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "h", "-5m", "0", "1 h 2"])
def test_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        herald_cli.duration(text)


def test_scopes_known_only() -> None:
    assert herald_cli.scopes("executions:read  events:publish,workers") == (
        "executions:read",
        "events:publish",
        "workers",
    )
    with pytest.raises(argparse.ArgumentTypeError, match="executions:reed"):
        herald_cli.scopes("executions:reed")


# --- herald token ---------------------------------------------------------------------
def test_token_is_accepted_by_a_server_with_that_secret() -> None:
    done = herald("token", "--sub", "alice", "--scope", "executions:read events:publish", "--ttl", "1h")
    assert done.returncode == 0, done.stderr
    # No --jwt-secret: the development secret, the one server.py would use here.
    principal = Authenticator(secret=server.dev_secret()).decode(done.stdout.strip())
    assert principal.sub == "alice"
    assert set(principal.scopes) == {"executions:read", "events:publish"}
    assert 3590 < principal.exp - time.time() <= 3600

    done = herald("token", "--sub", "bob", "--execution", "ex_a", "--execution", "ex_b", "--ttl", "90s",
                  env={"HERALD_JWT_SECRET": SECRET})  # fmt: skip
    assert done.returncode == 0, done.stderr
    principal = Authenticator(secret=SECRET).decode(done.stdout.strip())
    assert principal.sub == "bob" and set(principal.scopes) == set(herald_cli.DEFAULT_SCOPES.split())
    assert principal.executions == frozenset({"ex_a", "ex_b"})


def test_token_refusals() -> None:
    bad_scope = herald("token", "--sub", "a", "--scope", "root")
    assert bad_scope.returncode == 2 and "unknown scope root" in bad_scope.stderr
    asymmetric = herald("token", "--sub", "a", "--jwt-secret", SECRET, "--jwt-algorithms", "RS256")
    assert asymmetric.returncode == 2 and "--jwt-algorithms" in asymmetric.stderr
    stray = herald("token", "--sub", "a", "--port", "1")
    assert stray.returncode == 2 and "unrecognized arguments: --port 1" in stray.stderr


def test_version() -> None:
    done = herald("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"herald {version('herald')}"


# --- herald serve and herald worker as processes ---------------------------------------
def get(url: str, token: str | None = None, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5) as answer:
        return (
            json.loads(answer.read()) if answer.headers.get("Content-Type", "").startswith("application/json") else None
        )


@pytest.fixture
def herald_serve(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``herald serve`` (with -W error::DeprecationWarning) on a free port."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HERALD_JWT_SECRET": SECRET, "HERALD_HEARTBEAT": "2"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*HERALD, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield base, log
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log.read_text()


def assert_no_warning(log: str) -> None:
    noisy = [line for line in log.splitlines() if "WARNING" in line or "Warning" in line]
    assert not noisy, log


def test_serve_and_worker_start_without_warnings(herald_serve: tuple[str, Path], tmp_path: Path) -> None:
    base, serve_log = herald_serve
    assert "Herald listening on" in serve_log.read_text()
    worker_token = Authenticator(secret=SECRET).mint("worker-1", ["workers"])
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [*HERALD, "worker", "--url", base, "--queue", "cli-llm", "--name", "w1", "examples.llm_worker"],
            cwd=ROOT,
            env={**os.environ, "HERALD_TOKEN": worker_token},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        user = Authenticator(secret=SECRET).mint("alice")
        created = get(base + "/api/executions", user, {"kind": "chat", "queue": "cli-llm", "input": {"tokens": 20}})
        deadline = time.monotonic() + 20
        while (document := get(f"{base}/api/executions/{created['id']}", user))["status"] != "succeeded":
            assert document["status"] in ("pending", "running") and time.monotonic() < deadline, document
            time.sleep(0.1)
        assert document["result"]["tokens"] == 20 and document["worker"] == "w1"
        assert "worker w1 serving queue cli-llm" in log.read_text()
    finally:
        worker.send_signal(signal.SIGINT)  # Ctrl-C: herald worker stops quietly
        assert worker.wait(15) == 0, log.read_text()
    assert_no_warning(log.read_text())
    assert_no_warning(serve_log.read_text())


def test_serve_help_lists_the_server_options() -> None:
    done = herald("serve", "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: herald serve") and "--mongo-database" in done.stdout


def test_worker_refusals(tmp_path: Path) -> None:
    (tmp_path / "two_workers.py").write_text(
        "from worker import Worker\n\nclass A(Worker):\n    pass\n\nclass B(Worker):\n    pass\n\nNOT_ONE = 1\n"
    )
    for target, message in [
        ("two_workers", "defines 2 Worker classes (A, B); name one"),
        ("two_workers:NOT_ONE", "is not a worker.Worker subclass"),
    ]:
        done = subprocess.run(
            [*HERALD, "worker", "--token", "t", target], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1 and message in done.stderr, done.stderr


def test_load_worker_by_module_and_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_echo_worker.py").write_text(
        "from worker import Worker\n\nclass Echo(Worker):\n    queue = 'echo'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert herald_cli.load_worker("cli_echo_worker").queue == "echo"
    assert herald_cli.load_worker("cli_echo_worker:Echo").__name__ == "Echo"
    assert herald_cli.load_worker("examples.diagnosis_worker").__name__ == "DiagnosisWorker"


def test_worker_without_any_token_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "dev_directory", lambda: str(tmp_path / ".herald"))
    with pytest.raises(SystemExit, match="herald token --sub worker-1 --scope workers"):
        herald_cli.worker_token(None)
    assert herald_cli.worker_token("given") == "given"


# --- development mode's directory ------------------------------------------------------
def test_dev_directory_is_the_checkouts() -> None:
    """From a checkout (or an editable install) ``.herald/`` is the checkout's, whatever
    the current directory; installed, it is the current directory's (test_packaging)."""
    assert server.dev_directory() == str(ROOT / ".herald")


# --- --mongo-database --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("mongodb://h/mydb", "mydb"),
        ("mongodb://u:p%2Fw@h1:27017,h2:27018/my%20db?replicaSet=rs&authSource=admin", "my db"),
        ("mongodb+srv://cluster.example.com/prod?retryWrites=true", "prod"),
        ("mongodb://h/", None),
        ("mongodb://h/?authSource=admin", None),
        ("mongodb://h", None),
        (None, None),
    ],
)
def test_uri_database(uri: str | None, name: str | None) -> None:
    assert server.uri_database(uri) == name


def test_mongo_database_option_wins_over_the_uri() -> None:
    def database(argv: list[str], environ: dict[str, str] | None = None) -> str:
        return server.parse_settings(argv, environ or {}).mongo_database

    assert database(["--mongo-uri", "mongodb://h/mydb"]) == "mydb"
    assert database(["--mongo-uri", "mongodb://h/mydb", "--mongo-database", "other"]) == "other"
    assert database([], {"HERALD_MONGO_URI": "mongodb://h/envdb"}) == "envdb"
    assert database([], {"HERALD_MONGO_URI": "mongodb://h/envdb", "HERALD_MONGO_DATABASE": "x"}) == "x"
    assert database(["--mongo-uri", "mongodb://h/"]) == "herald"
    assert database([]) == "herald"


@pytest.mark.mongo
def test_server_writes_to_the_database_named_in_the_uri(mongo_target: Any) -> None:
    """``--mongo-uri mongodb://host/mydb`` alone: the executions land in ``mydb``."""
    from pymongo import MongoClient

    herald_process = HeraldProcess("--mongo-uri", mongo_target.uri.rstrip("/") + "/" + mongo_target.database)
    herald_process.start()
    try:
        token = Authenticator(secret=herald_process.secret).mint("alice")
        created = get(herald_process.base_url + "/api/executions", token, {"kind": "uri-db"})
    finally:
        herald_process.stop()
    client: MongoClient = MongoClient(mongo_target.uri, directConnection=True)
    try:
        stored = client[mongo_target.database]["executions"].find_one({"_id": created["id"]})
        assert stored is not None and stored["kind"] == "uri-db"
        assert client["herald"]["executions"].find_one({"_id": created["id"]}) is None
    finally:
        client.close()
