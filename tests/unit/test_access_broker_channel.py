"""The access layer's channel to its root broker: checks are answered as each is done (one that
waits, e.g. for a member's claims reader to start, holds up no other session's), records in
order, every answer by its request's id; a broker that is gone fails its callers clearly."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from vre.access.broker import Broker, BrokerClient, BrokerError


class SlowBroker(Broker):
    """``handle`` as the real one dispatches, with one session's check held until released."""

    def __init__(self):
        self.release = threading.Event()
        self.handled: list[str] = []

    def handle(self, request):
        if request["op"] == "fail":
            raise ValueError("no such thing")
        if request.get("session") == "slow":
            assert self.release.wait(20)
        self.handled.append(request.get("session", request["op"]))
        return {"session": request.get("session")}


def channel(workers: int):
    broker = SlowBroker()
    layer_end, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    thread = threading.Thread(target=broker.serve, args=(broker_end, workers), daemon=True)
    thread.start()
    return broker, BrokerClient(layer_end), broker_end


def test_a_check_that_waits_holds_up_no_other():
    broker, client, _ = channel(workers=4)

    async def run():
        slow = asyncio.ensure_future(client.call("classify", session="slow", path="a"))
        fast = await asyncio.wait_for(client.call("classify", session="fast", path="b"), 10)
        assert fast == {"session": "fast"} and not slow.done()
        broker.release.set()
        assert await asyncio.wait_for(slow, 10) == {"session": "slow"}
        with pytest.raises(BrokerError, match="ValueError: no such thing"):
            await client.call("fail")
    asyncio.run(run())
    assert broker.handled == ["fast", "slow"]


def test_records_are_answered_in_order():
    broker, client, _ = channel(workers=1)

    async def run():
        first = asyncio.ensure_future(client.call("audit", session="slow"))
        second = asyncio.ensure_future(client.call("audit", session="next"))
        await asyncio.sleep(0.3)
        assert not first.done() and not second.done()   # behind the first, as a commit would be
        broker.release.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [{"session": "slow"},
                                                                             {"session": "next"}]
    asyncio.run(run())
    assert broker.handled == ["slow", "next"]


def test_a_broker_that_is_gone_fails_its_callers_with_the_reason():
    broker, client, broker_end = channel(workers=4)

    async def run():
        waiting = asyncio.ensure_future(client.call("classify", session="slow", path="a"))
        await asyncio.sleep(0.2)
        broker_end.shutdown(socket.SHUT_RDWR)
        with pytest.raises(BrokerError, match="the broker is gone"):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(BrokerError, match="the broker is gone"):
            await asyncio.wait_for(client.call("classify", session="fast", path="b"), 10)
    asyncio.run(run())
    broker.release.set()


def test_a_request_that_breaks_the_protocol_ends_the_channel_and_its_callers_are_told(caplog):
    """Not an object: the broker shuts the channel (the layer then stops, and the hub starts it
    again) instead of leaving its callers waiting for ever; a request over the broker's limit is
    refused by the client before it is sent."""
    import json as _json
    import struct

    from vre.access import broker as broker_mod

    gone = []
    broker = SlowBroker()
    raw, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    threading.Thread(target=broker.serve, args=(peer, 4), daemon=True).start()
    client = BrokerClient(raw, on_gone=lambda: gone.append(True))

    async def run():
        waiting = asyncio.ensure_future(client.call("classify", session="slow", path="a"))
        await asyncio.sleep(0.1)
        data = _json.dumps([1, 2]).encode()   # a list: no request object
        client._writer.write(struct.pack("!I", len(data)) + data)
        with pytest.raises(BrokerError, match="the broker is gone"):
            await asyncio.wait_for(waiting, 10)
        assert gone == [True]
        big = BrokerClient(socket.socketpair()[0])
        with pytest.raises(BrokerError, match="over the broker's"):
            await big.call("audit", events=["x" * broker_mod.MAX_MESSAGE])
    try:
        asyncio.run(run())
    finally:
        broker.release.set()
    assert "broke the broker's protocol" in caplog.text


def test_audit_events_go_to_the_broker_in_parts_under_its_limit():
    from vre.access.layer import _parts

    events = [{"action": "kernel.execute", "details": {"code": "\u2603" * 1000}} for _ in range(50)]
    parts = list(_parts(events, 20_000))
    assert [e for p in parts for e in p] == events and len(parts) > 1
    assert all(len(_json_size(p)) <= 20_000 for p in parts[:-1])


def _json_size(part):
    import json as _json
    return _json.dumps(part)


def test_downloads_that_wait_for_a_reader_never_hold_up_the_other_checks(tmp_path):
    """On claims a raw download's check may wait minutes for a member's reader (one that cannot
    be placed): those run in a pool of their own, so however many wait, the Lab's other checks
    are answered."""
    from vre.settings import Settings

    class ReaderBroker(SlowBroker):
        def handle(self, request):
            if request.get("raw"):
                assert self.release.wait(20)
            self.handled.append(request["path"])
            return {"path": request["path"]}

    broker = ReaderBroker()
    broker.settings = Settings(backend="kubernetes", k8s_storage="pvc", run_dir=tmp_path / "run",
                               state_dir=tmp_path / "state", notebook_image="localhost/vre-notebook:1")
    layer_end, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    threading.Thread(target=broker.serve, args=(broker_end, 4, 2), daemon=True).start()
    client = BrokerClient(layer_end)

    async def run():
        downloads = [asyncio.ensure_future(client.call("classify", session="s", path=f"d{i}", raw=True))
                     for i in range(6)]
        await asyncio.sleep(0.2)
        for i in range(6):   # more than either pool's threads
            assert await asyncio.wait_for(client.call("classify", session="s", path=f"c{i}"), 10) == {"path": f"c{i}"}
        assert not any(d.done() for d in downloads)
        broker.release.set()
        assert len(await asyncio.wait_for(asyncio.gather(*downloads), 20)) == 6
    try:
        asyncio.run(run())
    finally:
        broker.release.set()
