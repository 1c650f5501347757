"""``VREAccessProxy``: JupyterHub's proxy with the access layer in front of it.

JupyterHub keeps talking to configurable-http-proxy (CHP) through the Proxy API; this class
changes three things:

* ``start``/``stop``/``check_running``: CHP listens on an internal loopback address and the
  access layer (``python -m vre.access``) on the public one; both are (re)started together.
* ``add_route`` for a session: the route's target in CHP is the layer's internal socket, and the
  session's real socket and policy travel in the route's data (``routes.KEY``) for the layer. So
  even a request that CHP routes to a session goes through the layer.
* ``get_all_routes`` maps targets back, so JupyterHub's route checks see what it set.

After every route change the layer is told to re-read the table (a missed notice heals on the
layer's next unknown prefix).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import aiohttp
from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import wait_for_server
from traitlets import Any

from ..hostfiles import unix_url
from . import control_socket, internal_socket
from .routes import KEY


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VREAccessProxy(ConfigurableHTTPProxy):
    settings = Any(help="the VRE settings (set by vre.hubconfig)").tag(config=True)

    layer_process: subprocess.Popen | None = None

    @property
    def layer_pid_file(self):
        return self.settings.state_dir / "access.pid"

    @property
    def internal_target(self) -> str:
        return unix_url(internal_socket(self.settings))

    # -- processes ---------------------------------------------------------------------------
    def _check_pid(self, pid):
        """A pid counts as the previous proxy only if that process is a configurable-http-proxy.
        The pid file is on the state volume, which outlives the processes it names: after a
        host's reboot, or in a new hub pod (an upgrade), the pid may be another process's by
        now, even one of the new hub's own, and JupyterHub would SIGTERM it (a new pod then
        kills a process of its own at every start: a crash loop)."""
        if not is_proxy(pid):
            self.log.warning("pid %s of the proxy's pid file is not a configurable-http-proxy: the file is stale", pid)
            raise ProcessLookupError(pid)
        super()._check_pid(pid)

    async def start(self):
        stop_layer(self.settings, self.log)
        internal = self.settings.proxy_internal_url or f"http://127.0.0.1:{_free_loopback_port()}"
        public, self.public_url = self.public_url, internal
        try:
            await super().start()  # CHP on the internal address
        finally:
            self.public_url = public
        self.internal_url = internal
        await self._start_layer()

    async def _start_layer(self):
        # in a pod also where the cluster's API is: on claims its root broker asks the member's
        # claims reader (vre.access.broker), with the pod's root-only token
        env = {k: v for k, v in os.environ.items() if k.startswith(("VRE_", "LANG", "LC_", "KUBERNETES_SERVICE_"))}
        env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), VRE_ACCESS_PROXY_URL=self.internal_url)
        self.log.info("Starting the VRE access layer on %s", self.public_url)
        self.layer_process = subprocess.Popen([sys.executable, "-m", "vre.access"], env=env, start_new_session=True)
        self.layer_pid_file.write_text(str(self.layer_process.pid))
        os.chmod(self.layer_pid_file, 0o600)
        url = urlsplit(self.public_url)
        for _ in range(100):
            if self.layer_process.poll() is not None:
                raise RuntimeError(f"the access layer exited with {self.layer_process.returncode}; see the log above")
            try:
                await wait_for_server(url.hostname or "127.0.0.1", url.port, timeout=0.2)
                if control_socket(self.settings).exists():
                    return
            except TimeoutError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the access layer did not listen within 20 s")

    def stop(self):
        super().stop()
        if self.layer_process is not None and self.layer_process.poll() is None:
            self.layer_process.terminate()
            try:
                self.layer_process.wait(10)
            except subprocess.TimeoutExpired:
                self.layer_process.kill()
                self.layer_process.wait(10)
        stop_layer(self.settings, self.log)

    async def check_running(self):
        if self.layer_process is not None and self.layer_process.poll() is not None:
            self.log.error("The access layer stopped with %s; restarting it", self.layer_process.returncode)
            self.layer_process = None
            await self._start_layer()
            await self._notify()
        await super().check_running()

    # -- routes ------------------------------------------------------------------------------
    async def add_route(self, routespec, target, data):
        data = dict(data or {})
        if data.get("user") is not None and "server_name" in data:
            data[KEY] = {"target": target, "policy": self._policy(data["user"], data["server_name"])}
            target = self.internal_target
        await super().add_route(routespec, target, data)
        await self._notify()

    async def delete_route(self, routespec):
        await super().delete_route(routespec)
        await self._notify()

    async def get_all_routes(self):
        routes = await super().get_all_routes()
        for route in routes.values():
            vre = route["data"].pop(KEY, None)
            if isinstance(vre, dict) and vre.get("target"):
                route["target"] = vre["target"]
        return routes

    def _policy(self, user: str, server_name: str) -> dict:
        """The session's policy, from its spawner (a session without one gets no route: fail closed)."""
        spawner = self.app.users[user].spawners[server_name]
        policy = getattr(spawner, "access_policy", None)
        if policy is None:
            raise RuntimeError(f"spawner {type(spawner).__name__} gives no access policy; the access layer "
                               "serves only VRE sessions")
        return policy()

    async def _notify(self):
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(
                    path=str(control_socket(self.settings)))) as http:
                async with http.post("http://layer/refresh", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    r.raise_for_status()
        except Exception as e:  # noqa: BLE001 - the layer re-reads routes on its next unknown prefix
            self.log.warning("could not tell the access layer about a route change: %s", e)


def is_proxy(pid: int) -> bool:
    """Whether process ``pid`` is a configurable-http-proxy (what the proxy's pid file names)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"configurable-http-proxy" in f.read()
    except OSError:
        return False


def stop_layer(settings, log=None) -> None:
    """Stop a running access layer of this installation (pid file), as the hub does with CHP."""
    pid_file = settings.state_dir / "access.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        cmdline = []
    if b"vre.access" in cmdline:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        if log:
            log.info("Stopped the access layer (pid %d)", pid)
    pid_file.unlink(missing_ok=True)
