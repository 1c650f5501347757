"""Nothing outlives its hub: the managed services die with a hub killed by SIGKILL, the next hub
owns its pid file and runs exactly one of each service, a second hub beside a live one is refused,
and nothing is left once it stops; `vre down` stops the hub itself too."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SERVICES = (b"vre.audit.sealer", b"vre.jobs.engine", b"vre.api.service", b"vre.hostview")


def services_of(hub) -> dict[bytes, list[int]]:
    """The pids of each managed service that runs for ``hub`` (its state directory in their environment)."""
    needle = f"VRE_STATE_DIR={hub.state}".encode()
    found: dict[bytes, list[int]] = {s: [] for s in SERVICES}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline, environ = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:
            continue
        for service in SERVICES:
            if service in cmdline and needle in environ.split(b"\0"):
                found[service].append(int(proc.name))
    return found


def wait_for_one_of_each(hub, timeout: float = 60) -> dict[bytes, list[int]]:
    deadline = time.monotonic() + timeout
    while True:
        found = services_of(hub)
        if all(len(pids) == 1 for pids in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_services_die_with_a_killed_hub_and_the_next_hub_owns_everything(hub_kit):
    hub = hub_kit.Hub("lifecycle", None)
    try:
        hub.start()
        before = wait_for_one_of_each(hub)
        assert all(len(p) == 1 for p in before.values()), before
        hub.restart(signal.SIGKILL)
        after = wait_for_one_of_each(hub)
        assert all(len(p) == 1 for p in after.values()), after  # one of each service: no orphan beside
        assert not {p for ps in before.values() for p in ps} & {p for ps in after.values() for p in ps}
        assert int((hub.state / "jupyterhub.pid").read_text()) == hub.proc.pid
        # a second `vre up` on the same state directory is refused; the running hub is untouched
        second = hub.vre("up", check=False)
        assert second.returncode == 2 and "already runs" in second.stderr, (second.returncode, second.stderr)
        assert hub.proc.poll() is None and services_of(hub) == after
    finally:
        hub.teardown()
    assert hub_kit.leftovers([hub.base_dir]) == []


def test_vre_down_stops_the_hub_and_everything_it_started(hub_kit):
    hub = hub_kit.Hub("down", None)
    try:
        hub.start()
        assert all(len(p) == 1 for p in wait_for_one_of_each(hub).values())
        out = hub.vre("down").stdout
        assert f"stopped the hub (pid {hub.proc.pid})" in out, out
        assert hub.proc.wait(timeout=5) is not None  # down waited for it
        assert services_of(hub) == {s: [] for s in SERVICES}
        assert "stopped 0 session(s)" in hub.vre("down").stdout  # a second down: nothing to stop, no error
    finally:
        hub.teardown()
    assert hub_kit.leftovers([hub.base_dir]) == []
