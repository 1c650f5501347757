"""Login through an OpenID Connect provider (Life Science Login, Keycloak): ``auth = "oidc"``.

The provider says who someone is and which groups they are in; the VRE decides, at every login,
what that means here: the account (created at the first login with the same host identity a
local account gets: ``uid_base + account id``), its role (admin, auditor, output checker) and,
where configured, its project memberships. A group removed at the provider is a role removed at
the next login. Refusals (a required group or MFA missing, separation of duties, a name taken by
another identity) answer a page that says why, and are audited like a wrong password
(``auth.login_failed`` with the reason); successes are ``auth.login``, as for local accounts.

The pure part (``decide``, ``entitlement_groups``) is unit-tested; the authenticator glues it to
oauthenticator's ``GenericOAuthenticator`` (the OAuth dance, the token and userinfo requests).
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web
from traitlets import Instance, List, Unicode, default

from . import db as vdb
from .audit.events import aemit
from .auth import LOGGED_OUT
from .roles import groups_for
from .settings import Settings, load


class LoginRefused(Exception):
    """A login the VRE refuses: ``reason`` is the audit record's short word, ``message`` the page's."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# --- claims to a decision (pure) ------------------------------------------------------------
def entitlement_groups(values, namespace: str) -> set[str]:
    """Group names from ``eduperson_entitlement`` URNs (AARC-G002) under ``namespace``.

    ``<namespace><group>[:<subgroup>...][:role=<role>][#<authority>]`` is the group
    ``<group>[:<subgroup>...]`` when it has no role or ``role=member``; URNs of other namespaces
    (other communities' groups, which might share a name) and managerial roles never count.
    """
    groups = set()
    for value in values if isinstance(values, list) else [values] if isinstance(values, str) else []:
        if not isinstance(value, str) or not value.startswith(namespace):
            continue
        rest = value[len(namespace):].split("#", 1)[0]
        name, _, role = rest.partition(":role=")
        if name and role in ("", "member"):
            groups.add(name)
    return groups


def claim_groups(settings: Settings, claims: dict) -> set[str]:
    """The user's groups from the configured claim: a list of names, or LS Login's entitlements."""
    value = claims.get(settings.oidc_groups_claim)
    if settings.oidc_groups_claim == "eduperson_entitlement":
        return entitlement_groups(value, settings.oidc_entitlement_namespace)
    if isinstance(value, str):
        value = [value]
    return {g for g in value or [] if isinstance(g, str) and g}


def has_mfa(settings: Settings, claims: dict) -> bool:
    """Whether the ID token's ``acr`` or ``amr`` shows multi-factor authentication."""
    amr = claims.get("amr") or []
    amr = [amr] if isinstance(amr, str) else amr
    return (claims.get("acr") in settings.oidc_mfa_acr.split()
            or any(a in settings.oidc_mfa_amr.split() for a in amr if isinstance(a, str)))


@dataclass(frozen=True)
class Decision:
    name: str
    subject: str            # "<issuer> <sub>": the identity the account is bound to
    role: str               # researcher, admin or auditor
    checker: bool
    #: projects the user is a member of by group; None: memberships are not managed by the provider
    projects: frozenset[str] | None
    groups: frozenset[str] = field(default_factory=frozenset)


def decide(settings: Settings, claims: dict) -> Decision:
    """What a login with these (verified) claims means in the VRE, or LoginRefused saying why not."""
    from .accounts import NAME_RE

    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise LoginRefused("no-subject", "The identity provider sent no subject ('sub') for this login.")
    raw = claims.get(settings.oidc_username_claim)
    name = raw.strip().lower() if isinstance(raw, str) else ""
    if not NAME_RE.match(name):
        raise LoginRefused("invalid-name", f"The identity provider's {settings.oidc_username_claim!r} for this login "
                           f"({raw!r}) is not a valid VRE user name (1-32 lowercase letters, digits, '-' or '_', "
                           "starting with a letter). Ask the VRE's administrators.")
    groups = claim_groups(settings, claims)
    if settings.oidc_required_group and settings.oidc_required_group not in groups:
        raise LoginRefused("missing-group", f"Your account is not in the group {settings.oidc_required_group!r} that "
                           "this VRE requires. Ask your project's manager to add you at the identity provider.")
    if settings.oidc_require_mfa and not has_mfa(settings, claims):
        raise LoginRefused("no-mfa", "This VRE requires multi-factor login, and the identity provider reports a "
                           "login with one factor. Log in again with your second factor (e.g. an authenticator "
                           "app or security key) at the identity provider.")
    admin = bool(settings.oidc_admin_group) and settings.oidc_admin_group in groups
    auditor = bool(settings.oidc_auditor_group) and settings.oidc_auditor_group in groups
    if admin and auditor:
        raise LoginRefused("role-conflict", "Your account is in both the admin and the auditor group; the VRE keeps "
                           "these duties apart. Ask for one of the two groups to be removed.")
    projects = None
    if settings.oidc_project_group_prefix:
        prefix = settings.oidc_project_group_prefix
        projects = frozenset(g[len(prefix):] for g in groups if g.startswith(prefix) and len(g) > len(prefix))
    return Decision(name=name, subject=f"{settings.oidc_issuer} {sub}",
                    role="admin" if admin else "auditor" if auditor else "researcher",
                    checker=bool(settings.oidc_checker_group) and settings.oidc_checker_group in groups,
                    projects=projects, groups=frozenset(groups))


def sync_account(db, decision: Decision) -> tuple[object, list[str]]:
    """Make the VRE account match ``decision``; returns the account and what changed (for the
    audit trail). The caller commits. Refuses disabled accounts and names bound to another
    identity or kept by a local account (a provider must not take over a local admin's name)."""
    from sqlalchemy import select

    from . import projects as vprojects
    from .db import Account

    account = db.scalar(select(Account).where(Account.name == decision.name))
    changes: list[str] = []
    if account is None:
        if db.scalar(select(Account).where(Account.oidc_subject == decision.subject)) is not None:
            raise LoginRefused("name-changed", "Your identity already has a VRE account under another name; the "
                               "name the identity provider sends changed. Ask the VRE's administrators.")
        account = Account(name=decision.name, role=decision.role, password_hash="", oidc_subject=decision.subject,
                          output_checker=decision.checker)
        db.add(account)
        db.flush()
        changes.append("created")
    elif account.oidc_subject is None and not account.password_hash:
        # made with `vre user add --oidc` for this person's first login: bound to them now
        if db.scalar(select(Account).where(Account.oidc_subject == decision.subject)) is not None:
            raise LoginRefused("name-changed", "Your identity already has a VRE account under another name. Ask "
                               "the VRE's administrators.")
        account.oidc_subject = decision.subject
        changes.append("bound")
    elif account.oidc_subject != decision.subject:
        raise LoginRefused("name-taken", f"The VRE user name {decision.name!r} belongs to another account. Ask the "
                           "VRE's administrators.")
    if account.disabled:
        raise LoginRefused("disabled", "Your VRE account is disabled. Ask the VRE's administrators.")
    if account.role != decision.role:
        changes.append(f"role {account.role} -> {decision.role}")
        account.role = decision.role
    if bool(account.output_checker) != decision.checker:
        changes.append(f"output_checker {bool(account.output_checker)} -> {decision.checker}")
        account.output_checker = decision.checker
    if decision.projects is not None:
        wanted = set(decision.projects) if account.role != "auditor" else set()  # auditors join no project
        have = {m.project.slug for m in account.memberships}
        for slug in sorted(have - wanted):
            vprojects.remove_member(db, slug, account.name)
            changes.append(f"member_remove {slug}")
        for slug in sorted(wanted - have):
            try:
                vprojects.get_project(db, slug)
            except Exception:  # noqa: BLE001 - a group for a project this VRE does not have
                continue
            vprojects.add_member(db, slug, account.name)
            changes.append(f"member_add {slug}")
    db.flush()
    return account, changes


# --- the provider's configuration and the client secret -----------------------------------
def discover(issuer: str, timeout: float = 10) -> dict:
    """The provider's ``/.well-known/openid-configuration``; SystemExit with what to fix when it
    cannot be read or names another issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - https, or http on loopback
            meta = json.load(r)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"[vre] OIDC: cannot read {url} ({e}); check oidc_issuer and that the provider is up")
    if meta.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise SystemExit(f"[vre] OIDC: {url} names the issuer {meta.get('issuer')!r}, not {issuer!r}; set "
                         "oidc_issuer to the provider's issuer exactly")
    missing = [k for k in ("authorization_endpoint", "token_endpoint") if not meta.get(k)]
    if missing:
        raise SystemExit(f"[vre] OIDC: the provider's configuration lacks {', '.join(missing)}")
    return meta


def read_client_secret(path: Path) -> str:
    """The client secret from its root-only file; SystemExit saying what to fix otherwise."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SystemExit(f"[vre] OIDC: the client secret file {path} does not exist; write the secret the provider "
                         f"gave you there (install -m 600 -o root /dev/stdin {path}), or set oidc_client_secret_file")
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        raise SystemExit(f"[vre] OIDC: the client secret file {path} must belong to root and be readable by root "
                         f"alone (chown root {path}; chmod 600 {path})")
    secret = path.read_text().strip()
    if not secret:
        raise SystemExit(f"[vre] OIDC: the client secret file {path} is empty")
    return secret


def configure(c, settings: Settings) -> None:
    """Hub configuration for ``auth = "oidc"`` (called by hubconfig)."""
    meta = discover(settings.oidc_issuer)
    c.JupyterHub.authenticator_class = OIDCAuthenticator
    a = c.OIDCAuthenticator
    a.settings = settings
    a.client_id = settings.oidc_client_id
    a.client_secret = read_client_secret(settings.oidc_client_secret_path)
    a.authorize_url = meta["authorization_endpoint"]
    a.token_url = meta["token_endpoint"]
    if meta.get("userinfo_endpoint"):
        a.userdata_url = meta["userinfo_endpoint"]
    a.token_issuer = meta["issuer"]
    if meta.get("jwks_uri"):
        a.jwks_url = meta["jwks_uri"]
    print(f"[vre] OIDC login at {meta['issuer']}; ID tokens verified with the keys at "
          f"{meta.get('jwks_uri') or '(none published: audience, issuer and expiry only)'}", file=sys.stderr)
    algorithms = [x for x in meta.get("id_token_signing_alg_values_supported", ["RS256"]) if x != "none"]
    a.id_token_algorithms = algorithms or ["RS256"]
    a.oauth_callback_url = settings.public_base + "/hub/oauth_callback"
    a.scope = settings.oidc_scopes.split()
    a.username_claim = settings.oidc_username_claim
    a.login_service = settings.oidc_login_service
    if settings.oidc_require_mfa and settings.oidc_mfa_acr.split():
        # ask for it up front: providers that can step up (Keycloak, LS Login) then ask for the second factor
        a.extra_authorize_params = {"acr_values": settings.oidc_mfa_acr}
    if meta.get("end_session_endpoint"):
        # Logging out of the VRE also ends the provider's session (RP-initiated logout), so the
        # next person at this browser logs in as themselves.
        a.logout_redirect_url = meta["end_session_endpoint"] + "?" + urlencode(
            {"client_id": settings.oidc_client_id,
             "post_logout_redirect_uri": settings.public_base + "/hub/login"})


# --- the authenticator ----------------------------------------------------------------------
_JWKS: dict[str, object] = {}


def id_token_claims(token: str | None, *, client_id: str, issuer: str, jwks_url: str = "",
                    algorithms: list[str] | None = None) -> dict:
    """The ID token's claims, its signature checked against the provider's published keys
    (``jwks_uri``, cached), and its audience, issuer and expiry. Blocking (the key fetch): run it
    in a thread. A provider without ``jwks_uri`` gets the check OIDC Core 3.1.3.7 allows for a
    token taken straight from the token endpoint over TLS: audience, issuer and expiry only."""
    import jwt

    if not token:
        return {}
    options = {"verify_aud": True, "verify_exp": True, "verify_iss": True}
    if not jwks_url:
        return jwt.decode(token, audience=client_id, issuer=issuer, options={**options, "verify_signature": False})
    client = _JWKS.get(jwks_url) or _JWKS.setdefault(jwks_url, jwt.PyJWKClient(jwks_url, lifespan=300, timeout=10))
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=algorithms or ["RS256"], audience=client_id, issuer=issuer,
                      options=options)


class OIDCLogoutHandler(OAuthLogoutHandler):
    """oauthenticator's logout (on to the provider's end of session), keeping who logged out for
    the audit record (``auth.logout``, as for local accounts)."""

    async def handle_logout(self):
        setattr(self, LOGGED_OUT, self.current_user)
        await super().handle_logout()


class OIDCAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator whose claims decide the VRE account, its role and memberships at
    every login (``vre.oidc.decide``), with the VRE's audit events."""

    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")
    jwks_url = Unicode("", config=True, help="The provider's signing keys (discovery's jwks_uri): ID tokens are "
                                             "verified against them.")
    token_issuer = Unicode("", config=True, help="The issuer ID tokens must name (discovery's issuer, exactly).")
    id_token_algorithms = List(Unicode(), ["RS256"], config=True,
                               help="Signature algorithms accepted for ID tokens (discovery's list).")
    logout_handler = OIDCLogoutHandler

    @default("settings")
    def _settings_default(self):
        return load()

    @default("manage_groups")
    def _manage_groups_default(self):
        return True  # hub groups carry the VRE roles (vre.roles), set at every login

    @default("allow_all")
    def _allow_all_default(self):
        return False

    @default("enable_pkce")
    def _pkce_default(self):
        return True

    def user_info_to_username(self, user_info):
        # a missing or invalid name is refused by decide() with a page that says so
        value = user_info.get(self.username_claim)
        return value if isinstance(value, str) and value else "-"

    async def token_to_user(self, token_info):
        """Userinfo (groups) merged with the ID token (acr, amr are only there); ``sub`` must agree."""
        try:
            id_claims = await asyncio.to_thread(
                id_token_claims, token_info.get("id_token"), client_id=self.client_id,
                issuer=self.token_issuer or self.settings.oidc_issuer, jwks_url=self.jwks_url, algorithms=self.id_token_algorithms)
        except Exception as e:  # noqa: BLE001 - a forged, expired or foreign token: refused, and said why
            raise web.HTTPError(403, f"The identity provider's ID token could not be verified ({e}).",
                                reason="Login refused") from None
        info = await super().token_to_user(token_info) if self.userdata_url else {}
        if id_claims and info.get("sub") and info["sub"] != id_claims.get("sub"):
            raise web.HTTPError(403, "The identity provider's userinfo and ID token disagree about who you are.")
        return {**id_claims, **info, **{k: id_claims[k] for k in ("acr", "amr", "sub") if k in id_claims}}

    async def get_user_groups(self, auth_state):
        return set()  # replaced by the VRE's groups in authenticate (groups_for)

    async def authenticate(self, handler, data=None, **kwargs):
        client = handler.request.remote_ip if handler else None
        try:
            model = await super().authenticate(handler, data, **kwargs)
        except Exception as e:  # the code exchange or the userinfo request failed: recorded, then the error page
            await aemit(self.settings, "auth.login_failed", actor="(unknown)", actor_role="anonymous", client=client,
                        outcome="denied", details={"via": "oidc", "reason": "provider-error",
                                                   "error": f"{type(e).__name__}: {e}"[:300]})
            raise
        claims = model["auth_state"][self.user_auth_state_key]
        shown = claims.get(self.username_claim)
        actor = shown.strip().lower() if isinstance(shown, str) and shown.strip() else "(unknown)"
        details = {"via": "oidc", "acr": claims.get("acr"), "amr": claims.get("amr")}
        try:
            decision = decide(self.settings, claims)
            account_role, changes = await asyncio.to_thread(self._sync, decision)
        except LoginRefused as e:
            self.log.warning("OIDC login refused for %r from %s (%s)", actor, client, e.reason)
            await aemit(self.settings, "auth.login_failed", actor=actor[:64], actor_role="anonymous",
                        client=client, target=f"user/{actor[:64]}", outcome="denied",
                        details={**details, "reason": e.reason})
            raise web.HTTPError(403, e.message, reason="Login refused") from None
        audit = dict(actor=decision.name, actor_role=account_role, client=client, target=f"user/{decision.name}")
        if changes:
            action = "user.create" if changes[0] == "created" else "user.update"
            # the provider decided these changes, not the user: the actor is the system, the issuer in details
            await aemit(self.settings, action, actor="system", actor_role="system", target=f"user/{decision.name}",
                        details={"via": "oidc", "issuer": self.settings.oidc_issuer, "changes": changes,
                                 "role": decision.role, "output_checker": decision.checker})
        await aemit(self.settings, "auth.login", details=details, **audit)
        # auth_state (the provider's tokens) is not kept: the VRE needs none of them after login
        return {"name": decision.name, "admin": False, "groups": groups_for(decision.role, decision.checker)}

    def _sync(self, decision: Decision) -> tuple[str, list[str]]:
        with vdb.session_scope(self.settings.vre_db_url) as db:
            account, changes = sync_account(db, decision)
            return account.role, changes

    async def check_allowed(self, username, auth_model=None):
        """Only accounts the VRE database has and has not disabled (as for local logins)."""
        def exists():
            from sqlalchemy import select

            with vdb.session_scope(self.settings.vre_db_url) as db:
                account = db.scalar(select(vdb.Account).where(vdb.Account.name == username))
                return account is not None and not account.disabled

        return await asyncio.to_thread(exists)
