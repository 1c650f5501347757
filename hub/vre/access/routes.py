"""The access layer's table of session routes, read from configurable-http-proxy's.

JupyterHub keeps its routes in the proxy (``VREAccessProxy``): a session's route there targets
the layer, and its data carry the session's real socket and its policy under :data:`KEY`. The
layer reads that table at start, when the hub tells it a route changed, and when a request names
a session prefix it does not know (at most every :data:`MISS_INTERVAL` seconds), so a restarted
layer rebuilds itself and a stale entry heals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiohttp

log = logging.getLogger("vre.access")
KEY = "vre_access"
MISS_INTERVAL = 0.5
#: Seconds an idle connection to configurable-http-proxy is kept for reuse. Node closes idle
#: keep-alive connections after 5 s (``server.keepAliveTimeout``); a pooled connection older than
#: that may be closed by the proxy before this process has read the close (its loop busy with a
#: burst of requests), and a request sent on it fails: the 1,000-user scale test saw "Server
#: disconnected" and resets answered 503. Below Node's 5 s, no such connection is reused.
PROXY_KEEPALIVE_S = 3.0


def proxy_client(*, keepalive: float = PROXY_KEEPALIVE_S, **kwargs) -> aiohttp.ClientSession:
    """An HTTP client for configurable-http-proxy (its proxy port or its API)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive), **kwargs)


@dataclass
class SessionRoute:
    prefix: str          # "/user/<name>/<server>/" as the proxy has it (URL-encoded)
    user: str
    server: str
    socket: str          # the session server's unix socket on the host; "" for a TCP target
    policy: dict         # session, audit_session, project, downloads, audit_cells, egress_cap
    client: aiohttp.ClientSession | None = field(default=None, repr=False)
    #: where requests go: through the socket, or the server's own ``http://<pod IP>:<port>`` (kubernetes)
    base: str = "http://session"

    @property
    def session(self) -> str:
        return self.policy["session"]

    @property
    def audit_session(self) -> str:
        return self.policy.get("audit_session") or self.policy["session"]

    @property
    def project(self) -> str:
        return self.policy["project"]

    @property
    def egress_cap(self) -> int:
        """Bytes per member and day to the browser (0: no cap), as fixed at the session's start."""
        return int(self.policy.get("egress_cap") or 0)

    def http(self) -> aiohttp.ClientSession:
        if self.client is None or self.client.closed:
            connector = aiohttp.UnixConnector(path=self.socket, limit=0) if self.socket else aiohttp.TCPConnector(limit=0)
            self.client = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self.client


def socket_of(target: str) -> str | None:
    """The socket path of an ``http+unix://`` target."""
    parts = urlsplit(target)
    return unquote(parts.netloc) if parts.scheme == "http+unix" else None


def upstream_of(target: str) -> tuple[str, str] | None:
    """(socket, base URL) of a session's target: a unix socket (sandbox, docker), or the server's
    own ``http://host:port`` (kubernetes: a pod's address, reachable only from the hub's and the
    layer's pods by the project's NetworkPolicy). None for anything else."""
    socket = socket_of(target)
    if socket is not None:
        return socket, "http://session"
    parts = urlsplit(target)
    if parts.scheme == "http" and parts.hostname and parts.port and parts.path in ("", "/") and not parts.query:
        return "", f"http://{parts.netloc}"
    return None


class RouteTable:
    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/") + "/api/routes"
        self.token = token
        self.routes: dict[str, SessionRoute] = {}
        self._lock = asyncio.Lock()
        self._last = 0.0
        self._http = proxy_client(timeout=aiohttp.ClientTimeout(total=10))

    def match(self, raw_path: str) -> SessionRoute | None:
        """The session route whose prefix ``raw_path`` starts with (``/user/a/b`` matches ``/user/a/b/``)."""
        parts = raw_path.split("/", 4)  # "", "user", name, server, rest
        if len(parts) < 4 or parts[1] != "user":
            return None
        return self.routes.get(f"/user/{unquote(parts[2])}/{unquote(parts[3])}/")

    async def refresh(self, *, on_miss: bool = False) -> None:
        if on_miss and time.monotonic() - self._last < MISS_INTERVAL:
            return
        async with self._lock:
            if on_miss and time.monotonic() - self._last < MISS_INTERVAL:
                return
            self._last = time.monotonic()
            async with self._http.get(self.api_url, headers={"Authorization": f"token {self.token}"}) as r:
                r.raise_for_status()
                table = await r.json()
            fresh: dict[str, SessionRoute] = {}
            for path, data in table.items():
                vre = data.get(KEY)
                if not isinstance(vre, dict) or not data.get("user"):
                    continue
                prefix = path.rstrip("/") + "/"
                upstream = upstream_of(vre.get("target", ""))
                if upstream is None:
                    log.error("route %s has neither a unix-socket nor an http://host:port target; not served", prefix)
                    continue
                socket, base = upstream
                old = self.routes.get(prefix)
                route = SessionRoute(prefix, data["user"], data.get("server_name", ""), socket, vre["policy"], base=base)
                if old is not None and (old.socket, old.base) == (socket, base):
                    route.client = old.client
                elif old is not None and old.client is not None:
                    await old.client.close()
                fresh[prefix] = route
            for prefix, old in self.routes.items():
                if prefix not in fresh and old.client is not None:
                    await old.client.close()
            self.routes = fresh

    async def close(self) -> None:
        for route in self.routes.values():
            if route.client is not None:
                await route.client.close()
        await self._http.close()
