"""SecantusDB, a MongoDB wire-protocol server, started and stopped by the tests.

Test-only (GPL-2.0, beta, never shipped): ``secantusd-py`` from the ``secantusdb``
package. Each instance binds a free 127.0.0.1 port. ``storage=None`` gives a throwaway
``:memory:`` instance; a test that kills the server passes a directory and
``sync_on_commit=True`` (without it SecantusDB loses recent writes on ``kill -9``).
Its timings are SecantusDB's, never to be presented as MongoDB's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from pymongo import MongoClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secantusd_binary() -> str:
    """``secantusd-py`` next to this interpreter (the venv), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "secantusd-py")
    found = here if os.path.exists(here) else shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError("secantusd-py is not installed; `make test` installs secantusdb from setup.cfg")
    return found


class ChildProcess:
    """A server the tests start as a child process: ``kill()`` is ``kill -9`` (no
    shutdown, no flush), ``stop()`` a polite SIGTERM with a deadline."""

    process: subprocess.Popen | None = None

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class SecantusServer(ChildProcess):
    """One SecantusDB process; ``kill()`` then ``start()`` keeps port and storage."""

    def __init__(
        self,
        *,
        storage: str | None = None,
        sync_on_commit: bool = False,
        test_commands: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.storage = storage
        self.sync_on_commit = sync_on_commit
        self.test_commands = test_commands
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"herald-secantus-{self.port}.log")

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20.0) -> None:
        args = [secantusd_binary(), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--storage-path", self.storage or ":memory:", "--log-level", "WARNING"]
        if self.sync_on_commit:
            args.append("--sync-on-commit")
        if self.test_commands:
            args.append("--enable-test-commands")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}; see {self.log_path}")
            if self.answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"secantusd-py did not answer within {timeout}s; see {self.log_path}")

    def answers(self) -> bool:
        """True when the server accepts a connection and answers ``ping``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        client: MongoClient = MongoClient(self.uri, serverSelectionTimeoutMS=500, directConnection=True)
        try:
            client.admin.command("ping")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not answering yet"
            return False
        finally:
            client.close()

    def fail_point(self, mode: object, **data: object) -> None:
        """``configureFailPoint failCommand`` (needs ``test_commands=True``)."""
        client: MongoClient = MongoClient(self.uri, serverSelectionTimeoutMS=2000, directConnection=True)
        try:
            client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})
        finally:
            client.close()


class HeraldProcess(ChildProcess):
    """``python server.py`` as a child process on a free 127.0.0.1 port, so a test can
    ``kill -9`` it and start it again on the same port and database."""

    def __init__(self, *args: str, port: int | None = None, secret: str = "test-secret-0123456789-0123456789") -> None:
        self.port = port or free_port()
        self.secret = secret
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"herald-server-{self.port}.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        args = [sys.executable, os.path.join(root, "server.py"), "--port", str(self.port)]
        args += ["--jwt-secret", self.secret, *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server.py exited with {self.process.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server.py did not listen within {timeout}s; see {self.log_path}")
