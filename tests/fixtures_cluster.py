"""Several Herald processes behind nginx round-robin — the deployment of
docs/deploy.md, with the very nginx include file it recommends
(deploy/nginx/herald.conf) — on one SecantusDB database and one Redis.

``cluster(n, *args)`` starts ``n`` ``server.py`` processes and nginx in front of them;
each process stays reachable directly (``cluster.processes[i].base_url``) for tests
that must pin a client to one process.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator

import pytest

from core.auth import ALL_SCOPES, Authenticator
from tests.fixtures_browser import Nginx
from tests.fixtures_mongo import MongoTarget
from tests.fixtures_redis import RedisServer
from tests.services import HeraldProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_CONF = os.path.join(ROOT, "deploy", "nginx", "herald.conf")


def deploy_conf(listen: int, upstreams: list[int]) -> str:
    """deploy/nginx/herald.conf with this cluster's ports in it."""
    with open(DEPLOY_CONF) as fh:
        text = fh.read()
    servers = "\n".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstreams)
    text, n = re.subn(r"(?s)# herald-upstreams-begin.*?# herald-upstreams-end", servers, text)
    assert n == 1, "deploy/nginx/herald.conf lost its upstream markers"
    text, n = re.subn(r"listen [^;]+;\s*# herald-listen", f"listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx/herald.conf lost its listen marker"
    return text


class ClusterNginx(Nginx):
    """nginx with tests/nginx/cluster.conf around deploy/nginx/herald.conf."""

    def __init__(self, upstreams: list[int]) -> None:
        super().__init__("cluster.conf", 0)
        with open(os.path.join(self.prefix, "herald.conf"), "w") as fh:
            fh.write(deploy_conf(self.port, upstreams))


class Cluster:
    """``n`` Herald processes behind one nginx."""

    def __init__(self, mongo: MongoTarget, redis: RedisServer, n: int, *args: str) -> None:
        common = ("--mongo-uri", mongo.uri, "--mongo-database", mongo.database, "--redis-url", redis.url)
        self.processes = [HeraldProcess(*common, "--log-level", "warning", *args) for _ in range(n)]
        self.nginx = ClusterNginx([p.port for p in self.processes])
        self.auth = Authenticator(secret=self.processes[0].secret)

    @property
    def url(self) -> str:
        return self.nginx.url

    def token(self, sub: str = "alice", scopes: tuple[str, ...] = ALL_SCOPES, ttl: float = 3600) -> str:
        return self.auth.mint(sub, scopes, ttl=ttl)

    def start(self) -> None:
        for process in self.processes:
            process.start()
        self.nginx.start()

    def stop(self) -> None:
        self.nginx.stop()
        for process in self.processes:
            process.stop()

    def logs(self) -> str:
        """Every process's log so far (to search for tracebacks)."""
        out = []
        for process in self.processes:
            with open(process.log_path, errors="replace") as fh:
                out.append(fh.read())
        return "\n".join(out)


@pytest.fixture
def cluster(mongo_target: MongoTarget, redis_server: RedisServer) -> Iterator[Callable[..., Cluster]]:
    """``cluster(n, *server_args)``: started, stopped after the test."""
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.fail("Debian's nginx is not installed (scripts/test-services.sh installs it)")
    made: list[Cluster] = []

    def start(n: int = 3, *args: str) -> Cluster:
        c = Cluster(mongo_target, redis_server, n, *args)
        made.append(c)
        c.start()
        return c

    yield start
    for c in made:
        c.stop()
