"""A real OpenID Connect provider on loopback (tests/oidc/provider.mjs: npm oidc-provider 8.8)
and a hub that logs in through it (``auth = "oidc"``), for the integration and browser tests.

Test modules use the fixture by importing it: ``from oidcprovider import oidc  # noqa: F401``.

No TLS: oauthenticator's HTTP client (tornado) talks plain http to a loopback issuer, and the
VRE's settings allow http only for a loopback issuer (production issuers must be https), so the
tests need no throwaway CA.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

HERE = Path(__file__).resolve().parent / "oidc"
MFA = "https://refeds.org/profile/mfa"

#: The provider's people: groups decide roles, ``sam`` logs in with one factor only, ``nina`` is
#: not in the VRE's required group. Tests change groups with ``provider.set_groups``.
ACCOUNTS = {
    "olivia": {"groups": ["vre-users", "vre-project:prostate-ai"]},
    "oscar": {"groups": ["vre-users", "vre-admins"]},
    "audrey": {"groups": ["vre-users", "vre-auditors", "vre-checkers"]},
    "carl": {"groups": ["vre-users"]},
    "nina": {"groups": ["other-community"]},
    "sam": {"groups": ["vre-users"], "amr": ["pwd"], "acr": "https://refeds.org/profile/sfa"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Provider:
    """The provider process, its accounts file (read at every login) and the client's secret."""

    def __init__(self, base: Path, hub_url: str):
        self.dir = base
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id = "vre-test"
        self.secret_file = self.dir / "client_secret"
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # root-only, as the hub requires
        os.write(fd, secrets.token_hex(24).encode())
        os.close(fd)
        self.accounts_file = self.dir / "accounts.json"
        self.accounts = {name: {"password": f"{name}-pw-{secrets.token_hex(4)}", "amr": ["pwd", "otp"], "acr": MFA,
                                **a} for name, a in ACCOUNTS.items()}
        self._write()
        self.config = self.dir / "config.json"
        self.config.write_text(json.dumps({
            "port": self.port, "accounts": str(self.accounts_file), "client_id": self.client_id,
            "client_secret_file": str(self.secret_file), "redirect_uri": f"{hub_url}/hub/oauth_callback",
            "post_logout_redirect_uri": f"{hub_url}/hub/login"}))
        self.log = self.dir / "provider.log"
        self.proc: subprocess.Popen | None = None

    def _write(self) -> None:
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.accounts))
        tmp.replace(self.accounts_file)

    def set_groups(self, name: str, groups: list[str]) -> None:
        """A change at the provider (an admin there edits the person's groups)."""
        self.accounts[name]["groups"] = groups
        self._write()

    def password(self, name: str) -> str:
        return self.accounts[name]["password"]

    def start(self) -> None:
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("tests/oidc/node_modules is missing: run scripts/setup --test (it installs the test provider)")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([shutil.which("node") or "node", str(HERE / "provider.mjs"), str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=HERE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the test OIDC provider exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"the test OIDC provider did not answer within 30 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def hub_env(self) -> dict[str, str]:
        return {
            "VRE_AUTH": "oidc",
            "VRE_OIDC_ISSUER": self.issuer,
            "VRE_OIDC_CLIENT_ID": self.client_id,
            "VRE_OIDC_CLIENT_SECRET_FILE": str(self.secret_file),
            "VRE_OIDC_LOGIN_SERVICE": "Test IdP",
            "VRE_OIDC_SCOPES": "openid profile groups",
            "VRE_OIDC_REQUIRED_GROUP": "vre-users",
            "VRE_OIDC_ADMIN_GROUP": "vre-admins",
            "VRE_OIDC_AUDITOR_GROUP": "vre-auditors",
            "VRE_OIDC_CHECKER_GROUP": "vre-checkers",
            "VRE_OIDC_PROJECT_GROUP_PREFIX": "vre-project:",
            "VRE_OIDC_REQUIRE_MFA": "1",
        }


@pytest.fixture(scope="module")
def oidc(make_hub, tmp_path_factory):
    """(hub, provider): a hub whose login is the provider's; one per test module."""
    hub = make_hub("oidc", started=False)
    base = tmp_path_factory.mktemp("oidc")
    provider = Provider(base, hub.url)
    provider.start()
    try:
        hub.env.update(provider.hub_env())
        hub.start()
        yield hub, provider
    finally:
        provider.stop()


# --- the browser's part, with requests (the integration tests) ------------------------------
_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)


def login(hub_url: str, user: str, password: str, http: requests.Session | None = None):
    """A browser's OIDC login: the hub sends it to the provider, the provider's login form is
    posted, the provider sends it back to the hub's callback. Returns (session, last response)."""
    http = http or requests.Session()
    r = http.get(f"{hub_url}/hub/oauth_login?next=/hub/home", timeout=30)
    if "/interaction/" in r.url and 'name="password"' in r.text:
        action = urljoin(r.url, unescape(_FORM.search(r.text).group(1)))
        r = http.post(action, data={"login": user, "password": password}, timeout=30)
    return http, r


def logout(hub_url: str, http: requests.Session) -> requests.Response:
    """The hub's logout, which goes on to the provider's end of session (confirmed, as a person does)."""
    r = http.get(f"{hub_url}/hub/logout", timeout=30)
    m = re.search(r'<form[^>]*id="op.logoutForm"[^>]*>', r.text) or _FORM.search(r.text)
    if m and "/session/end" in r.url:
        action = re.search(r'action="([^"]+)"', m.group(0)).group(1)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', r.text)
        r = http.post(urljoin(r.url, unescape(action)), timeout=30,
                      data={"logout": "yes", **({"xsrf": xsrf.group(1)} if xsrf else {})})
    return r


def whoami(hub_url: str, http: requests.Session) -> dict | None:
    """The hub's model of the logged-in user (name, groups), None when not logged in."""
    xsrf = next((c.value for c in http.cookies if c.name == "_xsrf" and c.path == "/hub/"), "")
    r = http.get(f"{hub_url}/hub/api/user", headers={"X-XSRFToken": xsrf, "Referer": f"{hub_url}/hub/"}, timeout=10)
    return r.json() if r.status_code == 200 else None
