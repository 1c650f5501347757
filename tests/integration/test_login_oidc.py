"""OIDC login on the real hub against a real OpenID Connect provider on loopback (oidc-provider):
accounts made at first login, roles and memberships from groups at every login, refusals that say
why, MFA from the ID token, logout that ends the provider's session, and the audit trail."""

import json

import pytest
from oidcprovider import login, logout, oidc, whoami  # noqa: F401 - oidc is a fixture

pytestmark = pytest.mark.integration


def audit(hub, action: str, user: str | None = None) -> list[dict]:
    """The trail's records of ``action`` (by ``user``), as the CLI gives them to auditors."""
    args = ["--action", action] + (["--user", user] if user else [])
    return json.loads(hub.vre("audit", "query", "--json", *args).stdout)


def account(hub, name: str) -> str:
    line = next((l for l in hub.vre("user", "list").stdout.splitlines() if l.split()[:1] == [name]), "")
    return line


def test_first_login_makes_the_account_with_roles_and_projects(oidc):
    hub, provider = oidc
    http, r = login(hub.url, "olivia", provider.password("olivia"))
    assert r.status_code == 200 and r.url.startswith(f"{hub.url}/hub/home"), (r.status_code, r.url, r.text[:500])
    me = whoami(hub.url, http)
    assert me["name"] == "olivia" and me["groups"] == []
    line = account(hub, "olivia")
    assert "researcher" in line, hub.vre("user", "list").stdout
    assert "olivia" in hub.vre("project", "show", "prostate-ai").stdout  # vre-project:prostate-ai
    # the host identity a local account gets: uid_base + account id (vre.plan)
    from sqlalchemy import select
    from vre import db as vdb
    from vre.settings import load

    settings = load(environ=hub.env)
    with vdb.session_scope(settings.vre_db_url) as db:
        acc = db.scalar(select(vdb.Account).where(vdb.Account.name == "olivia"))
        assert acc.oidc_subject == f"{provider.issuer} olivia" and acc.password_hash == ""
    assert f"ID tokens verified with the keys at {provider.issuer}/jwks" in hub.log_path.read_text()
    logins = audit(hub, "auth.login", "olivia")
    assert len(logins) == 1 and logins[0]["details"]["via"] == "oidc" and logins[0]["outcome"] == "ok", logins
    assert logins[0]["details"]["amr"] == ["pwd", "otp"]
    created = [e for e in audit(hub, "user.create") if e["target"] == "user/olivia"]
    assert len(created) == 1 and "member_add prostate-ai" in created[0]["details"]["changes"], created


def test_groups_decide_roles_and_a_removed_group_removes_the_role(oidc):
    hub, provider = oidc
    http, r = login(hub.url, "oscar", provider.password("oscar"))
    assert whoami(hub.url, http)["groups"] == ["vre-admins"], r.text[:500]
    assert "admin" in account(hub, "oscar")
    http, r = login(hub.url, "audrey", provider.password("audrey"))
    assert sorted(whoami(hub.url, http)["groups"]) == ["output-checkers", "vre-auditors"]
    # the provider's admin removes oscar from vre-admins: the next login is a researcher's
    provider.set_groups("oscar", ["vre-users"])
    http, r = login(hub.url, "oscar", provider.password("oscar"))
    assert whoami(hub.url, http)["groups"] == [], r.text[:500]
    assert "admin" not in account(hub, "oscar").split()
    updates = [e["details"]["changes"] for e in audit(hub, "user.update") if e["target"] == "user/oscar"]
    assert updates == [["role admin -> researcher"]], updates
    # and a project group removed at the provider removes the membership
    provider.set_groups("olivia", ["vre-users"])
    login(hub.url, "olivia", provider.password("olivia"))
    assert "olivia" not in hub.vre("project", "show", "prostate-ai").stdout


def test_missing_required_group_is_refused_with_a_clear_page(oidc):
    hub, provider = oidc
    http, r = login(hub.url, "nina", provider.password("nina"))
    assert r.status_code == 403
    assert "not in the group &#39;vre-users&#39;" in r.text or "not in the group 'vre-users'" in r.text, r.text
    assert "Traceback" not in r.text
    assert whoami(hub.url, http) is None
    assert "nina" not in hub.vre("user", "list").stdout  # no account for a refused login
    failed = audit(hub, "auth.login_failed", "nina")
    assert [e["details"]["reason"] for e in failed] == ["missing-group"] and failed[0]["outcome"] == "denied"


def test_mfa_required_refuses_a_one_factor_login(oidc):
    hub, provider = oidc
    http, r = login(hub.url, "sam", provider.password("sam"))
    assert r.status_code == 403 and "multi-factor" in r.text, r.text
    assert whoami(hub.url, http) is None
    assert [e["details"]["reason"] for e in audit(hub, "auth.login_failed", "sam")] == ["no-mfa"]
    # the same person with a second factor at the provider gets in
    provider.accounts["sam"].update(amr=["pwd", "otp"], acr="https://refeds.org/profile/mfa")
    provider._write()
    http, r = login(hub.url, "sam", provider.password("sam"))
    assert whoami(hub.url, http)["name"] == "sam"


def test_a_local_account_name_cannot_be_taken_over_through_the_provider(oidc):
    """The demo's local 'bob' exists; a provider identity named bob is another person."""
    hub, provider = oidc
    provider.accounts["bob"] = {"password": "bob-at-idp-1", "groups": ["vre-users", "vre-admins"], "amr": ["mfa"]}
    provider._write()
    http, r = login(hub.url, "bob", "bob-at-idp-1")
    assert r.status_code == 403 and "belongs to another account" in r.text, r.text
    assert "admin" not in account(hub, "bob").split()
    assert [e["details"]["reason"] for e in audit(hub, "auth.login_failed", "bob")] == ["name-taken"]


def test_logout_ends_the_hub_and_the_provider_session(oidc):
    hub, provider = oidc
    http, r = login(hub.url, "carl", provider.password("carl"))
    assert whoami(hub.url, http)["name"] == "carl"
    r = logout(hub.url, http)
    assert whoami(hub.url, http) is None
    assert r.url.startswith(f"{hub.url}/hub/login"), r.url  # back at the VRE's login page
    # the provider forgot carl too: a new login asks for the password again
    r = http.get(f"{hub.url}/hub/oauth_login", timeout=30)
    assert 'name="password"' in r.text and "/interaction/" in r.url
    assert len(audit(hub, "auth.logout", "carl")) == 1


def test_a_failed_code_exchange_is_recorded_and_answered_without_a_traceback(oidc):
    """A forged or replayed authorisation code: the provider refuses it, the hub says so."""
    from urllib.parse import parse_qs, urlparse

    import requests

    hub, _provider = oidc
    http = requests.Session()
    r = http.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=30)
    state = parse_qs(urlparse(r.headers["Location"]).query)["state"][0]
    before = len(audit(hub, "auth.login_failed"))
    r = http.get(f"{hub.url}/hub/oauth_callback", params={"code": "forged-code", "state": state}, timeout=30)
    assert r.status_code >= 400 and "Traceback" not in r.text
    assert whoami(hub.url, http) is None
    failed = audit(hub, "auth.login_failed")
    assert len(failed) == before + 1 and failed[-1]["details"]["reason"] == "provider-error", failed[-1]
