"""Logging in to the real hub: hashed passwords, lockout, generated demo credentials."""

import stat
import time

import pytest
import requests
from hubclient import HubClient

pytestmark = pytest.mark.integration


def test_wrong_password_refused_and_lockout(hub):
    hub.vre("user", "add", "dave", "--password-stdin", input="dave-password-1\n")
    c = HubClient(hub.url, "dave")
    for _ in range(3):  # the test hub locks after 3 failures
        c.login("not-the-password")
        assert not c.logged_in()
    c.login("dave-password-1")
    assert not c.logged_in(), "a locked account must refuse even the right password"
    assert "dave" in hub.vre("user", "list").stdout and "locked" in hub.vre("user", "list").stdout
    hub.vre("user", "unlock", "dave")
    c.login("dave-password-1")
    assert c.logged_in()


def test_unknown_and_disabled_users_cannot_log_in(hub):
    c = HubClient(hub.url, "mallory")
    c.login("whatever-password")
    assert not c.logged_in()
    hub.vre("user", "add", "ed", "--password-stdin", input="ed-password-12\n")
    hub.vre("user", "disable", "ed")
    c = HubClient(hub.url, "ed")
    c.login("ed-password-12")
    assert not c.logged_in()


def test_demo_credentials_are_generated_and_root_only(hub):
    creds = hub.state / "secrets" / "demo-credentials.txt"
    mode = stat.S_IMODE(creds.stat().st_mode)
    assert mode == 0o600 and creds.stat().st_uid == 0
    assert stat.S_IMODE((hub.state / "secrets").stat().st_mode) == 0o700
    # the file itself (other tests add accounts of their own to hub.passwords)
    demo = dict(line.split("\t")[0::2] for line in creds.read_text().splitlines())
    assert len(set(demo.values())) == len(demo) == 4  # random, distinct
    assert all(len(p) >= 12 for p in demo.values())


def test_admins_are_not_all_powerful(hub):
    """Separation of duties: a VRE admin sees and stops sessions but cannot join the auditors,
    mint tokens for others, change accounts, or enter anyone's session."""
    bob = hub.client("bob")
    bob.start("prostate-ai")
    admin = hub.client("admin")
    assert admin.api("GET", "/users").status_code == 200
    for method, path, body in [
        ("POST", "/groups/vre-auditors/users", {"users": ["admin"]}),
        ("POST", "/users/auditor/tokens", {"note": "steal"}),
        ("POST", "/users", {"usernames": ["mallory"]}),
        ("PATCH", "/users/bob", {"admin": True}),
        ("POST", "/users/bob/servers/lung-screening", {}),
    ]:
        r = admin.api(method, path, json=body)
        # JupyterHub refuses with 403, or with 404 where it does not reveal whether the target exists
        assert r.status_code == 403 or (r.status_code == 404 and "No access" in r.text), (method, path, r.text)
    assert admin.vre_api("GET", "/audit/events").status_code == 403
    r = requests.get(f"{bob.server_url('prostate-ai')}/api/contents", headers={"Authorization": f"token {admin.token}"},
                     timeout=30, allow_redirects=False)
    assert r.status_code in (403, 302), r.status_code  # no access to another user's session
    assert admin.api("DELETE", "/users/bob/servers/prostate-ai").status_code in (202, 204)
    deadline = time.monotonic() + 30
    while bob.server_state("prostate-ai") is not None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert bob.server_state("prostate-ai") is None


def test_hub_databases_are_readable_by_the_hub_alone(hub):
    """Accounts, tokens, grants and the audit trail live in the state directory's databases: no
    session uid (nor any other user of the host) may read them."""
    if "VRE_DB_URL" in hub.env:
        pytest.skip("this hub's databases are on the PostgreSQL server")
    files = [hub.state / "vre.sqlite", hub.state / "jupyterhub.sqlite"]
    files += [f.with_name(f.name + s) for f in files for s in ("-wal", "-shm") if f.with_name(f.name + s).exists()]
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {"0o600"}, modes
    assert all(f.stat().st_uid == 0 for f in files)


def test_vre_pages_and_apis_are_a_hub_service_not_extra_handlers(hub):
    """The VRE's pages and APIs are the hub-managed service ``vre`` (JupyterHub's recommended way):
    the hub's log has no deprecation of ``extra_handlers``, the service answers behind the proxy and
    on its unix socket beside the hub's, and a researcher's browser login carries the jobs scope."""
    log = hub.log_path.read_text(errors="replace")
    assert "extra_handlers is deprecated" not in log
    assert "extra_handlers" not in log
    sock = hub.state.parent / "run" / "hub" / "vre.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o666
    assert "VRE service at http://127.0.0.1:" in log  # the managed service's own start line
    assert requests.get(f"{hub.url}/hub/vre/audit", allow_redirects=False, timeout=20).status_code == 404
    # A researcher's browser: the hub's login, then the service's OAuth login (its page is for
    # auditors: 403, as a page), then the jobs API with the browser's cookie alone.
    alice = HubClient(hub.url, "alice")
    alice.login(hub.passwords["alice"])
    page = alice.http.get(f"{hub.url}/services/vre/audit", timeout=20)
    assert page.status_code == 403 and page.headers["Content-Type"].startswith("text/html")
    r = alice.http.get(f"{hub.url}/services/vre/api/jobs", timeout=20)
    assert r.status_code == 200 and "jobs" in r.json(), r.text
    r = alice.http.post(f"{hub.url}/services/vre/api/jobs", json={}, timeout=20)  # no XSRF header: refused
    assert r.status_code == 403, r.text


def test_logout_is_audited(hub):
    """JupyterHub forgets the user before it logs the logout request; the VRE's logout handler keeps
    it, so ``auth.logout`` names who logged out (it was never recorded before)."""
    import json

    hub.vre("user", "add", "lena", "--password-stdin", input="lena-password-1\n")
    c = HubClient(hub.url, "lena")
    c.login("lena-password-1")
    assert c.logged_in()
    c.http.get(f"{hub.url}/hub/logout", timeout=20)
    assert not c.logged_in()
    records = json.loads(hub.vre("audit", "query", "--json", "--action", "auth.logout", "--user", "lena").stdout)
    assert len(records) == 1 and records[0]["actor_role"] == "researcher", records
