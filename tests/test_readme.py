"""The README runs as written: every fenced block of README.md, pasted in order, as a new
user does after ``make run`` — so a snippet that no longer works fails here, not on a
newcomer's first hour.

The server is started the way ``make run`` starts it (``scripts/run.sh``: the server and
the two example workers), on a free port: the README keeps the default port 8080, and
the test substitutes its own. Each ``sh`` block runs in a fresh ``bash`` (a new
terminal) in a directory holding ``.venv`` (this test's venv, where ``make run``
installed Herald) and whatever the README told the user to save there (a ``python``
block starting ``# name.py``). Blocks that serve forever (a worker) run in the
background while the next blocks use them. The ``pip install .`` block needs a copy of
the checkout and is pasted by ``tests/test_packaging.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.auth import Authenticator
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its info string (``sh``, ``python``...) and text."""

    lang: str
    text: str

    @property
    def serves_forever(self) -> bool:
        """A worker the user leaves running in its own terminal."""
        last = [line for line in self.text.splitlines() if line.strip()][-1]
        return last.startswith(("python ", "herald worker "))


def readme_blocks(path: Path = ROOT / "README.md") -> list[Block]:
    return [Block(lang, text) for lang, text in FENCE.findall(path.read_text())]


def test_every_block_is_runnable_or_declared_text() -> None:
    """A block the tests would not run must say so (```text); an untagged one is a slip."""
    blocks = readme_blocks()
    assert blocks, "README.md has no fenced blocks?"
    assert {b.lang for b in blocks} <= {"sh", "python", "text"}, [b.lang for b in blocks]
    for block in blocks:
        if block.lang == "python":
            assert re.match(r"# [\w-]+\.py\n", block.text), "a python block starts with '# file.py' (where to save it)"


def test_make_run_is_what_this_test_starts() -> None:
    """The README's first commands are ``make run``/``make test``; this test stands in for
    ``make run`` with ``scripts/run.sh``, so check that is what the Makefile runs."""
    first = next(b for b in readme_blocks() if b.lang == "sh")
    assert first.text.startswith("make run") and "make test" in first.text
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "bash scripts/run.sh" in run_recipe
    assert "pip install -q -e .\n" in makefile  # make run installs Herald alone


class Terminal:
    """What the reader's terminals share: a directory and a server on ``port``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.background: list[subprocess.Popen] = []

    def paste(self, text: str) -> str:
        """The block as pasted against this test's server."""
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")

    def env(self) -> dict[str, str]:
        """A new terminal's: no venv active, no token; ``herald worker``'s default URL
        (port 8080, which may be someone's real server) moved to this test's server."""
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "TOKEN", "HERALD_TOKEN")}
        env["HERALD_URL"] = f"http://127.0.0.1:{self.port}"
        return env

    def run(self, block: Block, timeout: float = 60) -> str:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", self.paste(block.text)],
            cwd=self.directory,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"block failed ({done.returncode}):\n{block.text}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, block: Block, log: Path) -> subprocess.Popen:
        with open(log, "w") as out:
            process = subprocess.Popen(
                ["bash", "-c", self.paste(block.text)],
                cwd=self.directory,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped below with everything it started
            )
        self.background.append(process)
        return process

    def stop_background(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.background:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``make run`` on a free port: ``scripts/run.sh`` with this venv's Python."""
    port = free_port()
    env = {**os.environ, "HERALD_PORT": str(port), "PY": sys.executable}
    env.pop("HERALD_JWT_SECRET", None)
    log = tmp_path / "make-run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while "Workers:" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield port, log
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: run.sh stops the server and both workers
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def api(port: int, method: str, path: str, token: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wait_for(condition: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def leading_json(line: str) -> Any:
    """The JSON document a line starts with. The SSE follower of step 2 runs in the
    background of the same terminal, so its output may land right after an answer,
    before the newline (``{"seq":[2]}id: 2``), as it would on a reader's screen."""
    document, _ = json.JSONDecoder().raw_decode(line)
    return document


def check_walkthrough(output: str) -> None:
    """What the walk-through's prose says it prints: the publish answers' seqs, a page
    after seq 2 starting at seq 3, the document, and a long-poll at the end answered
    at once with ``done``."""
    lines = output.splitlines()
    answers = [leading_json(line)["seq"] for line in lines if line.startswith('{"seq"')]
    assert answers == [[2], [3, 4], [5]], output
    pages = [leading_json(line) for line in lines if line.startswith('{"events"')]
    after_2, long_poll = pages
    assert [e["seq"] for e in after_2["events"]] == [3, 4, 5]
    assert after_2["next_after"] == 5 and after_2["done"] is True
    assert long_poll["events"] == [] and long_poll["done"] is True
    document = next(leading_json(line) for line in lines if line.startswith('{"id"'))
    assert document["status"] == "succeeded" and document["last_seq"] == 5
    assert document["result"] == {"healthy": True}
    # The SSE follower (step 2) printed seq 1 (the server's status event) to 5, then ended.
    assert "id: 1\nevent: status" in output and "id: 5\nevent: complete" in output


def test_readme_pasted_in_order(make_run: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = make_run
    os.symlink(sys.prefix, tmp_path / ".venv")  # the venv make run installed Herald into
    terminal = Terminal(tmp_path, port)
    from server import dev_secret  # the secret of the development server run.sh started

    admin = Authenticator(secret=dev_secret()).mint("readme-test", ttl=600)
    ran: list[str] = []
    try:
        for index, block in enumerate(readme_blocks()):
            if block.lang == "text":
                continue
            if block.lang == "python":
                name = block.text.split("\n", 1)[0][2:].strip()
                (tmp_path / name).write_text(terminal.paste(block.text))
                ran.append(f"saved {name}")
            elif block.text.startswith("make run"):
                ran.append("make run (scripts/run.sh)")
            elif "pip install ." in block.text:
                ran.append("install block: tests/test_packaging.py")
            elif block.serves_forever:
                workers_before = queue_workers(port, admin, "diagnosis")
                terminal.start(block, tmp_path / f"block-{index}.log")
                wait_for(
                    lambda n=len(workers_before): len(queue_workers(port, admin, "diagnosis")) > n,
                    f"the worker of block {index} to connect:\n{block.text}",
                )
                ran.append(f"worker {index}")
            else:
                output = terminal.run(block)
                if "/api/executions/$EX/events" in block.text:
                    check_walkthrough(output)
                elif '"queue": "diagnosis"' in block.text:
                    created = json.loads(output)
                    done = wait_for(lambda i=created["id"]: terminal_status(port, admin, i), "the diagnosis to finish")
                    assert done["status"] == "succeeded", done
                    assert done["result"] == {"summary": "1 problem found"}, done
                ran.append(f"ran {index}")
    finally:
        terminal.stop_background()
    assert "saved diagnose.py" in ran and sum(r.startswith("worker") for r in ran) == 2, ran


def queue_workers(port: int, token: str, queue: str) -> list[dict[str, Any]]:
    queues = {q["name"]: q for q in api(port, "GET", "/api/queues", token)["queues"]}
    return queues.get(queue, {}).get("workers", [])


def terminal_status(port: int, token: str, execution_id: str) -> dict[str, Any] | None:
    document = api(port, "GET", f"/api/executions/{execution_id}", token)
    return document if document["status"] in ("succeeded", "failed", "cancelled") else None
