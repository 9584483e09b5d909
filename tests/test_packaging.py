"""``pip install .`` into an empty venv gives a working Herald: the README's install
block pasted in a copy of the checkout, then, from another directory, ``herald
--version``, ``herald token``, ``herald serve`` serving its static files and templates
from site-packages, and ``herald worker`` running an installed example worker — each
started with ``-W error::DeprecationWarning`` and printing no warning.

Needs PyPI (the venv is empty, so pip fetches Herald's dependencies and the build
backend); it takes 10-30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port
from tests.test_readme import ROOT, readme_blocks


def checkout_copy(target: Path) -> None:
    """The files a clone has: tracked, plus new ones not ignored (work not yet committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def fetch(url: str, token: str | None = None, body: Any = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5) as answer:
        return answer.status, answer.read()


def no_warning(text: str) -> bool:
    return not any("WARNING" in line or "Warning" in line for line in text.splitlines())


@pytest.mark.timeout(300)
def test_pip_install_into_an_empty_venv(tmp_path: Path) -> None:
    checkout = tmp_path / "herald"
    checkout.mkdir()
    checkout_copy(checkout)
    install = next(b for b in readme_blocks() if b.lang == "sh" and "pip install ." in b.text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "COVERAGE_", "HERALD_"))}
    done = subprocess.run(
        ["bash", "-e", "-c", install.text], cwd=checkout, env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("herald 0.1.0"), done.stdout
    venv = tmp_path / "herald-env"  # the README's ../herald-env
    herald = [str(venv / "bin" / "python"), "-W", "error::DeprecationWarning", str(venv / "bin" / "herald")]

    # Elsewhere: no checkout on the path; development mode keeps .herald/ here.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    token = subprocess.run(
        [*herald, "token", "--sub", "alice", "--scope", "executions:read executions:write events:publish"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert token.returncode == 0 and no_warning(token.stderr), token.stderr
    assert (elsewhere / ".herald" / "dev-secret").exists()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_log = tmp_path / "serve.log"
    worker_log = tmp_path / "worker.log"
    with open(serve_log, "w") as out:
        serve = subprocess.Popen(
            [*herald, "serve", "--port", str(port)], cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    worker = None
    try:
        deadline = time.monotonic() + 30
        while not (elsewhere / ".herald" / "dev-token").exists() or "Herald listening" not in serve_log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.1)
        assert fetch(base + "/static/herald.js")[0] == 200  # static/ installed beside server.py
        status, page = fetch(base + "/")
        assert status == 200 and b"<html" in page.lower()  # templates/ too
        with open(worker_log, "w") as out:
            worker = subprocess.Popen(  # no --token: the dev token the server wrote here
                [*herald, "worker", "--url", base, "--queue", "llm", "--name", "pkg-1", "examples.llm_worker"],
                cwd=elsewhere,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        user = token.stdout.strip()
        status, body = fetch(base + "/api/executions", user, {"kind": "chat", "queue": "llm", "input": {"tokens": 5}})
        execution_id = json.loads(body)["id"]
        deadline = time.monotonic() + 30
        while json.loads(fetch(f"{base}/api/executions/{execution_id}", user)[1])["status"] != "succeeded":
            assert time.monotonic() < deadline and worker.poll() is None, worker_log.read_text()
            time.sleep(0.1)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGINT)
            worker.wait(15)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0, serve_log.read_text()
    assert no_warning(serve_log.read_text()), serve_log.read_text()
    assert no_warning(worker_log.read_text()), worker_log.read_text()
