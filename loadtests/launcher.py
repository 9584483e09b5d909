"""Start a Herald deployment on this machine for a load tool or a test: ``server.py``
processes, and for several of them the project's nginx config (deploy/nginx/herald.conf)
in front, on one SecantusDB (a MongoDB wire-protocol server) and one Redis.

Every process binds 127.0.0.1 on a free port and logs to a file in the temp directory;
``Deployment`` is a context manager that stops what it started, whatever happens.
Used by loadtests/chaos.py and by the tests (tests/test_rolling_restart.py), so a
benchmark and its test start exactly the same deployment.

SecantusDB is a test-only server (``secantusd-py`` from the ``secantusdb`` package of
the ``test`` extra); its timings are SecantusDB's, never to be presented as MongoDB's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_CONF = os.path.join(ROOT, "deploy", "nginx", "herald.conf")
#: A throw-away HS256 secret (at least 32 bytes) for every process of a deployment.
SECRET = "herald-chaos-secret-0123456789abcdef"

#: nginx's main config around deploy/nginx/herald.conf: foreground, one worker process,
#: everything under PREFIX.
NGINX_MAIN = """daemon off;
master_process off;
worker_processes 1;
pid PREFIX/nginx.pid;
error_log PREFIX/error.log warn;
events { worker_connections 16384; }
worker_rlimit_nofile 40000;
http {
  access_log off;
  client_body_temp_path PREFIX/client_body;
  proxy_temp_path PREFIX/proxy;
  fastcgi_temp_path PREFIX/fastcgi;
  uwsgi_temp_path PREFIX/uwsgi;
  scgi_temp_path PREFIX/scgi;
  include PREFIX/herald.conf;
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Child:
    """A child process that listens on ``port``, logging to ``log_path``."""

    name = "process"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"herald-{self.name}-{self.port}.log")
        open(self.log_path, "wb").close()  # this run's log only (a restart appends to it)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return listening(self.port)

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            if self.ready():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """``SIGTERM``: a Herald process drains."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code within ``timeout`` seconds, or None (still running)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """``kill -9``: no drain, no flush."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.running:
            self.terminate()
            if self.wait(15) is None:
                self.kill()


class HeraldServer(Child):
    """``python server.py`` with the deployment's secret and ``args``."""

    name = "server"

    def __init__(self, args: Sequence[str] = (), port: int | None = None) -> None:
        super().__init__(port)
        self.args = list(args)

    def argv(self) -> list[str]:
        return [
            sys.executable,
            os.path.join(ROOT, "server.py"),
            "--port",
            str(self.port),
            "--jwt-secret",
            SECRET,
            *self.args,
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return response.read().decode()


class Secantus(Child):
    """A throw-away in-memory SecantusDB."""

    name = "secantus"

    def argv(self) -> list[str]:
        here = os.path.join(os.path.dirname(sys.executable), "secantusd-py")
        binary = here if os.path.exists(here) else shutil.which("secantusd-py")
        if binary is None:
            raise RuntimeError("secantusd-py is not installed (the `test` extra of setup.cfg installs secantusdb)")
        return [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            ":memory:",
            "--log-level",
            "WARNING",
        ]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"


class Redis(Child):
    """A redis-server without persistence."""

    name = "redis"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test-services.sh installs it)")
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Nginx(Child):
    """Debian's nginx with deploy/nginx/herald.conf, its upstreams this deployment's."""

    name = "nginx"

    def __init__(self, upstreams: list[int]) -> None:
        super().__init__()
        self.prefix = tempfile.mkdtemp(prefix="herald-nginx-")
        with open(DEPLOY_CONF) as fh:
            conf = fh.read()
        servers = "\n".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstreams)
        conf, n = re.subn(r"(?s)# herald-upstreams-begin.*?# herald-upstreams-end", servers, conf)
        conf, m = re.subn(r"listen [^;]+;\s*# herald-listen", f"listen 127.0.0.1:{self.port};", conf)
        if (n, m) != (1, 1):
            raise RuntimeError("deploy/nginx/herald.conf lost its upstream or listen marker")
        with open(os.path.join(self.prefix, "herald.conf"), "w") as fh:
            fh.write(conf)
        self.config = os.path.join(self.prefix, "nginx.conf")
        with open(self.config, "w") as fh:
            fh.write(NGINX_MAIN.replace("PREFIX", self.prefix))

    def argv(self) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        return [binary, "-p", self.prefix, "-c", self.config, "-e", os.path.join(self.prefix, "error.log")]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


class Deployment:
    """``nodes`` Herald processes: one alone on the embedded store (or on SecantusDB with
    ``mongo``), or several behind nginx on SecantusDB and Redis. ``url`` is where
    clients go (nginx, or the one process)."""

    def __init__(self, nodes: int = 1, *, mongo: bool = False, args: Sequence[str] = ()) -> None:
        self.store = Secantus() if mongo or nodes > 1 else None
        self.redis = Redis() if nodes > 1 else None
        shared: list[str] = []
        if self.store is not None:
            shared += ["--mongo-uri", self.store.uri, "--mongo-database", "herald_chaos"]
        if self.redis is not None:
            shared += ["--redis-url", self.redis.url]
        self.nodes = [HeraldServer([*shared, *args]) for _ in range(nodes)]
        self.nginx = Nginx([node.port for node in self.nodes]) if nodes > 1 else None

    @property
    def url(self) -> str:
        return self.nginx.url if self.nginx is not None else self.nodes[0].url

    def start(self) -> Deployment:
        try:
            for child in (self.store, self.redis, *self.nodes, self.nginx):
                if child is not None:
                    child.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for child in (self.nginx, *self.nodes, self.redis, self.store):
            if child is not None:
                child.stop()

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        """Every Herald process's log (to search for tracebacks)."""
        out = []
        for node in self.nodes:
            with open(node.log_path, errors="replace") as fh:
                out.append(fh.read())
        return "\n".join(out)
