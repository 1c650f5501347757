"""The Users admin page in real Chromium (``/services/vre/admin/users``, plain forms): the admin
follows the home page's link, sees every account and who has a session running, disables a
researcher (whose login is then refused), enables and unlocks them again (their login works); the
rules refuse disabling oneself and unknown users with a message; a researcher gets 403 and no link.
The admin creates an account (the password shown once logs in), changes its role (the hub's group
follows at its next login), sees a running session with its CPU and memory and stops it (gone from
the hub and the host), and cancels a researcher's batch job. Every change is in the audit trail
under the admin's name, from the web. Screenshot: docs/screenshot-admin-users.png."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from hubclient import HubClient

pytestmark = [pytest.mark.integration, pytest.mark.browser]

USER, PASSWORD = "ulla", "ulla-password-1"  # a researcher of this test's own: the demo's stay as they are
PAGE = "/services/vre/admin/users"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def hub(sqlite_hub):
    sqlite_hub.account(USER, PASSWORD)
    yield sqlite_hub
    sqlite_hub.vre("user", "disable", USER, "--enable")
    sqlite_hub.vre("user", "unlock", USER)


def logs_in(hub, user: str, password: str | None = None) -> bool:
    c = HubClient(hub.url, user)
    c.login(password or hub.passwords[user])
    return c.logged_in()


def test_admin_disables_enables_and_unlocks_a_researcher(hub, logged_in):
    bob = hub.client("bob")
    bob.start("prostate-ai", timeout=180)  # a session running: the page says so
    try:
        admin = logged_in(hub, "admin", "/hub/home")
        admin.click("#admin-users-link")
        admin.wait_for_url(re.compile(re.escape(PAGE)))
        expect(admin.locator("h1")).to_have_text("Users")
        expect(admin.locator("#running-unknown")).to_have_count(0)
        expect(admin.locator("#user-bob .running")).to_have_text("prostate-ai")
    finally:
        bob.stop("prostate-ai")
    row = admin.locator(f"#user-{USER}")
    expect(row.locator(".role")).to_contain_text("researcher")
    expect(row).to_have_attribute("data-disabled", "no")
    expect(row.locator(".running")).to_have_text("none")
    expect(admin.locator("#user-admin button.disable")).to_have_count(0)  # not offered for oneself

    row.locator("button.disable").click()
    admin.wait_for_url(re.compile(r"done=disable"))
    expect(admin.locator("#done")).to_contain_text(f"{USER}: disabled")
    expect(row).to_have_attribute("data-disabled", "yes")
    assert not logs_in(hub, USER)
    row.locator("button.enable").click()
    admin.wait_for_url(re.compile(r"done=enable"))
    expect(row).to_have_attribute("data-disabled", "no")
    assert logs_in(hub, USER)

    for _ in range(3):  # the test hub locks after 3 failures
        assert not logs_in(hub, USER, "not-the-password")
    assert not logs_in(hub, USER)
    admin.reload()
    expect(row).to_have_attribute("data-locked", "yes")
    expect(row.locator(".status")).to_contain_text("locked")
    row.locator("button.unlock").click()
    admin.wait_for_url(re.compile(r"done=unlock"))
    expect(row).to_have_attribute("data-locked", "no")
    assert logs_in(hub, USER)

    # what the page does not offer is still refused, with the page and a message (the form's token)
    xsrf = admin.locator("input[name=_xsrf]").first.input_value()
    own = admin.request.post(f"{hub.url}{PAGE}/admin/disable", form={"_xsrf": xsrf}, max_redirects=0)
    assert own.status == 403 and "may not disable your own account" in own.text()
    nobody = admin.request.post(f"{hub.url}{PAGE}/nobody/unlock", form={"_xsrf": xsrf}, max_redirects=0)
    assert nobody.status == 404 and "unknown user" in nobody.text() and "Traceback" not in nobody.text()
    forged = admin.request.post(f"{hub.url}{PAGE}/{USER}/disable", form={}, max_redirects=0)
    assert forged.status in (302, 403), forged.status  # no XSRF token: not the admin's
    assert logs_in(hub, USER)

    events = json.loads(hub.vre("audit", "query", "--action", "user.update", "--limit", "1000", "--json").stdout)
    mine = [(e["actor"], e["outcome"], e["details"]["change"], e["details"]["via"]) for e in events
            if e["target"] == f"user/{USER}" and e["details"].get("via") == "web"]
    assert mine[-3:] == [("admin", "ok", "disable", "web"), ("admin", "ok", "enable", "web"),
                         ("admin", "ok", "unlock", "web")], mine
    assert all(e["client"] for e in events if e["target"] == f"user/{USER}" and e["details"].get("via") == "web")
    assert any(e["target"] == "user/admin" and e["outcome"] == "denied" and e["actor"] == "admin" for e in events)


def test_researchers_get_403_and_no_link(hub, logged_in):
    bob = logged_in(hub, "bob", "/hub/home")
    expect(bob.locator("#catalogue-link")).to_be_visible()
    expect(bob.locator("#admin-users-link")).to_have_count(0)
    r = bob.goto(f"{hub.url}{PAGE}")
    assert r.status == 403
    expect(bob.locator("body")).to_contain_text("403")


NEW = "uma"  # the account the admin creates


def audit(hub, action: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--action", action, "--limit", "1000", "--json").stdout)


def until(what, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.5)
    return value


def test_admin_creates_an_account_sets_its_role_stops_a_session_and_cancels_a_job(hub, logged_in):
    bob = hub.client("bob")
    bob.start("prostate-ai", timeout=180)
    workspace = hub.state / "projects" / "prostate-ai" / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "admin-sleep.py").write_text("import time\nprint('STARTED', flush=True)\ntime.sleep(600)\n")
    r = bob.vre_api("POST", "/jobs", json={"project": "prostate-ai", "kind": "script",
                                            "target": "project/admin-sleep.py", "name": "sleeps"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    try:
        until("started", lambda: "STARTED" in bob.vre_api("GET", f"/jobs/{job}/log").json()["text"])
        admin = logged_in(hub, "admin", PAGE)
        admin.fill("#new-name", NEW)
        admin.select_option("#new-role", "researcher")
        admin.select_option("#new-login", "password")
        admin.click("#create")
        expect(admin.locator("#created")).to_contain_text(f"added researcher '{NEW}'")
        password = admin.locator("#new-password").inner_text().strip()
        assert logs_in(hub, NEW, password)  # the password shown once works
        session = admin.locator("#session-bob-prostate-ai")
        expect(session.locator(".cpu")).to_contain_text("CPU")
        expect(session.locator(".memory")).to_contain_text("MiB")
        assert "unknown" not in session.inner_text()  # the sandbox's cgroup says
        expect(admin.locator(f"#job-{job}")).to_contain_text("sleeps")
        expect(admin.locator(f"#job-{job} .use")).to_contain_text("MiB")  # its worker's cgroup says
        assert "unknown" not in admin.locator(f"#job-{job}").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        admin.screenshot(path=str(ARTIFACTS / "admin-users.png"))
        shutil.copy(ARTIFACTS / "admin-users.png", ROOT / "docs" / "screenshot-admin-users.png")

        admin.goto(f"{hub.url}{PAGE}")  # the password is not shown again
        expect(admin.locator("#new-password")).to_have_count(0)
        row = admin.locator(f"#user-{NEW}")
        row.locator("select[name=role]").select_option("auditor")
        row.locator("button.set-role").click()
        admin.wait_for_url(re.compile(r"done=role"))
        expect(row).to_have_attribute("data-role", "auditor")
        uma = HubClient(hub.url, NEW)
        uma.login(password)
        groups = hub.client("admin").api("GET", f"/users/{NEW}").json()["groups"]
        assert "vre-auditors" in groups, groups  # the hub's rights followed at the next login
        mine = admin.locator("#user-admin")
        mine.locator("select[name=role]").select_option("researcher")
        mine.locator("button.set-role").click()
        expect(admin.locator("#error")).to_contain_text("may not take away your own admin role")
        expect(mine).to_have_attribute("data-role", "admin")

        admin.locator("#session-bob-prostate-ai button.stop").click()
        admin.wait_for_url(re.compile(r"done=stop"))
        expect(admin.locator("#done")).to_contain_text("bob/prostate-ai: stop requested")
        until("stopped", lambda: bob.server_state("prostate-ai") is None
              or not bob.server_state("prostate-ai").get("ready"), 90)
        until("gone from the host", lambda: not hub.session_exists("bob-prostate-ai"), 60)

        admin.reload()
        expect(admin.locator("#session-bob-prostate-ai")).to_have_count(0)
        admin.locator(f"#job-{job} button.cancel").click()
        admin.wait_for_url(re.compile(r"done=cancel"))
        until("cancelled", lambda: bob.vre_api("GET", f"/jobs/{job}").json()["state"] == "cancelled")
    finally:
        if bob.server_state("prostate-ai"):
            bob.stop("prostate-ai")
        bob.vre_api("POST", f"/jobs/{job}/cancel")

    web = [(e["action"], e["actor"], e["outcome"], e["target"]) for kind in ("user.", "session.stop", "job.cancel")
           for e in audit(hub, kind) if e["details"].get("via") == "web" and e["client"]]
    for event in [("user.create", "admin", "ok", f"user/{NEW}"), ("user.update", "admin", "ok", f"user/{NEW}"),
                  ("user.update", "admin", "denied", "user/admin"), ("session.stop", "admin", "ok", "bob-prostate-ai"),
                  ("job.cancel", "admin", "ok", f"job/{job}")]:
        assert event in web, (event, web)
    # the hub's own record of the service's request says stop (an admin asked), not cull
    assert any(e["actor"] == "vre" and e["target"] == "bob/prostate-ai" for e in audit(hub, "session.stop"))
