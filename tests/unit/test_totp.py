"""The second factor of local accounts: RFC 6238 codes, replay, recovery codes, and the login
rules around them (lockout counts wrong codes; a known password does not clear the count)."""

import time

import pytest

from vre import db as vdb
from vre import totp
from vre.accounts import add_account, check_login, enrol_totp, reset_mfa
from vre.errors import VREError

RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890" (RFC 6238 appendix B)


@pytest.mark.parametrize("t, code", [(59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"),
                                     (2000000000, "69279037")])
def test_rfc6238_sha1_vectors(t, code):
    assert totp.code_at(RFC_SECRET, t // 30, digits=8) == code


def test_codes_verify_within_one_step_once():
    secret, now = totp.new_secret(), 1_800_000_000
    step = now // 30
    assert totp.verify(secret, totp.code_at(secret, step), None, now=now) == step
    assert totp.verify(secret, totp.code_at(secret, step - 1), None, now=now) == step - 1   # clock skew
    assert totp.verify(secret, totp.code_at(secret, step - 2), None, now=now) is None       # too old
    assert totp.verify(secret, totp.code_at(secret, step), step, now=now) is None           # replayed
    assert totp.verify(secret, "12345", None, now=now) is None and totp.verify(secret, "", None) is None


def test_recovery_codes_work_once():
    codes, digests = totp.new_recovery_codes()
    assert len(set(codes)) == len(codes) == 10
    left = totp.use_recovery_code(digests, codes[3].upper())
    assert left is not None and len(left) == 9
    assert totp.use_recovery_code(left, codes[3]) is None
    assert totp.use_recovery_code(left, "aaaaa-bbbbb") is None


def test_qr_code_carries_the_provisioning_uri():
    uri = totp.provisioning_uri("ABC", "ann", "VRE vre")
    assert uri.startswith("otpauth://totp/VRE%20vre%3Aann?secret=ABC&issuer=VRE+vre")
    assert totp.qr_svg(uri).startswith("<svg")


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    with vdb.session_scope(url) as db:
        add_account(db, "ada", role="admin", password="ada-password-1")
    return url


def login(url, otp="", password="ada-password-1"):
    with vdb.session_scope(url) as db:
        r = check_login(db, "ada", password, threshold=3, lockout_seconds=60, otp=otp, mfa_roles=["admin"])
        return r.ok, r.reason, r.second_factor


def enrol(url):
    secret = totp.new_secret()
    with vdb.session_scope(url) as db:
        with pytest.raises(VREError, match="does not match"):
            enrol_totp(db, "ada", secret, "000000" if totp.code_at(secret, 0) != "000000" else "111111")
    with vdb.session_scope(url) as db:
        codes = enrol_totp(db, "ada", secret, totp.code_at(secret, int(time.time() // 30) - 1))
    return secret, codes


def test_required_role_must_enrol_then_give_a_code(url):
    assert login(url) == (False, "mfa-enrol", None)
    assert login(url, password="wrong-password") == (False, "bad-credentials", None)
    secret, codes = enrol(url)
    with vdb.session_scope(url) as db, pytest.raises(VREError, match="already has a second factor"):
        enrol_totp(db, "ada", secret, "123456")
    assert login(url) == (False, "bad-otp", None)
    assert login(url, totp.code_at(secret, int(time.time() // 30))) == (True, "ok", "totp")
    assert login(url, codes[0]) == (True, "ok", "recovery")
    assert login(url, codes[0])[1] == "bad-otp"  # used up


def test_wrong_codes_lock_the_account_even_with_the_right_password(url):
    enrol(url)
    assert login(url, "000001")[1] == "bad-otp"
    assert login(url, "000002")[1] == "bad-otp"
    assert login(url, "000003")[1] == "locked"  # the third failure in a row: the right password never reset it


def test_admin_reset_asks_for_a_new_enrolment(url):
    enrol(url)
    with vdb.session_scope(url) as db:
        reset_mfa(db, "ada")
    assert login(url) == (False, "mfa-enrol", None)


def test_roles_without_the_requirement_log_in_with_a_password(url):
    with vdb.session_scope(url) as db:
        add_account(db, "rex", password="rex-password-1")
        r = check_login(db, "rex", "rex-password-1", threshold=3, lockout_seconds=60, otp="", mfa_roles=["admin"])
    assert r.ok and r.second_factor is None
