"""The proxy in front of sessions: requests with a body reach a unix-socket upstream and come back
with its answer, also under concurrency (configurable-http-proxy alone answers some of them
503 "write EPIPE" after the upstream carried them out: see hub/vre/proxy_keepalive.mjs)."""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from vre.settings import Settings

pytestmark = pytest.mark.integration

UPSTREAM = """
import asyncio, sys, tornado.web, tornado.httpserver, tornado.netutil
class Echo(tornado.web.RequestHandler):
    def check_xsrf_cookie(self): pass
    def put(self): self.write({"got": len(self.request.body)})
    patch = post = put
async def main():
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", Echo)]))
    server.add_socket(tornado.netutil.bind_unix_socket(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxied(tmp_path):
    """A tornado upstream on a unix socket behind configurable-http-proxy as the hub runs it."""
    sock = tmp_path / "up.sock"
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(sock)])
    port, api = free_port(), free_port()
    proxy = subprocess.Popen([*Settings(session_env=Path(sys.prefix)).chp_command, "--ip", "127.0.0.1",
                              "--port", str(port), "--api-ip", "127.0.0.1", "--api-port", str(api),
                              "--default-target", "http+unix://" + quote(str(sock), safe="")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.put(f"{url}/ping", data=b"x", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "proxy or upstream did not come up"
            time.sleep(0.2)
        yield url
    finally:
        for p in (proxy, upstream):
            p.terminate()
            p.wait(timeout=10)


def test_requests_with_bodies_are_never_lost_to_epipe(proxied):
    bodies = [b"x" * n for n in (25, 1250, 10000)]

    def one(i: int) -> int:
        method = ("PATCH", "PUT", "POST")[i % 3]
        with requests.Session() as s:  # a connection per request, as browsers open many
            return s.request(method, f"{proxied}/api/contents/n{i}", data=bodies[i % 3], timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(600)))
    assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}
