"""The client address in the hub's and the VRE service's audit records: the access layer tells
upstream who the client is (its TCP peer, in X-Real-Ip) and a browser cannot claim another
address by sending X-Real-Ip or X-Forwarded-For itself."""

from __future__ import annotations

from unittest import mock

import aiohttp
from aiohttp import web as aweb
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from tornado import web as tweb
from tornado.testing import bind_unused_port

from vre.access.layer import AccessLayer, client_address
from vre.api.service import proxied_server

SPOOF = "203.0.113.9"      # what a researcher claims to be
BROWSER = "198.51.100.4"   # the layer's TCP peer


class NoRoutes:
    """No session routes: every request goes on to the proxy (here: the service itself)."""

    def match(self, raw):
        return None

    async def refresh(self, on_miss=False):
        pass


def make_layer(chp_url: str = "http://127.0.0.1:9") -> AccessLayer:
    return AccessLayer(login=None, routes=NoRoutes(), checks=None, records=None, chp_url=chp_url)


def mocked(layer: AccessLayer, headers, peer: str | None = BROWSER, internal: bool = False):
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: \
        ((peer, 40000) if peer else "") if name == "peername" else default
    return make_mocked_request("GET", "/services/vre/admin/projects", headers=headers, transport=transport,
                               app=layer.app(internal=internal))


def claimed(headers: dict) -> list[str]:
    return [v for k, v in headers.items() if k.lower() == "x-real-ip"]


async def test_the_layer_sends_its_peer_and_drops_the_address_a_browser_claims():
    layer = make_layer()
    try:
        request = mocked(layer, CIMultiDict([("X-Real-IP", SPOOF), ("x-real-ip", "203.0.113.10"),
                                             ("X-Forwarded-For", SPOOF)]))
        assert client_address(request) == BROWSER
        up = layer._upstream_headers(request, session=False)
        assert claimed(up) == [BROWSER]
        assert up["X-Forwarded-For"] == f"{SPOOF}, {BROWSER}"  # the browser's entries stay before the peer
        # on the internal socket (only the proxy connects, with what the public side forwarded)
        # the address the public side set is the client's
        inside = mocked(layer, {"X-Real-Ip": BROWSER, "X-Forwarded-For": f"{BROWSER}, 127.0.0.1"}, peer=None,
                        internal=True)
        assert client_address(inside) == BROWSER and claimed(layer._upstream_headers(inside, session=True)) == [BROWSER]
        assert client_address(mocked(layer, {"X-Real-Ip": "not an address"}, internal=True)) == BROWSER
        # the public side never believes the header, whatever it holds
        assert client_address(mocked(layer, {"X-Real-Ip": SPOOF}, peer="192.0.2.1")) == "192.0.2.1"
    finally:
        await layer.chp.close()


class Echo(tweb.RequestHandler):
    def get(self):
        # what the service's pages record as the audit's client (``FormPage.actor``)
        self.finish({"client": self.request.remote_ip})


async def test_a_spoofed_x_real_ip_is_not_the_address_the_service_records():
    sock, port = bind_unused_port()
    service = proxied_server(tweb.Application([("/services/vre/admin/projects", Echo)]))
    service.add_sockets([sock])
    url = f"http://127.0.0.1:{port}/services/vre/admin/projects"
    layer = make_layer(f"http://127.0.0.1:{port}")
    runner = aweb.AppRunner(layer.app())
    await runner.setup()
    site = aweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    layer_port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            # through the layer: the service records the layer's peer (this test, on loopback)
            async with http.get(f"http://127.0.0.1:{layer_port}/services/vre/admin/projects",
                                headers={"X-Real-IP": SPOOF, "X-Forwarded-For": SPOOF}) as r:
                assert r.status == 200 and (await r.json())["client"] == "127.0.0.1"
            # as configurable-http-proxy delivers a request from a browser elsewhere: the layer's
            # X-Real-Ip, and X-Forwarded-For with the browser's claim, the layer's peer, the proxy's peer
            xff = f"{SPOOF}, {BROWSER}, 127.0.0.1"
            async with http.get(url, headers={"X-Real-Ip": BROWSER, "X-Forwarded-For": xff}) as r:
                assert (await r.json())["client"] == BROWSER
            # without it, the proxy's entry (loopback), never one the browser wrote
            async with http.get(url, headers={"X-Forwarded-For": xff}) as r:
                assert (await r.json())["client"] == "127.0.0.1"
    finally:
        await runner.cleanup()
        await layer.chp.close()
        service.stop()
        await service.close_all_connections()
