"""OIDC login in real Chromium, through a real OpenID Connect provider's login page (oidc-provider on
loopback): group mapping to roles, a role removed at the provider gone at the next login, logout
that ends the provider's session, refusals (required group, MFA) as a clear page; all audited.

Screenshots of each refusal go to test-artifacts/ (oidc-*.png).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from oidcprovider import oidc  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
expect = pytest.importorskip("playwright.sync_api").expect


def provider_login(page, hub, provider, user: str, next_url: str = "/hub/home") -> None:
    """The VRE's login page, its 'Sign in with' button, the provider's own form."""
    page.goto(f"{hub.url}/hub/login?next={next_url}")
    page.get_by_text("Sign in with Test IdP").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(provider.issuer)}/interaction/"))
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", provider.password(user))
    page.get_by_role("button", name="Sign in").click()


def audit(hub, action: str, user: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--json", "--action", action, "--user", user).stdout)


def test_groups_become_roles_and_a_removed_group_is_gone_at_next_login(oidc, browser_page):
    hub, provider = oidc
    page = browser_page
    provider.set_groups("audrey", ["vre-users", "vre-auditors"])
    provider_login(page, hub, provider, "audrey", next_url="/services/vre/audit")
    # the auditors' page: only the auditor role (the vre-auditors group at the provider) opens it
    expect(page).to_have_url(re.compile(r"/services/vre/audit"))
    expect(page.locator("body")).to_have_attribute("data-audit-loading", "false")
    expect(page.get_by_text("Forbidden")).to_have_count(0)
    # log out: the VRE's logout, then the provider's end of session, back at the VRE's login page
    page.goto(f"{hub.url}/hub/home")
    page.click("#logout")
    page.get_by_role("button", name=re.compile("sign me out", re.I)).click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(hub.url)}/hub/login"))
    assert len(audit(hub, "auth.logout", "audrey")) >= 1
    # the provider's admin removes audrey from the auditors; her next login has no auditor role
    provider.set_groups("audrey", ["vre-users"])
    provider_login(page, hub, provider, "audrey", next_url="/services/vre/audit")  # the password again: logged out
    expect(page.locator("body")).to_contain_text("403")
    expect(page.locator("#audit-table, [data-audit-loading]")).to_have_count(0)
    logins = audit(hub, "auth.login", "audrey")
    assert len(logins) >= 2 and all(e["details"]["via"] == "oidc" for e in logins)
    assert any("role auditor -> researcher" in e["details"]["changes"]
               for e in json.loads(hub.vre("audit", "query", "--json", "--action", "user.update").stdout)
               if e["target"] == "user/audrey")


def test_first_login_lands_on_the_home_page_with_the_project_from_a_group(oidc, browser_page):
    hub, provider = oidc
    page = browser_page
    provider.set_groups("olivia", ["vre-users", "vre-project:prostate-ai"])
    provider_login(page, hub, provider, "olivia")
    expect(page).to_have_url(re.compile(rf"^{re.escape(hub.url)}/hub/home"))
    expect(page.locator("body")).to_contain_text("olivia")
    expect(page.locator("body")).to_contain_text("prostate-ai")  # the home page lists her projects


@pytest.mark.parametrize("user, reason, text", [
    ("nina", "missing-group", "not in the group 'vre-users'"),
    ("sam", "no-mfa", "requires multi-factor login"),
])
def test_refused_logins_get_a_clear_page(oidc, browser_page, user, reason, text):
    hub, provider = oidc
    page = browser_page
    before = len(audit(hub, "auth.login_failed", user))
    provider_login(page, hub, provider, user)
    body = page.locator("body")
    expect(body).to_contain_text("403")
    expect(body).to_contain_text(text)
    assert "Traceback" not in page.content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"oidc-refused-{reason}.png"), full_page=True)
    assert page.context.request.get(f"{hub.url}/hub/api/user").status == 403  # not logged in
    failed = audit(hub, "auth.login_failed", user)
    assert len(failed) == before + 1 and failed[-1]["details"]["reason"] == reason
