"""Account administration (vre.admin), shared by ``vre user add|disable|unlock|reset-mfa|set-role|
set-checker`` and the Users admin page: the rules (admins only, never disabling oneself nor taking
away one's own admin role, unknown users, auditors never output checkers), the changes, the audit
event each records (the same for CLI and web, but for who acted and how) and the scope that guards
the page. On SQLite and PostgreSQL."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vre import access_requests as AR
from vre import admin
from vre import db as vdb
from vre.accounts import add_account, check_login, get_account
from vre.audit import open_store
from vre.audit.events import cli_actor
from vre.errors import NotFound, VREError
from vre.settings import Settings

WEB = AR.Actor("admin", via="web", client="192.0.2.7")
OPERATOR = AR.Actor.cli(None)


@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name, role in (("bob", "researcher"), ("admin", "admin"), ("aud", "auditor")):
            add_account(db, name, role=role, password=f"{name}-password-1")
    return settings


def events(settings):
    return [e for e in open_store(settings).query(limit=100) if (e["target"] or "").startswith("user/")]


def account(settings, name):
    with vdb.session_scope(settings.vre_db_url) as db:
        a = get_account(db, name)
        return {"disabled": a.disabled, "locked_until": a.locked_until, "totp": a.totp_secret,
                "failed": a.failed_logins}


def test_web_disable_and_enable_are_audited_with_the_admin_and_address(world):
    assert admin.change_account(world, WEB, "bob", "disable") == "'bob' disabled"
    assert account(world, "bob")["disabled"]
    with vdb.session_scope(world.vre_db_url) as db:
        assert check_login(db, "bob", "bob-password-1", threshold=3, lockout_seconds=60).reason == "disabled"
    admin.change_account(world, WEB, "bob", "enable")
    assert not account(world, "bob")["disabled"]
    got = [(e["action"], e["actor"], e["actor_role"], e["outcome"], e["target"], e["client"], e["details"])
           for e in events(world)]
    assert got == [
        ("user.update", "admin", "admin", "ok", "user/bob", "192.0.2.7", {"via": "web", "change": "disable"}),
        ("user.update", "admin", "admin", "ok", "user/bob", "192.0.2.7", {"via": "web", "change": "enable"}),
    ]


def test_the_operator_records_what_the_cli_always_recorded(world):
    admin.change_account(world, OPERATOR, "bob", "disable")
    (e,) = events(world)
    assert (e["action"], e["actor"], e["actor_role"], e["details"]) == (
        "user.update", cli_actor(), "admin", {"via": "cli", "change": "disable"})


def test_unlock_and_reset_mfa(world):
    with vdb.session_scope(world.vre_db_url) as db:
        a = get_account(db, "aud")
        a.locked_until = vdb.utcnow() + dt.timedelta(minutes=5)
        a.failed_logins = 2
        a.totp_secret, a.totp_last_step, a.recovery_codes = "JBSWY3DPEHPK3PXP", 1, ["x"]
    (row,) = [r for r in admin.list_accounts(world) if r["name"] == "aud"]
    assert row["locked_until"] and row["mfa"] and row["role"] == "auditor"
    admin.change_account(world, WEB, "aud", "unlock")
    admin.change_account(world, WEB, "aud", "reset-mfa")
    after = account(world, "aud")
    assert (after["locked_until"], after["failed"], after["totp"]) == (None, 0, None)
    (row,) = [r for r in admin.list_accounts(world) if r["name"] == "aud"]
    assert (row["locked_until"], row["mfa"], row["disabled"]) == (None, False, False)
    assert [(e["action"], e["details"]["change"]) for e in events(world)] == [
        ("user.update", "unlock"), ("auth.mfa_reset", "reset-mfa")]


def test_a_lockout_that_ran_out_is_not_listed(world):
    with vdb.session_scope(world.vre_db_url) as db:
        get_account(db, "bob").locked_until = vdb.utcnow() - dt.timedelta(seconds=1)
    assert all(r["locked_until"] is None for r in admin.list_accounts(world))
    assert [r["name"] for r in admin.list_accounts(world)] == ["admin", "aud", "bob"]


def test_refusals_say_what_to_fix_and_change_nothing(world):
    with pytest.raises(AR.Forbidden, match="may not disable your own account"):
        admin.change_account(world, WEB, "admin", "disable")
    assert not account(world, "admin")["disabled"]
    admin.change_account(world, WEB, "admin", "unlock")  # other changes to oneself are fine
    with pytest.raises(NotFound, match="unknown user 'nobody'"):
        admin.change_account(world, WEB, "nobody", "unlock")
    with pytest.raises(VREError, match="unknown change 'delete'"):
        admin.change_account(world, WEB, "bob", "delete")
    for who in (AR.Actor("bob", client="192.0.2.8"), AR.Actor("aud"), AR.Actor("ghost")):
        with pytest.raises(AR.Forbidden, match="not an active admin"):
            admin.change_account(world, who, "bob", "disable")
    assert not account(world, "bob")["disabled"]
    admin.change_account(world, OPERATOR, "admin", "disable")  # the console may (the last resort)
    with pytest.raises(AR.Forbidden, match="not an active admin"):  # a disabled admin may not
        admin.change_account(world, WEB, "bob", "disable")
    denied = [(e["actor"], e["target"], e["details"]["change"]) for e in events(world) if e["outcome"] == "denied"]
    assert denied == [("admin", "user/admin", "disable"), ("bob", "user/bob", "disable"),
                      ("aud", "user/bob", "disable"), ("ghost", "user/bob", "disable"),
                      ("admin", "user/bob", "disable")]


def test_web_creates_accounts_with_a_password_shown_once_or_for_single_sign_on(world):
    said, password = admin.create_account(world, WEB, " Carla ", "auditor")
    assert said == "added auditor 'carla'" and len(password) >= 10
    with vdb.session_scope(world.vre_db_url) as db:
        assert check_login(db, "carla", password, threshold=3, lockout_seconds=60).ok
        assert get_account(db, "carla").role == "auditor"
    said, password = admin.create_account(world, WEB, "dora", oidc=True)
    assert password is None and "no password" in said and "first login as 'dora'" in said
    with vdb.session_scope(world.vre_db_url) as db:
        assert get_account(db, "dora").password_hash == ""
    got = [(e["action"], e["actor"], e["outcome"], e["target"], e["client"], e["details"]) for e in events(world)]
    assert got == [
        ("user.create", "admin", "ok", "user/carla", "192.0.2.7", {"via": "web", "role": "auditor"}),
        ("user.create", "admin", "ok", "user/dora", "192.0.2.7", {"via": "web", "role": "researcher", "login": "oidc"}),
    ]


def test_creation_refusals_say_what_to_fix(world):
    for name, role, message in (("Bad Name", "researcher", "invalid user name"),
                                ("bob", "researcher", "already exists"), ("eve", "root", "invalid role 'root'")):
        with pytest.raises(VREError, match=message):
            admin.create_account(world, WEB, name, role)
    with pytest.raises(AR.Forbidden, match="only admins create accounts"):
        admin.create_account(world, AR.Actor("bob"), "eve")
    with vdb.session_scope(world.vre_db_url) as db:
        assert db.query(vdb.Account).filter_by(name="eve").count() == 0
    (e,) = events(world)
    assert (e["action"], e["actor"], e["outcome"], e["target"]) == ("user.create", "bob", "denied", "user/eve")


def roles(settings):
    return {r["name"]: (r["role"], r["checker"]) for r in admin.list_accounts(settings)}


def test_roles_and_the_checker_flag_change_together_and_are_audited(world):
    said = admin.set_role(world, WEB, "bob", "admin", checker=True)
    assert said.startswith("'bob' is now admin, an output checker") and "within a minute" in said
    assert roles(world)["bob"] == ("admin", True)
    assert "nothing changed" in admin.set_role(world, WEB, "bob", "admin", checker=True)
    admin.set_role(world, AR.Actor("bob", client="192.0.2.9"), "admin", "researcher")  # bob is an admin now
    assert roles(world)["admin"] == ("researcher", False)
    got = [(e["action"], e["actor"], e["target"], e["details"]) for e in events(world)]
    assert got == [
        ("user.update", "admin", "user/bob", {"via": "web", "change": "role", "old": "researcher", "new": "admin"}),
        ("airlock.checker", "admin", "user/bob", {"via": "web", "change": "checker", "output_checker": True}),
        ("user.update", "bob", "user/admin", {"via": "web", "change": "role", "old": "admin", "new": "researcher"}),
    ]


def test_role_refusals(world):
    with pytest.raises(AR.Forbidden, match="may not take away your own admin role"):
        admin.set_role(world, WEB, "admin", "researcher")
    admin.set_role(world, WEB, "admin", "admin", checker=True)  # the flag on oneself is fine
    with pytest.raises(VREError, match="auditors audit the airlock"):
        admin.set_role(world, WEB, "bob", "auditor", checker=True)
    with pytest.raises(VREError, match="auditors audit the airlock"):
        admin.set_role(world, WEB, "aud", checker=True)
    with pytest.raises(VREError, match="invalid role 'boss'"):
        admin.set_role(world, WEB, "bob", "boss")
    with pytest.raises(NotFound, match="unknown user 'nobody'"):
        admin.set_role(world, WEB, "nobody", "admin")
    with pytest.raises(AR.Forbidden, match="not an active admin"):
        admin.set_role(world, AR.Actor("aud"), "aud", "admin")
    admin.create_account(world, WEB, "olga", oidc=True)
    with pytest.raises(VREError, match="identity provider's groups set its role"):
        admin.set_role(world, WEB, "olga", "admin")
    assert admin.set_role(world, WEB, "olga", "researcher", checker=False).endswith("nothing changed")
    assert roles(world) == {"admin": ("admin", True), "aud": ("auditor", False), "bob": ("researcher", False),
                            "olga": ("researcher", False)}
    admin.set_role(world, OPERATOR, "admin", "auditor", checker=False)  # the console may (the last resort)
    assert roles(world)["admin"] == ("auditor", False)
    denied = [(e["actor"], e["target"]) for e in events(world) if e["outcome"] == "denied"]
    assert denied == [("admin", "user/admin"), ("admin", "user/bob"), ("admin", "user/aud"), ("aud", "user/aud"),
                      ("admin", "user/olga")]


def test_only_the_vre_admin_role_carries_the_admin_scope():
    from vre.api import service_spec
    from vre.roles import ADMIN_SCOPE, CUSTOM_SCOPES, load_roles

    assert CUSTOM_SCOPES[ADMIN_SCOPE]["description"]
    holders = [r["name"] for r in load_roles() if ADMIN_SCOPE in r["scopes"]]
    assert holders == ["vre-admin"]
    assert ADMIN_SCOPE in service_spec(None, {})["oauth_client_allowed_scopes"]
    service = next(r for r in load_roles() if r.get("services"))
    # sees who runs sessions and stops one (for an admin): no starting, no server state, no accounts
    assert set(service["scopes"]) == {"list:users", "read:servers", "delete:servers"}


def test_the_cli_uses_the_same_function(tmp_path):
    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": "/tmp/vre-cli-run"}

    def vre(*args, input=None):
        return subprocess.run([str(Path(sys.executable).parent / "vre"), *args], env=env, capture_output=True,
                              text=True, input=input, timeout=120)
    assert vre("user", "add", "eve", "--password-stdin", input="eve-password-12\n").returncode == 0
    r = vre("user", "disable", "eve")
    assert r.returncode == 0 and r.stdout.strip() == "'eve' disabled"
    assert "disabled" in vre("user", "list").stdout
    assert vre("user", "disable", "eve", "--enable").stdout.strip() == "'eve' enabled"
    r = vre("user", "unlock", "nobody")
    assert r.returncode == 2 and "unknown user 'nobody'" in r.stderr
    assert "user.update" in vre("audit", "query", "--action", "user.update").stdout
    r = vre("user", "set-role", "eve", "auditor")
    assert r.returncode == 0 and r.stdout.startswith("'eve' is now auditor")
    r = vre("user", "set-checker", "eve", "on")
    assert r.returncode == 2 and "auditors audit the airlock" in r.stderr
    assert vre("user", "set-role", "eve", "boss").returncode == 2  # argparse: not one of the roles
    r = vre("user", "add", "fay", "--oidc")
    assert r.returncode == 0 and "first login as 'fay'" in r.stdout and "shown once" not in r.stdout
    got = vre("audit", "query", "--action", "user.", "--json")
    assert '"change": "role"' in got.stdout and '"via": "cli"' in got.stdout
