"""configurable-http-proxy in front of a server on a unix socket, as the VRE runs it (the hub and every
session listen on unix sockets): requests with a body must reach the server and come back, never
as the proxy's own 503.

Unpatched, configurable-http-proxy 5.3.0 forwards to unix-socket targets without an agent, so
http-proxy-3 adds ``Connection: close``; tornado answers and closes at once, and Node's request
``end()`` may then write a last, empty chunk after the body: on a unix socket whose peer has closed,
even that empty write() fails with EPIPE, and the proxy answers 503 although the server answered
200 (several percent of PATCH/PUT/POST requests; GETs, written in one go, never). The hub runs the
proxy with ``hub/vre/proxy_keepalive.mjs``: unix-socket targets get a keep-alive agent, as TCP
targets do, and web requests keep that connection alive whatever the client's Connection header says.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from vre.settings import Settings

pytestmark = pytest.mark.integration

CHP = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
COMMAND = Settings(session_env=Path(sys.prefix)).chp_command  # as hubconfig runs it
TOKEN = "proxy-test-token"
PREFIX = "/user/u/s"

# A jupyter-like tornado server on a unix socket: reads the JSON body, answers JSON (as the
# contents, sessions and workspaces APIs do). argv: socket path, idle connection timeout (s).
SERVER = r"""
import asyncio, json, sys
from tornado import httpserver, netutil, web
class Echo(web.RequestHandler):
    def _answer(self, *args):
        body = json.loads(self.request.body or b"{}")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"method": self.request.method, "seq": body.get("seq")}))
    get = post = put = patch = _answer
async def main():
    server = httpserver.HTTPServer(web.Application([(r".*", Echo)]),
                                   idle_connection_timeout=float(sys.argv[2]))
    server.add_socket(netutil.bind_unix_socket(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.stdout:
        proc.stdout.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def rig():
    """A tornado server on a unix socket and the proxy (127.0.0.1 only) routing PREFIX to it."""
    if not CHP.exists():
        pytest.skip(f"no configurable-http-proxy at {CHP} (scripts/setup installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="vre-chp-", dir="/tmp"))  # short: socket paths fit 107 bytes
    sock = tmp / "jupyter.sock"
    procs: list[subprocess.Popen] = []  # the server first, then the proxy

    def start_server(idle_timeout: float = 3600) -> None:
        """(Re)start the server at the socket path, as a restarted session does."""
        if procs:
            stop(procs.pop(0))
            sock.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(sock), str(idle_timeout)],
                                stdout=subprocess.PIPE, text=True)
        procs.insert(0, proc)
        assert proc.stdout.readline().strip() == "ready"

    port, api_port = free_port(), free_port()
    log = tmp / "proxy.log"
    try:
        start_server()
        with log.open("w") as out:
            procs.append(subprocess.Popen([*COMMAND, "--ip", "127.0.0.1", "--port", str(port),
                                           "--api-ip", "127.0.0.1", "--api-port", str(api_port)],
                                          env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": TOKEN},
                                          stdout=out, stderr=subprocess.STDOUT))
        yield dict(base=f"http://127.0.0.1:{port}{PREFIX}", api=f"http://127.0.0.1:{api_port}/api/routes",
                   target="http+unix://" + quote(str(sock), safe=""), log=log, start_server=start_server)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


async def add_route(client: AsyncHTTPClient, rig: dict) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            await client.fetch(rig["api"] + PREFIX, method="POST", headers={"Authorization": f"token {TOKEN}"},
                               body=json.dumps({"target": rig["target"]}))
            return
        except OSError:  # the proxy is not listening yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def fire(client: AsyncHTTPClient, base: str, n: int, methods=("PATCH", "PUT", "POST")) -> collections.Counter:
    """n requests with JSON bodies (as the Lab's rename, workspace save, session update send),
    as many at once as the client allows, half with "Connection: keep-alive" (as browsers send),
    half with "Connection: close" (tornado's client); counts (method, status, body matches)."""
    counts: collections.Counter = collections.Counter()

    async def one(seq: int) -> None:
        method = methods[seq % len(methods)]
        r = await client.fetch(HTTPRequest(f"{base}/api/contents/Untitled{seq}.ipynb", method=method,
                                           body=json.dumps({"seq": seq, "path": f"renamed{seq}.ipynb"}),
                                           headers={"Content-Type": "application/json",
                                                    "Connection": ("close", "keep-alive")[seq // 3 % 2]},
                                           request_timeout=20),
                               raise_error=False)
        echoed = r.code == 200 and json.loads(r.body) == {"method": method, "seq": seq}
        counts[(method, r.code, echoed)] += 1

    await asyncio.gather(*(one(seq) for seq in range(n)))
    return counts


async def test_bodies_through_proxy_to_unix_socket_never_503(rig):
    client = AsyncHTTPClient(force_instance=True, max_clients=8)
    try:
        await add_route(client, rig)
        counts = await fire(client, rig["base"], 400)
    finally:
        client.close()
    failed = {k: v for k, v in counts.items() if not (k[1] == 200 and k[2])}
    assert not failed, f"{sum(failed.values())} of 400 requests failed: {failed}\n" + rig["log"].read_text()[-3000:]
    assert "EPIPE" not in rig["log"].read_text()


async def test_proxy_survives_server_closing_and_restarting(rig):
    """Connections the proxy keeps to a server do not outlive it: after the server restarts at the
    same socket (a restarted session), and after it closes idle connections, requests get through."""
    client = AsyncHTTPClient(force_instance=True, max_clients=8)
    ok = collections.Counter({(m, 200, True): 10 for m in ("PATCH", "PUT", "POST")})
    try:
        await add_route(client, rig)
        assert await fire(client, rig["base"], 30) == ok
        rig["start_server"](idle_timeout=0.5)
        assert await fire(client, rig["base"], 30) == ok
        await asyncio.sleep(1.5)  # the server has closed the proxy's idle connections
        assert await fire(client, rig["base"], 30) == ok
    finally:
        client.close()
    assert " 503 " not in rig["log"].read_text(), rig["log"].read_text()[-3000:]
