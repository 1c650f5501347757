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
