"""A reverse proxy in front of several service replicas: HAProxy from the system package (`apt-get install haproxy`),
on loopback, with a config file this module writes and a pid file it starts and stops it by.

Why HAProxy rather than nginx: its package ships no listening default site, and it can retry a request whose
connection failed on the next replica (`retry-on conn-failure`, `option redispatch`) while never resending one a
replica may have received; it marks a replica down on its first connection error (passive) and up again when its
/readyz answers (active check every second).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from retrainer.io.processes import stop_pid_file
from retrainer.io.servers import ServerError

HAPROXY_ENV = "RETRAINER_HAPROXY"
SERVED_BY_HEADER = "X-Served-By"  # names the replica that answered (the config's server name, r1, r2, ...)
# Seconds: connecting to a loopback replica is instant or refused; a 10,000-record request can take a while.
CONNECT_TIMEOUT_S = 2
SERVER_TIMEOUT_S = 120


def haproxy_binary() -> Path:
    """$RETRAINER_HAPROXY, else `haproxy` on PATH or in /usr/sbin; ServerError naming the package when missing."""
    found = os.environ.get(HAPROXY_ENV) or shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if not found or not Path(found).is_file():
        raise ServerError("no `haproxy` binary: install the system package (apt-get install haproxy)")
    return Path(found)


def _loopback_address(url: str) -> str:
    """`127.0.0.1:PORT` of a replica URL; ValueError for a URL that is not on loopback or has no port."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.port is None:
        raise ValueError(f"a replica must be http://127.0.0.1:PORT, not {url}")
    return f"127.0.0.1:{parsed.port}"


def proxy_config(port: int, replicas: Sequence[str]) -> str:
    """The HAProxy configuration: listen on 127.0.0.1:`port`, balance round-robin over `replicas` (loopback URLs).

    A request whose connection to a replica fails is retried on the next one (no replica saw it, so it cannot be
    logged twice); a request a replica received and did not answer (it died) is not resent: the client gets 502.
    `http-reuse never`: a request never rides an idle connection to a replica that may have died meanwhile.
    Raises ValueError when there is no replica or one is not on loopback.
    """
    if not replicas:
        raise ValueError("the proxy needs at least one replica")
    servers = "".join(f"    server r{i} {_loopback_address(url)}\n" for i, url in enumerate(replicas, start=1))
    return (
        "global\n"
        "    maxconn 512\n"
        "defaults\n"
        "    mode http\n"
        f"    timeout connect {CONNECT_TIMEOUT_S}s\n"
        f"    timeout client {SERVER_TIMEOUT_S}s\n"
        f"    timeout server {SERVER_TIMEOUT_S}s\n"
        "    timeout queue 30s\n"
        "    retries 3\n"
        "    retry-on conn-failure\n"
        "    option redispatch 1\n"
        "    http-reuse never\n"
        "frontend retrainer\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend replicas\n"
        "backend replicas\n"
        "    balance roundrobin\n"
        "    option httpchk GET /readyz\n"
        f"    http-response set-header {SERVED_BY_HEADER} %s\n"
        "    default-server check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down\n"
        f"{servers}"
    )


@dataclass(frozen=True)
class ProxyServer:
    """A running HAProxy: its URL, config and pid file."""

    port: int
    config: Path
    pid_file: Path

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, where clients send their requests."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the proxy named by the pid file (SIGTERM, SIGKILL after `timeout_s`); remove the pid file."""
        stop_pid_file(self.pid_file, timeout_s=timeout_s)


def start_proxy(folder: Path, port: int, replicas: Sequence[str], timeout_s: float = 30.0) -> ProxyServer:
    """Write `folder/haproxy.cfg`, check it (`haproxy -c`), start HAProxy in the background with
    `folder/haproxy.pid`, and wait until it accepts connections on 127.0.0.1:`port`.

    Raises ServerError with HAProxy's own message when the config is refused or it does not start.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config, pid_file = folder / "haproxy.cfg", folder / "haproxy.pid"
    config.write_text(proxy_config(port, replicas))
    binary = str(haproxy_binary())
    for args, what in ((["-c", "-q"], "config check"), (["-D", "-p", str(pid_file)], "start")):
        done = subprocess.run([binary, *args, "-f", str(config)], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise ServerError(f"haproxy {what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}")
    proxy = ProxyServer(port, config, pid_file)
    deadline = time.monotonic() + timeout_s
    while not _accepts(port):
        if time.monotonic() > deadline:
            proxy.stop()
            raise ServerError(f"haproxy did not listen on 127.0.0.1:{port} within {timeout_s:g} s")
        time.sleep(0.1)
    return proxy


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
