import datetime as dt

import pytest

from vre import db as vdb
from vre.accounts import add_account, check_login, set_password, unlock
from vre.errors import VREError
from vre.passwords import hash_password, verify_password


def test_hash_roundtrip_and_salting():
    h1, h2 = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert verify_password("correct horse battery", h1)
    assert not verify_password("correct horse batterY", h1)
    assert not verify_password("x", "") and not verify_password("x", "md5$abc")


def test_generated_password_is_returned_once_and_works(db_url):
    with vdb.session_scope(db_url) as db:
        account, password = add_account(db, "erin")
    assert password and len(password) >= 12
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "erin", password, threshold=3, lockout_seconds=60).ok
        assert "password" not in repr(account.__dict__.get("password_hash", ""))  # only a hash is stored
        assert db.get(vdb.Account, account.id).password_hash.startswith("scrypt$")


@pytest.mark.parametrize("name, role, password, fragment", [
    ("Erin", "researcher", None, "invalid user name"),
    ("erin", "superuser", None, "invalid role"),
    ("erin", "researcher", "short", "too short"),
])
def test_bad_accounts_are_refused(db_url, name, role, password, fragment):
    with vdb.session_scope(db_url) as db, pytest.raises(VREError, match=fragment):
        add_account(db, name, role=role, password=password)


def test_lockout_after_threshold_even_for_the_right_password(db_url):
    with vdb.session_scope(db_url) as db:
        add_account(db, "frank", password="frank-password-1")
    for attempt in range(3):
        with vdb.session_scope(db_url) as db:
            r = check_login(db, "frank", "wrong-password", threshold=3, lockout_seconds=60)
            assert not r.ok
    assert r.reason == "locked"
    with vdb.session_scope(db_url) as db:
        r = check_login(db, "frank", "frank-password-1", threshold=3, lockout_seconds=60)
        assert (r.ok, r.reason) == (False, "locked")
        assert r.locked_until > vdb.utcnow() + dt.timedelta(seconds=50)
    with vdb.session_scope(db_url) as db:
        unlock(db, "frank")
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "frank", "frank-password-1", threshold=3, lockout_seconds=60).ok


def test_lock_expires(db_url):
    with vdb.session_scope(db_url) as db:
        add_account(db, "gina", password="gina-password-1")
        db.flush()
        acc = db.query(vdb.Account).filter_by(name="gina").one()
        acc.locked_until = vdb.utcnow() - dt.timedelta(seconds=1)
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "gina", "gina-password-1", threshold=3, lockout_seconds=60).ok


def test_unknown_and_disabled_accounts(db_url):
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "nobody", "x", threshold=3, lockout_seconds=60).reason == "bad-credentials"
        assert check_login(db, "../etc", "x", threshold=3, lockout_seconds=60).reason == "bad-credentials"
        add_account(db, "hank", password="hank-password-1")
        db.query(vdb.Account).filter_by(name="hank").one().disabled = True
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "hank", "hank-password-1", threshold=3, lockout_seconds=60).reason == "disabled"


def test_set_password_resets_failures(db_url):
    with vdb.session_scope(db_url) as db:
        add_account(db, "ivy", password="ivy-password-1")
        set_password(db, "ivy", "ivy-password-2")
    with vdb.session_scope(db_url) as db:
        assert check_login(db, "ivy", "ivy-password-2", threshold=3, lockout_seconds=60).ok


def test_state_databases_are_created_private(tmp_path):
    """A fresh SQLite database (and its WAL companions) is readable by the hub's user alone,
    whatever the umask; an existing world-readable one is tightened."""
    import os
    import stat

    from vre import db as vdb

    old = os.umask(0o022)
    try:
        url = f"sqlite:///{tmp_path / 'state' / 'vre.sqlite'}"
        vdb.upgrade(url)
    finally:
        os.umask(old)
    files = sorted((tmp_path / "state").iterdir())
    assert files and {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o600"}
    loose = tmp_path / "old.sqlite"
    loose.write_text("")
    loose.chmod(0o644)
    vdb.engine_for(f"sqlite:///{loose}")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_a_hub_login_follows_the_account_after_it_was_made(db_url, tmp_path):
    """``refresh_user`` (every ``auth_refresh_age`` s): a disabled or removed account's hub login
    ends; a changed role moves its hub groups (a demoted admin loses the hub's admin rights)."""
    import asyncio
    from types import SimpleNamespace

    from vre.auth import VREAuthenticator
    from vre.roles import ADMIN_GROUP, CHECKER_GROUP
    from vre.settings import Settings

    auth = VREAuthenticator(settings=Settings(state_dir=tmp_path, db_url=db_url))
    assert auth.auth_refresh_age == 60
    with vdb.session_scope(db_url) as db:
        add_account(db, "dora", role="admin", password="dora-password-1")
    dora = SimpleNamespace(name="dora")
    refresh = lambda: asyncio.run(auth.refresh_user(dora))  # noqa: E731
    assert refresh() == {"name": "dora", "groups": [ADMIN_GROUP]}
    with vdb.session_scope(db_url) as db:
        account = db.query(vdb.Account).filter_by(name="dora").one()
        account.role, account.output_checker = "researcher", True
    assert refresh() == {"name": "dora", "groups": [CHECKER_GROUP]}
    with vdb.session_scope(db_url) as db:
        db.query(vdb.Account).filter_by(name="dora").one().disabled = True
    assert refresh() is False
    assert asyncio.run(auth.refresh_user(SimpleNamespace(name="nobody"))) is False
