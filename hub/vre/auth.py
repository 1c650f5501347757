"""Login for the embedded default: per-user hashed passwords with lockout, from the VRE database,
and a second factor (TOTP, ``vre.totp``) for the roles ``totp_roles`` names: set up with a QR code
at the first login (``TOTPEnrolHandler``), then asked for at every login.

Hub rights follow the account's role through group membership (auditors: the audit scope; admins:
a deliberately narrow admin role); whether a name may log in at all is decided
by the VRE database (``check_allowed``), so removing or disabling an account takes effect at once.
A hub login already made is checked again every ``auth_refresh_age`` seconds (``refresh_user``):
a disabled or removed account is logged out, and a changed role moves its groups, so a demoted
admin loses the hub's admin rights within a minute rather than at their next login.
"""

from __future__ import annotations

import asyncio
import json

from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LoginHandler, LogoutHandler
from tornado import web
from traitlets import Instance, default

from . import db as vdb
from . import totp
from .accounts import check_login, enrol_totp
from .errors import VREError
from .audit.events import aemit
from .roles import groups_for
from .settings import Settings, load


#: Where a logout handler keeps the user it logs out: JupyterHub forgets the user before the
#: request is logged, and the request log is where ``auth.logout`` is recorded (vre.audit.events).
LOGGED_OUT = "vre_logged_out_user"


class AuditedLogoutHandler(LogoutHandler):
    """JupyterHub's logout, keeping who logged out for the audit record."""

    async def handle_logout(self):
        setattr(self, LOGGED_OUT, self.current_user)
        await super().handle_logout()


#: Signed cookie of a pending enrolment: who (password just verified) and the new secret; 10 minutes.
ENROL_COOKIE = "vre-totp-enrol"
ENROL_MINUTES = 10


class MFAEnrolment(Exception):
    """The password was right and the account must set up its second factor before logging in."""

    def __init__(self, name: str, role: str):
        super().__init__(name)
        self.name, self.role = name, role


class VRELoginHandler(LoginHandler):
    """JupyterHub's login form; a right password of an account that must set up a second factor
    first gets the enrolment page (a QR code) instead of a session."""

    async def post(self):
        try:
            await super().post()
        except MFAEnrolment as e:
            secret = totp.new_secret()
            self.set_secure_cookie(ENROL_COOKIE, json.dumps({"name": e.name, "role": e.role, "secret": secret}),
                                   expires_days=None, path=self.hub.base_url, httponly=True, samesite="Strict")
            self.finish(await enrol_page(self, e.name, e.role, secret))


async def enrol_page(handler, name: str, role: str, secret: str, error: str | None = None,
                     recovery_codes: list[str] | None = None) -> str:
    settings = handler.authenticator.settings
    uri = totp.provisioning_uri(secret, name, issuer=f"VRE {settings.instance}")
    return await handler.render_template(
        "totp-enrol.html", account=name, role=role, secret=secret, qr=totp.qr_svg(uri), error=error,
        recovery_codes=recovery_codes, xsrf=handler.xsrf_token.decode("ascii"),
        enrol_url=handler.hub.base_url + "totp-enrol", login_url=handler.hub.base_url + "login")


class TOTPEnrolHandler(LoginHandler):
    """The enrolment form's answer: a right code turns the second factor on and shows the recovery
    codes once; the user then signs in with password and code."""

    async def get(self):
        self.redirect(self.hub.base_url + "login")

    async def post(self):
        raw = self.get_secure_cookie(ENROL_COOKIE, max_age_days=ENROL_MINUTES / 1440)
        if not raw:
            raise web.HTTPError(400, "The set-up of your second factor timed out (10 minutes). Sign in again to "
                                     "start over.", reason="Set-up expired")
        pending = json.loads(raw)
        settings = self.authenticator.settings
        name, role, secret = pending["name"], pending["role"], pending["secret"]

        def enrol():
            with vdb.session_scope(settings.vre_db_url) as db:
                return enrol_totp(db, name, secret, self.get_argument("code", ""))

        try:
            codes = await asyncio.to_thread(enrol)
        except VREError as e:
            self.set_status(400)
            return self.finish(await enrol_page(self, name, role, secret, error=str(e)))
        self.clear_cookie(ENROL_COOKIE, path=self.hub.base_url)
        await aemit(settings, "auth.mfa_enrol", actor=name, actor_role=role, target=f"user/{name}",
                    client=self.request.remote_ip, details={"factor": "totp", "recovery_codes": len(codes)})
        self.finish(await enrol_page(self, name, role, secret, recovery_codes=codes))


class VREAuthenticator(Authenticator):
    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")

    @default("settings")
    def _settings_default(self):
        return load()

    @default("allow_all")
    def _allow_all_default(self):
        return False

    @default("manage_groups")
    def _manage_groups_default(self):
        # Group membership follows the VRE account's role at every login; the auditor group
        # carries the auditor role (hubconfig). Managing groups rather than roles avoids a
        # JupyterHub 6.1 crash at restart with authenticator-managed role assignments.
        return True

    @default("auth_refresh_age")
    def _auth_refresh_age_default(self):
        return 60  # seconds a login is trusted before refresh_user looks at the account again

    @default("request_otp")
    def _request_otp_default(self):
        return True  # accounts with a second factor type its code under the password

    @default("otp_prompt")
    def _otp_prompt_default(self):
        return "Code from your authenticator app (if you use one), or a recovery code:"

    def get_handlers(self, app):
        return [("/login", VRELoginHandler), ("/logout", AuditedLogoutHandler), ("/totp-enrol", TOTPEnrolHandler)]

    def _check(self, name: str, password: str, otp: str):
        with vdb.session_scope(self.settings.vre_db_url) as db:
            result = check_login(db, name, password, threshold=self.settings.lockout_threshold,
                                 lockout_seconds=self.settings.lockout_seconds, otp=otp,
                                 mfa_roles=self.settings.totp_roles.split())
            role = result.account.role if result.account else None
            checker = bool(result.account and result.account.output_checker)
            return result, role, checker

    async def authenticate(self, handler, data):
        name = (data.get("username") or "").strip().lower()
        password = data.get("password") or ""
        client = handler.request.remote_ip if handler else None
        # scrypt costs ~50 ms: keep it off the event loop
        result, role, checker = await asyncio.to_thread(self._check, name, password, data.get("otp") or "")
        audit = dict(actor=name or "(empty)", actor_role=role or "anonymous", client=client, target=f"user/{name}")
        if result.reason == "mfa-enrol":
            raise MFAEnrolment(name, role)
        if result.ok:
            await aemit(self.settings, "auth.login", **audit,
                        **({"details": {"second_factor": result.second_factor}} if result.second_factor else {}))
            return {"name": name, "admin": False, "groups": groups_for(role, checker)}
        self.log.warning("Failed login for %r from %s (%s)", name, client, result.reason)
        await aemit(self.settings, "auth.login_failed", outcome="denied", details={"reason": result.reason}, **audit)
        if result.just_locked:
            await aemit(self.settings, "auth.lockout", outcome="denied",
                        details={"locked_until": result.locked_until.isoformat(),
                                 "threshold": self.settings.lockout_threshold}, **audit)
        return None

    def _account_groups(self, name: str) -> list[str] | None:
        """The hub groups of an active account, None when it is gone or disabled."""
        from sqlalchemy import select

        with vdb.session_scope(self.settings.vre_db_url) as db:
            account = db.scalar(select(vdb.Account).where(vdb.Account.name == name))
            if account is None or account.disabled:
                return None
            return groups_for(account.role, bool(account.output_checker))

    async def refresh_user(self, user, handler=None):
        """False (log in again) for an account disabled or removed since its login; otherwise its
        groups as the account's role says now (``manage_groups`` applies them)."""
        groups = await asyncio.to_thread(self._account_groups, user.name)
        if groups is None:
            self.log.info("%s is disabled or removed: their hub login ends", user.name)
            return False
        return {"name": user.name, "groups": groups}

    async def check_allowed(self, username, authentication=None):
        def exists():
            from sqlalchemy import select

            with vdb.session_scope(self.settings.vre_db_url) as db:
                account = db.scalar(select(vdb.Account).where(vdb.Account.name == username))
                return account is not None and not account.disabled

        return await asyncio.to_thread(exists)
