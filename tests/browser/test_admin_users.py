"""The Users admin page in real Chromium (``/services/vre/admin/users``, plain forms): the admin
follows the home page's link, sees every account and who has a session running, disables a
researcher (whose login is then refused), enables and unlocks them again (their login works); the
rules refuse disabling oneself and unknown users with a message; a researcher gets 403 and no link;
every change is in the audit trail under the admin's name, from the web. Screenshot:
docs/screenshot-admin-users.png."""

from __future__ import annotations

import json
import re
import shutil
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
    if USER not in sqlite_hub.passwords:
        sqlite_hub.vre("user", "add", USER, "--password-stdin", input=f"{PASSWORD}\n")
        sqlite_hub.passwords[USER] = PASSWORD
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
    ARTIFACTS.mkdir(exist_ok=True)
    admin.screenshot(path=str(ARTIFACTS / "admin-users.png"))
    shutil.copy(ARTIFACTS / "admin-users.png", ROOT / "docs" / "screenshot-admin-users.png")

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
