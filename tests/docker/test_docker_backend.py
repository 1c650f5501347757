"""The docker backend's own facts, on a real hub with containers on Podman (the security suite in
tests/integration/test_sessions.py runs against this backend too).

A project's internal network is an island: sessions of the same project reach each other (what
Dask workers will need), a session of another project reaches neither them nor the host. Every
address involved is a container's on this machine.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.docker,
              pytest.mark.parametrize("hub", ["docker"], indirect=True)]


def inside(kernel, code: str):
    out = kernel.check(code + "\nimport json as _j; print('@@' + _j.dumps(result))")
    return json.loads(out.rsplit("@@", 1)[1])


LISTEN = """
import socket, threading
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen()
def _serve():
    while True:
        conn, _ = srv.accept()
        conn.sendall(b"same-project")
        conn.close()
threading.Thread(target=_serve, daemon=True).start()
result = srv.getsockname()[1]
"""


def connect(kernel, address: str, port: int):
    return inside(kernel, f"""
import socket
s = socket.socket(); s.settimeout(3)
try:
    s.connect(({address!r}, {port})); result = s.recv(64).decode()
except OSError as e:
    result = type(e).__name__
""")


def test_project_network_is_an_island(hub):
    hub.vre("user", "add", "erin", "--password-stdin", input="erin-password-1\n")
    hub.vre("project", "add-member", "lung-screening", "erin")
    alice, erin, bob = hub.client("alice"), hub.client("erin", "erin-password-1"), hub.client("bob")
    kernels = []
    try:
        alice.start("lung-screening")
        k_alice = alice.kernel("lung-screening")
        kernels.append(k_alice)
        port = inside(k_alice, LISTEN)
        container = hub.container("alice-lung-screening")
        network = f"{hub.instance}-lung-screening"
        assert list(container["NetworkSettings"]["Networks"]) == [network]
        address = container["NetworkSettings"]["Networks"][network]["IPAddress"]
        assert address

        erin.start("lung-screening")
        k_erin = erin.kernel("lung-screening")
        kernels.append(k_erin)
        assert connect(k_erin, address, port) == "same-project"

        bob.start("prostate-ai")
        k_bob = bob.kernel("prostate-ai")
        kernels.append(k_bob)
        outcome = connect(k_bob, address, port)
        assert outcome in ("OSError", "TimeoutError", "ConnectionRefusedError") or outcome.endswith("Error"), outcome
        assert outcome != "same-project"

        # the network stays while a member's session runs, and goes with the last one
        erin.stop("lung-screening")
        assert hub.island_exists("lung-screening")
        alice.stop("lung-screening")
        assert not hub.island_exists("lung-screening")
        assert hub.container("alice-lung-screening") is None and hub.container("erin-lung-screening") is None
    finally:
        for k in kernels:
            try:
                k.ws.close()
            except Exception:  # noqa: BLE001
                pass
        for client, project in ((alice, "lung-screening"), (erin, "lung-screening"), (bob, "prostate-ai")):
            if client.server_state(project) is not None:
                client.stop(project)
        hub.vre("project", "remove-member", "lung-screening", "erin", check=False)


def test_files_belong_to_the_account_and_project(hub):
    """No root-owned surprises: what a session writes is the account's, in the project's group."""
    c = hub.client("alice")
    c.start("lung-screening")
    k = c.kernel("lung-screening")
    try:
        inside(k, "open('/home/jovyan/mine.txt', 'w').write('x'); "
                  "open('/home/jovyan/project/ours.txt', 'w').write('x'); result = 1")
    finally:
        k.ws.close()
        c.stop("lung-screening")
    home = hub.state / "projects" / "lung-screening" / "homes" / "alice"
    workspace = hub.state / "projects" / "lung-screening" / "workspace"
    mine, ours = (home / "mine.txt").stat(), (workspace / "ours.txt").stat()
    assert (mine.st_uid, ours.st_uid) == (200000 + 1, 200000 + 1)   # alice: account 1
    assert ours.st_gid == 300000 + 1 and ours.st_mode & 0o020           # the project's group may write
    assert home.stat().st_uid == 200000 + 1 and workspace.stat().st_gid == 300000 + 1


def test_host_side_rule_is_restored_while_sessions_run(hub):
    """A flushed host firewall does not stay open: poll() puts the project bridge's rule back."""
    import subprocess
    import time

    from vre.backends.docker import bridge_name

    c = hub.client("bob")
    c.start("prostate-ai")
    rule = ["INPUT", "-i", bridge_name(f"{hub.instance}-prostate-ai"), "-j", "REJECT"]
    try:
        assert subprocess.run(["iptables", "-w", "-C", *rule]).returncode == 0
        subprocess.run(["iptables", "-w", "-D", *rule], check=True)
        deadline = time.monotonic() + 20  # the test hub polls every 2 s
        while subprocess.run(["iptables", "-w", "-C", *rule], capture_output=True).returncode and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert subprocess.run(["iptables", "-w", "-C", *rule]).returncode == 0
    finally:
        c.stop("prostate-ai")
    assert subprocess.run(["iptables", "-w", "-C", *rule], capture_output=True).returncode != 0  # gone with the network
