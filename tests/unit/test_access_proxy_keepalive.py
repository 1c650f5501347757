"""The access layer's client for configurable-http-proxy does not reuse a connection the proxy
may have closed while idle (Node closes them after 5 s): scaled down here, a server that closes
idle connections after 0.3 s, and a client whose loop was busy past that."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from vre.access.routes import PROXY_KEEPALIVE_S, proxy_client

IDLE_CLOSE = 0.3   # the server's keepAliveTimeout, scaled (Node: 5 s)


async def _server():
    """An HTTP/1.1 server that answers keep-alive and closes a connection idle for IDLE_CLOSE."""
    async def handle(reader, writer):
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CLOSE)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _second_request_after_a_busy_loop(keepalive: float) -> str:
    server = await _server()
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    async with proxy_client(keepalive=keepalive) as client:
        async with client.post(url, data=b"first") as r:
            await r.read()
        # the loop busy (a burst of requests) past the server's idle close: its FIN is not read yet
        time.sleep(IDLE_CLOSE * 2)
        try:
            async with client.post(url, data=b"second") as r:
                return (await r.read()).decode()
        except aiohttp.ClientError as e:
            return f"failed: {e}"
        finally:
            server.close()


def test_an_idle_connection_the_proxy_may_have_closed_is_not_reused():
    assert PROXY_KEEPALIVE_S < 5   # below Node's keepAliveTimeout
    # scaled: a keep-alive shorter than the server's idle close
    assert asyncio.run(_second_request_after_a_busy_loop(IDLE_CLOSE * 0.5)) == "ok"
    # control: aiohttp's default (15 s) reuses the closed connection, and the request fails
    assert asyncio.run(_second_request_after_a_busy_loop(15.0)).startswith("failed")
