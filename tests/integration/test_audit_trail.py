"""The audit trail end to end: real hub, real sandboxes, real relay; SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from hubclient import HubClient

from vre.audit import open_store
from vre.settings import load

pytestmark = pytest.mark.integration


def store_of(hub):
    return open_store(load(environ=hub.env))


def wait_for(predicate, timeout=20.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


def server_pid(hub, session_id: str) -> int:
    """The server process of a session (root can read its environment, though it is not dumpable)."""
    for pid in (hub.cgroup(session_id) / "cgroup.procs").read_text().split():
        try:
            if b"vre_session.serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except FileNotFoundError:
            continue
    raise AssertionError(f"no server process in {session_id}")


def relay_env(hub, session_id: str) -> dict:
    raw = Path(f"/proc/{server_pid(hub, session_id)}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return {k: v for k, v in env.items() if k.startswith("VRE_AUDIT")}


def post_to_service_socket(hub, token: str, events: list) -> tuple[int, dict]:
    """What a session does: POST to the VRE service over its unix socket beside the hub's."""
    sock_path = str(hub.state.parent / "run" / "hub" / "vre.sock")
    body = json.dumps({"events": events}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(b"POST /services/vre/api/audit/events HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
              + f"Authorization: vre-relay {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        payload = payload.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(payload or b"{}")


def test_scripted_scenario_produces_exactly_the_expected_events(hub):
    """Failed login, login, start a session, view a series, a refused download, stop: exactly
    these events, in order, attributed to the right user, project, dataset and session."""
    hub.vre("user", "add", "frida", "--password-stdin", input="frida-password-1\n")
    hub.vre("project", "add-member", "prostate-ai", "frida")
    c = HubClient(hub.url, "frida")
    c.login("wrong-password")
    c.get_token("frida-password-1")
    c.start("prostate-ai")
    session_api = f"{c.server_url('prostate-ai')}/vre/api"
    auth = {"Authorization": f"token {c.token}"}
    page = requests.get(f"{session_api}/datasets/prostate-mri/series?limit=1", headers=auth, timeout=30).json()
    uid = page["items"][0]["series_uid"]
    r = requests.get(f"{session_api}/datasets/prostate-mri/series/{uid}", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    # the metadata comes from the catalogue index; the pixels come from the dataset's files
    r = requests.get(f"{session_api}/datasets/prostate-mri/series/{uid}/slices/0", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.get(f"{c.server_url('prostate-ai')}/files/data/prostate-mri/clinical.csv?download=1",
                     headers=auth, timeout=30)
    assert r.status_code == 403
    c.stop("prostate-ai")
    store = store_of(hub)
    assert wait_for(lambda: store.query(user="frida", action="download.refused"))  # by the access layer
    recorded = sorted(store.query(user="frida"), key=lambda e: e["time"])
    # what the host saw of the dataset reads (vre-hostview) comes on its own clock: checked below
    events = [e for e in recorded if e["source"] != "host"]
    actions = [(e["action"], e["outcome"]) for e in events]
    expected = [("auth.login_failed", "denied"), ("auth.login", "ok"), ("token.create", "ok"),
                ("session.request", "ok"), ("session.start", "ok"), ("api.request", "ok"),
                ("dicom.series_view", "ok"), ("download.refused", "denied"),
                ("session.stop", "ok"), ("api.request", "ok")]
    assert actions == expected, "\n".join(f"{e['time']} {e['action']} {e['outcome']} {e['target']}" for e in events)
    by_action = {e["action"]: e for e in events}
    start, view, refused = by_action["session.start"], by_action["dicom.series_view"], by_action["download.refused"]
    assert start["project"] == "prostate-ai" and start["details"]["datasets"] == ["prostate-mri"]
    session = start["session"]
    assert session and view["session"] == refused["session"] == by_action["session.stop"]["session"] == session
    assert view["target"] == uid and view["dataset"] == "prostate-mri"
    assert refused["dataset"] == "prostate-mri" and "clinical.csv" in refused["target"]
    assert all(e["actor"] == "frida" and e["actor_role"] == "researcher" for e in events)
    # the viewer read the slice's file in the session: the host recorded it (within its polling)
    host = wait_for(lambda: [e for e in store.query(user="frida") if e["source"] == "host"], timeout=30)
    reads = [e for e in host if e["action"] == "dataset.read"]
    assert reads and all(e["session"] == session and e["dataset"] == "prostate-mri" and e["project"] == "prostate-ai"
                         and e["target"].startswith("/data/prostate-mri/") for e in reads), host
    assert {e["action"] for e in host} <= {"dataset.read", "dataset.read_summary"}, host
    # the series view is reported by the session; the refusal by the access layer; the rest by the hub
    sources = {"dicom.series_view": "session", "download.refused": "access-layer"}
    assert {e["action"]: e["source"] for e in events} == {a: sources.get(a, "hub") for a, _ in expected}
    assert all(e["project"] == "prostate-ai" for e in events if e["action"] not in ("auth.login_failed", "auth.login",
                                                                                  "token.create", "api.request"))
    assert by_action["auth.login_failed"]["client"] == "127.0.0.1"
    assert store.verify().ok


def test_cli_changes_are_audited(hub):
    hub.vre("project", "create", "audited", "--title", "Audited changes")
    hub.vre("project", "grant", "audited", "prostate-mri")
    events = store_of(hub).query(project="audited")
    assert [e["action"] for e in events] == ["project.create", "project.grant"]
    assert all(e["actor_role"] == "admin" and e["details"]["via"] == "cli" for e in events)
    assert events[1]["dataset"] == "prostate-mri"


def test_sessions_cannot_forge_events(hub):
    c = hub.client("bob")
    c.start("prostate-ai")
    try:
        env = relay_env(hub, "bob-prostate-ai")
        token = env["VRE_AUDIT_TOKEN"]
        # Claims about who/where/which source are ignored: attribution comes from the credential,
        # and whatever a session reports is stored as session-reported.
        status, body = post_to_service_socket(hub, token, [{
            "id": "forged-1", "action": "contents.save", "target": "x", "actor": "alice",
            "project": "lung-screening", "session": "alice-lung-screening-0000", "source": "hub"}])
        assert status == 200 and body == {"stored": 1}
        stored = [e for e in store_of(hub).query(user="bob") if e["id"] == "forged-1"]
        assert stored and stored[0]["actor"] == "bob" and stored[0]["project"] == "prostate-ai"
        assert stored[0]["session"].startswith("bob-prostate-ai-")
        assert stored[0]["source"] == "session"
        assert [e["id"] for e in store_of(hub).query(user="bob", source="hub") if e["id"] == "forged-1"] == []
        # A credential edited to speak for someone else is refused.
        ident, mac = token.split(".")
        forged_ident = base64.urlsafe_b64encode(json.dumps(["alice", "lung-screening", "x"]).encode()).decode()
        assert post_to_service_socket(hub, f"{forged_ident}.{mac}", [])[0] == 403
        assert post_to_service_socket(hub, "", [])[0] == 403
        # Sessions may only record session-side actions, and only on their project's datasets.
        status, body = post_to_service_socket(hub, token, [{"id": "f2", "action": "auth.login"}])
        assert status == 400 and "may not record 'auth.login'" in body["message"]
        status, body = post_to_service_socket(hub, token, [{"id": "f3", "action": "dicom.series_view",
                                                         "dataset": "lung-ct-screening"}])
        assert status == 400 and "not granted" in body["message"]
        status, body = post_to_service_socket(hub, token, [{"action": "kernel.start"}])
        assert status == 400 and "'id' is required" in body["message"]
        # The credential is not handed down to kernels.
        k = c.kernel("prostate-ai")
        assert k.check("import os; print('VRE_AUDIT_TOKEN' in os.environ)").strip() == "False"
        k.close()
    finally:
        c.stop("prostate-ai")


def test_events_survive_hub_crash_and_replay_once(hub):
    """kill -9 the hub while the session keeps working: spooled events arrive once after restart."""
    c = hub.client("bob")
    c.start("prostate-ai")
    store = store_of(hub)

    def save(name):
        r = c.server_api("prostate-ai", "PUT", f"/contents/{name}",
                         json={"type": "file", "format": "text", "content": name})
        assert r.status_code in (200, 201), r.text

    save("before.txt")  # also warms the server's token cache, so it keeps serving while the hub is down
    assert wait_for(lambda: [e for e in store.query(user="bob", action="contents.save") if e["target"] == "before.txt"])
    acknowledged = {e["id"] for e in store.query(user="bob")}

    hub.kill(signal.SIGKILL)
    for i in range(5):
        save(f"during-{i}.txt")  # the proxy survives; the server spools what it cannot deliver
    spool = hub.state.parent / "run" / "sessions" / "bob-prostate-ai" / "spool"
    assert wait_for(lambda: len(list(spool.glob("*.json"))) >= 5), list(spool.iterdir())
    hub.start()

    def delivered():
        names = [e["target"] for e in store.query(user="bob", action="contents.save")]
        return all(f"during-{i}.txt" in names for i in range(5)) and names
    names = wait_for(delivered, timeout=30)
    assert names, "spooled events were not replayed"
    for i in range(5):
        assert names.count(f"during-{i}.txt") == 1, names  # once, not twice
    assert acknowledged <= {e["id"] for e in store.query(user="bob")}
    # the relay deletes what the hub acknowledged, just after the acknowledgement arrives
    assert wait_for(lambda: not list(spool.glob("*.json")), timeout=15), list(spool.glob("*.json"))
    assert store.verify().ok
    c = hub.client("bob")
    c.stop("prostate-ai")


def test_a_session_cannot_report_executed_code(hub):
    """Executed code is recorded by the access layer only: the session's relay credential cannot
    write (forge) cell.execute events."""
    c = hub.client("bob")
    c.start("prostate-ai")
    try:
        session_id = "bob-prostate-ai"
        env = relay_env(hub, session_id)
        status, body = post_to_service_socket(hub, env["VRE_AUDIT_TOKEN"], [
            {"action": "cell.execute", "id": "forged-1", "target": "k", "details": {"code": "forged"}}])
        assert status == 400 and "may not record 'cell.execute'" in body["message"], (status, body)
        assert not [e for e in store_of(hub).query(action="cell.execute") if e["details"].get("code") == "forged"]
    finally:
        c.stop("prostate-ai")


def test_cell_audit_is_off_by_default_and_visible_when_on(hub):
    c = hub.client("bob")
    store = store_of(hub)

    def cells():
        return [e for e in store.query(user="bob", action="cell.execute")]

    before = cells()
    c.start("prostate-ai")
    k = c.kernel("prostate-ai")
    k.check("print('not recorded')")
    k.close()
    c.stop("prostate-ai")
    assert cells() == before

    hub.vre("project", "set-cell-audit", "prostate-ai", "on")
    try:
        home = c.http.get(f"{hub.url}/hub/home", timeout=10).text
        assert "code audit on" in home
        form = c.http.get(f"{hub.url}/hub/spawn/bob/prostate-ai", timeout=10).text
        assert "Code audit is on for this project" in form
        c.start("prostate-ai")
        k = c.kernel("prostate-ai")
        k.check("secret_analysis = 6 * 7\nprint(secret_analysis)")
        k.close()
        recorded = wait_for(lambda: [e for e in cells() if e not in before])
        assert recorded and recorded[0]["details"]["code"] == "secret_analysis = 6 * 7\nprint(secret_analysis)"
        assert recorded[0]["project"] == "prostate-ai" and recorded[0]["session"].startswith("bob-prostate-ai-")
        lab = requests.get(f"{c.server_url('prostate-ai')}/lab", headers={"Authorization": f"token {c.token}"},
                           timeout=30).text
        assert "code audit on" in lab  # the Lab's title tells the researcher
        c.stop("prostate-ai")
    finally:
        hub.vre("project", "set-cell-audit", "prostate-ai", "off")
