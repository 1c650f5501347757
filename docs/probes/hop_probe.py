"""Probe: what a Python (aiohttp) access-layer hop costs, compared with configurable-http-proxy alone.

Run with the project's venv (aiohttp, CHP under .venv/node): ``.venv/bin/python docs/probes/hop_probe.py``.
Not the benchmark (bench/access.py will measure a real hub and session): a stand-in "session"
(aiohttp on a unix socket: 2 KiB JSON, 1 MiB body, a websocket echo) behind three paths in one run:

  chp        client -> CHP -> session socket                 (today)
  chp+layer  client -> CHP -> layer (unix socket) -> session (the layer as a CHP route target)
  layer      client -> layer (TCP) -> session                (the layer in front, CHP only for /hub/)

The layer streams bodies, counts bytes sent downstream, pumps websocket frames both ways and
peeks at client frames (as cell audit would). Prints p50/p90 latency (sequential, keep-alive) and
requests/s at concurrency 8. Everything it starts is stopped; its temp directory removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

HOP = {"close", "keep-alive", "transfer-encoding", "upgrade", "connection", "proxy-connection", "te", "trailer"}
SMALL = json.dumps({"name": "x.ipynb", "content": "y" * 2000}).encode()
BIG = b"z" * (1 << 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the stand-in session -----------------------------------------------------------------------
async def session_app() -> web.Application:
    async def small(request):
        return web.Response(body=SMALL, content_type="application/json")

    async def big(request):
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def ws(request):
        w = web.WebSocketResponse(protocols=("v1.kernel.websocket.jupyter.org",))
        await w.prepare(request)
        async for msg in w:
            await (w.send_bytes(msg.data) if msg.type == aiohttp.WSMsgType.BINARY else w.send_str(msg.data))
        return w

    app = web.Application()
    app.router.add_get("/{prefix:.*}/small", small)
    app.router.add_get("/{prefix:.*}/big", big)
    app.router.add_get("/{prefix:.*}/ws", ws)
    return app


# --- the layer ------------------------------------------------------------------------------------
class Layer:
    def __init__(self, upstream_sock: str):
        self.upstream_sock = upstream_sock
        self.sent = 0
        self.frames_in = 0

    async def start(self):
        self.client = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.upstream_sock, limit=64),
                                            auto_decompress=False)

    async def handle(self, request: web.Request):
        url = f"http://session{request.rel_url}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP and k.lower() != "host"}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
            async with self.client.ws_connect(url, protocols=protocols, headers=headers) as up:
                down = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else ())
                await down.prepare(request)

                async def to_session():
                    async for msg in down:
                        self.frames_in += 1  # (cell audit parses here)
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            await up.send_bytes(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            await up.send_str(msg.data)
                    await up.close()

                async def to_browser():
                    async for msg in up:
                        self.sent += len(msg.data)
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            await down.send_bytes(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            await down.send_str(msg.data)
                    await down.close()

                await asyncio.gather(to_session(), to_browser())
                return down
        body = request.content if request.body_exists else None
        async with self.client.request(request.method, url, headers=headers, data=body,
                                       allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                 if k.lower() not in HOP})
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(1 << 16):
                self.sent += len(chunk)
                await resp.write(chunk)
            await resp.write_eof()
            return resp


# --- measuring -------------------------------------------------------------------------------------
async def latency(client: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with client.get(url) as r:
            await r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def throughput(client: aiohttp.ClientSession, url: str, n: int, conc: int = 8) -> float:
    todo = iter(range(n))

    async def worker():
        for _ in todo:
            async with client.get(url) as r:
                await r.read()
    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n / (time.perf_counter() - t)


async def ws_rtt(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s, s.ws_connect(url, protocols=("v1.kernel.websocket.jupyter.org",)) as ws:
        payload = b"\x00" * 512
        for _ in range(n):
            t = time.perf_counter()
            await ws.send_bytes(payload)
            await ws.receive()
            out.append((time.perf_counter() - t) * 1000)
    return out


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs):.3f} ms, p90 {xs[int(len(xs) * 0.9)]:.3f} ms"


async def serve_session(sock: str) -> None:
    r = web.AppRunner(await session_app(), access_log=None)
    await r.setup()
    await web.UnixSite(r, sock).start()
    await asyncio.Event().wait()


async def serve_layer(upstream: str, sock: str, port: int) -> None:
    layer = Layer(upstream)
    await layer.start()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", layer.handle)
    r = web.AppRunner(app, access_log=None)
    await r.setup()
    await web.UnixSite(r, sock).start()
    await web.TCPSite(r, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def wait_for(url: str, **kw) -> None:
    async with aiohttp.ClientSession(**kw) as s:
        for _ in range(200):
            try:
                async with s.get(url):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


async def main() -> None:
    """Session, layer, CHP and the client are four processes, as in production."""
    tmp = Path(tempfile.mkdtemp(prefix="vre-hop-", dir="/tmp"))
    sess_sock, layer_sock = str(tmp / "session.sock"), str(tmp / "layer.sock")
    procs = []
    try:
        layer_port = free_port()
        me = [sys.executable, __file__]
        procs.append(subprocess.Popen(me + ["session", sess_sock]))
        procs.append(subprocess.Popen(me + ["layer", sess_sock, layer_sock, str(layer_port)]))
        chp_bin = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
        port, api = free_port(), free_port()
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": "probe"}
        procs.append(subprocess.Popen([str(chp_bin), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                                       "--api-port", str(api), "--log-level", "error"], env=env))
        await wait_for(f"http://127.0.0.1:{api}/api/routes", headers={"Authorization": "token probe"})
        await wait_for(f"http://127.0.0.1:{layer_port}/direct/small")
        async with aiohttp.ClientSession(headers={"Authorization": "token probe"}) as s:
            for prefix, sock in (("/chp", sess_sock), ("/layer", layer_sock)):
                target = "http+unix://" + quote(sock, safe="")
                async with s.post(f"http://127.0.0.1:{api}/api/routes{prefix}", json={"target": target}) as resp:
                    assert resp.status == 201, await resp.text()

        paths = {"chp": f"http://127.0.0.1:{port}/chp", "chp+layer": f"http://127.0.0.1:{port}/layer",
                 "layer": f"http://127.0.0.1:{layer_port}/direct"}
        async with aiohttp.ClientSession() as c:
            for name, base in paths.items():  # warm up
                await latency(c, base + "/small", 50)
            print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
            res = {k: [] for k in paths}
            for _ in range(5):  # interleaved rounds, so load from others hits all paths alike
                for name, base in paths.items():
                    res[name] += await latency(c, base + "/small", 200)
            for name in paths:
                print(f"GET 2 KiB JSON  {name:10s} {fmt(res[name])}")
            for name, base in paths.items():
                print(f"GET 1 MiB       {name:10s} {fmt(await latency(c, base + '/big', 60))}")
            for name, base in paths.items():
                print(f"req/s 2 KiB c=8 {name:10s} {await throughput(c, base + '/small', 1500):.0f}")
        for name, base in paths.items():
            print(f"ws echo 512 B   {name:10s} {fmt(await ws_rtt(base.replace('http', 'ws') + '/ws', 500))}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "main"
    if role == "session":
        asyncio.run(serve_session(sys.argv[2]))
    elif role == "layer":
        asyncio.run(serve_layer(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        asyncio.run(main())
