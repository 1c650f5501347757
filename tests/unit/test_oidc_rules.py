"""The OIDC login's rules without a provider: settings, LS Login entitlements, what claims mean
(roles, required group, MFA, separation of duties), the account sync and the client secret file."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import select

from vre import db as vdb
from vre.oidc import LoginRefused, decide, discover, entitlement_groups, read_client_secret, sync_account
from vre.settings import SettingsError, load

ISSUER = "https://login.example.org/oidc/"
OIDC = {"VRE_AUTH": "oidc", "VRE_OIDC_ISSUER": ISSUER, "VRE_OIDC_CLIENT_ID": "vre"}


def settings(**env):
    return load(environ={**OIDC, **{f"VRE_{k.upper()}": v for k, v in env.items()}})


@pytest.mark.parametrize("env, fragment", [
    ({"VRE_AUTH": "saml"}, "use 'local'"),
    ({"VRE_AUTH": "oidc"}, "needs oidc_issuer"),
    ({**OIDC, "VRE_OIDC_ISSUER": "http://login.example.org/"}, "use an https:// URL"),
    ({**OIDC, "VRE_OIDC_CLIENT_ID": ""}, "needs oidc_client_id"),
    ({**OIDC, "VRE_OIDC_SCOPES": "profile groups"}, "must include 'openid'"),
    ({**OIDC, "VRE_OIDC_USERNAME_CLAIM": "two words"}, "name of one claim"),
    ({**OIDC, "VRE_OIDC_GROUPS_CLAIM": "eduperson_entitlement", "VRE_OIDC_ENTITLEMENT_NAMESPACE": "eucaim"},
     "URN prefix"),
    ({**OIDC, "VRE_OIDC_ADMIN_GROUP": "staff", "VRE_OIDC_AUDITOR_GROUP": "staff"}, "separation of duties"),
    ({**OIDC, "VRE_OIDC_REQUIRE_MFA": "1", "VRE_OIDC_MFA_ACR": "", "VRE_OIDC_MFA_AMR": ""}, "both empty"),
    ({**OIDC, "VRE_JUPYTERHUB": '{"OIDCAuthenticator": {"client_secret": "s3cret"}}'}, "decided by the VRE"),
    ({**OIDC, "VRE_BIND_URL": "http://0.0.0.0:8000"}, "needs public_url"),
    ({"VRE_PUBLIC_URL": "https://vre.example.org/hub/"}, "no path"),
    ({"VRE_PUBLIC_URL": "vre.example.org"}, "no path"),
])
def test_bad_login_settings_say_what_to_fix(env, fragment):
    with pytest.raises(SettingsError) as e:
        load(environ=env)
    assert fragment in str(e.value)


def test_login_settings_defaults_and_loopback_issuer():
    assert load(environ={}).auth == "local"
    s = load(environ={**OIDC, "VRE_OIDC_ISSUER": "http://127.0.0.1:9000"})
    assert s.oidc_client_secret_path == s.secrets_dir / "oidc_client_secret"
    assert s.public_base == s.bind_url.rstrip("/")  # no public_url: people use bind_url
    s = load(environ={**OIDC, "VRE_BIND_URL": "http://0.0.0.0:8000", "VRE_PUBLIC_URL": "https://vre.example.org/"})
    assert s.public_base == "https://vre.example.org"  # where the provider sends people back


def test_entitlements_follow_aarc_g002_within_the_namespace():
    ns = "urn:geant:lifescience-ri.eu:group:"
    values = [
        "urn:geant:lifescience-ri.eu:group:eucaim#aai.lifescience-ri.eu",
        "urn:geant:lifescience-ri.eu:group:eucaim:vre-admins#aai.lifescience-ri.eu",
        "urn:geant:lifescience-ri.eu:group:eucaim:auditors:role=member#aai.lifescience-ri.eu",
        "urn:geant:lifescience-ri.eu:group:eucaim:checkers:role=manager#aai.lifescience-ri.eu",  # not membership
        "urn:geant:other.org:group:eucaim:vre-admins#other.org",  # another community's group of that name
        42,
    ]
    assert entitlement_groups(values, ns) == {"eucaim", "eucaim:vre-admins", "eucaim:auditors"}
    assert entitlement_groups(values[0], ns) == {"eucaim"}
    assert entitlement_groups(None, ns) == set()


def test_groups_map_to_roles_projects_and_checker():
    s = settings(oidc_admin_group="admins", oidc_auditor_group="auditors", oidc_checker_group="checkers",
                 oidc_project_group_prefix="project:")
    d = decide(s, {"sub": "x1", "preferred_username": "Olivia", "groups": ["project:lung", "project:", "checkers"]})
    assert (d.name, d.role, d.checker, d.projects) == ("olivia", "researcher", True, frozenset({"lung"}))
    assert d.subject == f"{ISSUER} x1"
    assert decide(s, {"sub": "x", "preferred_username": "a", "groups": ["admins"]}).role == "admin"
    assert decide(s, {"sub": "x", "preferred_username": "a", "groups": "auditors"}).role == "auditor"
    assert decide(settings(), {"sub": "x", "preferred_username": "a", "groups": ["admins"]}).projects is None


def test_lifescience_entitlements_decide_roles():
    s = settings(oidc_groups_claim="eduperson_entitlement", oidc_admin_group="eucaim:vre-admins",
                 oidc_required_group="eucaim")
    ns = "urn:geant:lifescience-ri.eu:group:"
    claims = {"sub": "abc@lifescience-ri.eu", "preferred_username": "olivia",
              "eduperson_entitlement": [f"{ns}eucaim#aai", f"{ns}eucaim:vre-admins#aai"]}
    assert decide(s, claims).role == "admin"
    claims["eduperson_entitlement"] = ["urn:geant:other.org:group:eucaim#x"]
    with pytest.raises(LoginRefused) as e:
        decide(s, claims)
    assert e.value.reason == "missing-group"


@pytest.mark.parametrize("env, claims, reason", [
    ({}, {"preferred_username": "a"}, "no-subject"),
    ({}, {"sub": "x", "preferred_username": "olivia@example.org"}, "invalid-name"),
    ({}, {"sub": "x"}, "invalid-name"),
    ({"oidc_required_group": "vre"}, {"sub": "x", "preferred_username": "a", "groups": ["other"]}, "missing-group"),
    ({"oidc_admin_group": "a", "oidc_auditor_group": "b"}, {"sub": "x", "preferred_username": "a", "groups": ["a", "b"]},
     "role-conflict"),
    ({"oidc_require_mfa": "1"}, {"sub": "x", "preferred_username": "a", "amr": ["pwd"], "acr": "sfa"}, "no-mfa"),
    ({"oidc_require_mfa": "1"}, {"sub": "x", "preferred_username": "a"}, "no-mfa"),
])
def test_refusals_name_their_reason(env, claims, reason):
    with pytest.raises(LoginRefused) as e:
        decide(settings(**env), claims)
    assert e.value.reason == reason and e.value.message


@pytest.mark.parametrize("claims", [{"amr": ["pwd", "mfa"]}, {"amr": "mfa"}, {"acr": "https://refeds.org/profile/mfa"}])
def test_mfa_shown_by_acr_or_amr_passes(claims):
    assert decide(settings(oidc_require_mfa="1"), {"sub": "x", "preferred_username": "a", **claims}).name == "a"


def test_sync_account_binds_the_identity_and_follows_the_provider(tmp_path):
    from vre import projects

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    s = settings(oidc_admin_group="admins", oidc_project_group_prefix="p:")
    with vdb.session_scope(url) as db:
        projects.create_project(db, "lung", "Lung")
        from vre.accounts import add_account

        add_account(db, "bob", password="bob-password-1")
    with vdb.session_scope(url) as db:
        account, changes = sync_account(db, decide(s, {"sub": "s1", "preferred_username": "ann",
                                                          "groups": ["admins", "p:lung", "p:nowhere"]}))
        assert changes == ["created", "member_add lung"] and account.role == "admin" and account.password_hash == ""
    with vdb.session_scope(url) as db:
        account, changes = sync_account(db, decide(s, {"sub": "s1", "preferred_username": "ann", "groups": []}))
        assert changes == ["role admin -> researcher", "member_remove lung"]
        _, changes = sync_account(db, decide(s, {"sub": "s1", "preferred_username": "ann", "groups": []}))
        assert changes == []
    for claims, reason in [({"sub": "s2", "preferred_username": "ann"}, "name-taken"),   # another person
                           ({"sub": "s9", "preferred_username": "bob"}, "name-taken"),   # a local account
                           ({"sub": "s1", "preferred_username": "anna"}, "name-changed")]:
        with vdb.session_scope(url) as db, pytest.raises(LoginRefused) as e:
            sync_account(db, decide(s, claims))
        assert e.value.reason == reason
    with vdb.session_scope(url) as db:
        db.scalar(select(vdb.Account).where(vdb.Account.name == "ann")).disabled = True
    with vdb.session_scope(url) as db, pytest.raises(LoginRefused) as e:
        sync_account(db, decide(s, {"sub": "s1", "preferred_username": "ann"}))
    assert e.value.reason == "disabled"


def test_client_secret_file_must_be_root_only(tmp_path):
    path = tmp_path / "secret"
    with pytest.raises(SystemExit, match="does not exist"):
        read_client_secret(path)
    path.write_text("s3cret\n")
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        with pytest.raises(SystemExit, match="readable by root alone"):
            read_client_secret(path)
        os.chmod(path, 0o600)
        assert read_client_secret(path) == "s3cret"
    else:
        with pytest.raises(SystemExit, match="must belong to root"):
            read_client_secret(path)


def test_discovery_refuses_another_issuer():
    class Meta(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"issuer": "http://127.0.0.1:1/evil", "authorization_endpoint": "x",
                               "token_endpoint": "y"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Meta)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(SystemExit, match="names the issuer"):
            discover(issuer)
    finally:
        server.shutdown()
    with pytest.raises(SystemExit, match="cannot read"):
        discover("http://127.0.0.1:1", timeout=2)


def test_id_tokens_are_verified_against_the_providers_keys():
    """Signature (the provider's published key), audience, issuer and expiry: a token signed by
    anyone else, or for another client, is refused."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from vre.oidc import id_token_claims

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, iss = f"http://127.0.0.1:{server.server_port}/jwks", "http://127.0.0.1:1"
    claims = {"sub": "ann", "aud": "vre", "iss": iss, "exp": int(time.time()) + 60, "amr": ["mfa"]}

    def token(signer=key, **changes):
        return jwt.encode({**claims, **changes}, signer, algorithm="RS256", headers={"kid": "k1"})

    try:
        check = dict(client_id="vre", issuer=iss, jwks_url=url)
        assert id_token_claims(token(), **check)["amr"] == ["mfa"]
        for bad in (token(other), token(aud="another-client"), token(iss="http://evil"),
                    token(exp=int(time.time()) - 60)):
            with pytest.raises(jwt.PyJWTError):
                id_token_claims(bad, **check)
    finally:
        server.shutdown()


def test_an_account_made_before_the_first_login_is_bound_to_it(tmp_path):
    """`vre user add NAME --oidc`: no password (no local login), a project can take the person
    before they come; their first login under that name binds the account to their identity,
    and nobody else's login takes it afterwards."""
    from vre import projects
    from vre.accounts import add_account, check_login
    from vre.errors import VREError

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    s = settings()  # memberships by the CLI (no project group prefix)
    with vdb.session_scope(url) as db:
        projects.create_project(db, "lung", "Lung")
        account, generated = add_account(db, "carl", oidc=True)
        assert generated is None and account.password_hash == "" and account.oidc_subject is None
        projects.add_member(db, "lung", "carl")
        with pytest.raises(VREError, match="no password"):
            add_account(db, "dora", password="dora-password-1", oidc=True)
    with vdb.session_scope(url) as db:
        assert not check_login(db, "carl", "", threshold=5, lockout_seconds=60).ok
    with vdb.session_scope(url) as db:
        account, changes = sync_account(db, decide(s, {"sub": "s5", "preferred_username": "carl"}))
        assert changes == ["bound"] and account.oidc_subject == f"{ISSUER} s5"
        assert [m.project.slug for m in account.memberships] == ["lung"]  # kept: the CLI's call
    with vdb.session_scope(url) as db:
        add_account(db, "erik", oidc=True)
    for claims, reason in [({"sub": "s6", "preferred_username": "carl"}, "name-taken"),     # someone else
                           ({"sub": "s5", "preferred_username": "erik"}, "name-changed")]:  # carl, renamed
        with vdb.session_scope(url) as db, pytest.raises(LoginRefused) as e:
            sync_account(db, decide(s, claims))
        assert e.value.reason == reason
