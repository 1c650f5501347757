"""The second factor of local accounts on the real hub (``totp_roles = "admin auditor"``, the
default): enrolment at the first login, codes at every login, no replay, recovery codes, lockout,
the admin's reset, and the audit trail."""

import json
import re
import time

import pytest
from hubclient import HubClient

from vre import totp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(make_hub):
    return make_hub("totp", VRE_TOTP_ROLES="admin auditor")


def post_login(c: HubClient, password: str, otp: str = ""):
    c.http.get(f"{c.base}/hub/login", timeout=10)
    xsrf = next((k.value for k in c.http.cookies if k.name == "_xsrf" and k.path == "/hub/"), "")
    return c.http.post(f"{c.base}/hub/login", timeout=20,
                       data={"username": c.username, "password": password, "otp": otp, "_xsrf": xsrf})


def enrol(hub, name: str) -> tuple[str, list[str]]:
    """First login: the enrolment page; its key into the 'app'; the code back; the recovery codes."""
    c = HubClient(hub.url, name)
    r = post_login(c, hub.passwords[name])
    assert r.status_code == 200 and 'id="totp-qr"' in r.text and "<svg" in r.text, r.text[:800]
    assert not c.logged_in()
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text).group(1)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    r = c.http.post(f"{hub.url}/hub/totp-enrol", data={"code": "000000", "_xsrf": xsrf}, timeout=20)
    assert r.status_code == 400 and "does not match" in r.text  # a wrong code: the page again, with why
    r = c.http.post(f"{hub.url}/hub/totp-enrol", timeout=20,
                    data={"code": totp.code_at(secret, int(time.time() // 30)), "_xsrf": xsrf})
    assert r.status_code == 200, r.text[:800]
    codes = re.search(r'<pre id="recovery-codes">(.*?)</pre>', r.text, re.S).group(1).split()
    assert len(codes) == 10
    return secret, codes


def audit(hub, action: str, user: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--json", "--action", action, "--user", user).stdout)


def wait_next_step() -> int:
    """The next time step (a code is accepted once: a second login needs a new one)."""
    step = int(time.time() // 30)
    while int(time.time() // 30) == step:
        time.sleep(0.5)
    return step + 1


def test_admin_enrols_then_logs_in_with_codes_and_recovery_codes(hub):
    secret, codes = enrol(hub, "admin")
    assert len(audit(hub, "auth.mfa_enrol", "admin")) == 1
    c = HubClient(hub.url, "admin")
    post_login(c, hub.passwords["admin"])  # the password alone
    assert not c.logged_in()
    assert audit(hub, "auth.login_failed", "admin")[-1]["details"]["reason"] == "bad-otp"
    step = wait_next_step()  # the enrolment used the previous step's code
    code = totp.code_at(secret, step)
    post_login(c, hub.passwords["admin"], code)
    assert c.logged_in()
    assert audit(hub, "auth.login", "admin")[-1]["details"]["second_factor"] == "totp"
    other = HubClient(hub.url, "admin")
    post_login(other, hub.passwords["admin"], code)  # the same code again, from another browser
    assert not other.logged_in()
    post_login(other, hub.passwords["admin"], codes[0])
    assert other.logged_in()
    assert audit(hub, "auth.login", "admin")[-1]["details"]["second_factor"] == "recovery"
    third = HubClient(hub.url, "admin")
    post_login(third, hub.passwords["admin"], codes[0])  # each recovery code works once
    assert not third.logged_in()
    hub.vre("user", "unlock", "admin")


def test_wrong_codes_lock_the_account_and_the_admin_reset_starts_over(hub):
    secret, _codes = enrol(hub, "auditor")
    c = HubClient(hub.url, "auditor")
    for _ in range(3):  # the test hub locks after 3 failures
        post_login(c, hub.passwords["auditor"], "123456" if totp.code_at(secret, int(time.time() // 30)) != "123456"
                   else "654321")
    assert "locked" in hub.vre("user", "list").stdout
    wait_next_step()
    post_login(c, hub.passwords["auditor"], totp.code_at(secret, int(time.time() // 30)))
    assert not c.logged_in(), "a locked account refuses even the right password and code"
    hub.vre("user", "unlock", "auditor")
    hub.vre("user", "reset-mfa", "auditor")
    resets = json.loads(hub.vre("audit", "query", "--json", "--action", "auth.mfa_reset").stdout)
    assert [e["target"] for e in resets] == ["user/auditor"]
    r = post_login(HubClient(hub.url, "auditor"), hub.passwords["auditor"])
    assert 'id="totp-qr"' in r.text  # set up again


def test_researchers_log_in_with_a_password_alone(hub):
    c = HubClient(hub.url, "alice")
    post_login(c, hub.passwords["alice"])
    assert c.logged_in()
