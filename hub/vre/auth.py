"""Login for the embedded default: per-user hashed passwords with lockout, from the VRE database.

Hub rights follow the account's role through group membership (auditors: the audit scope; admins:
a deliberately narrow admin role); whether a name may log in at all is decided
by the VRE database (``check_allowed``), so removing or disabling an account takes effect at once.
"""

from __future__ import annotations

import asyncio

from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LogoutHandler
from traitlets import Instance, default

from . import db as vdb
from .accounts import check_login
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

    def get_handlers(self, app):
        return [("/logout", AuditedLogoutHandler), *super().get_handlers(app)]

    def _check(self, name: str, password: str):
        with vdb.session_scope(self.settings.vre_db_url) as db:
            result = check_login(db, name, password, threshold=self.settings.lockout_threshold,
                                 lockout_seconds=self.settings.lockout_seconds)
            role = result.account.role if result.account else None
            checker = bool(result.account and result.account.output_checker)
            return result, role, checker

    async def authenticate(self, handler, data):
        name = (data.get("username") or "").strip().lower()
        password = data.get("password") or ""
        client = handler.request.remote_ip if handler else None
        # scrypt costs ~50 ms: keep it off the event loop
        result, role, checker = await asyncio.to_thread(self._check, name, password)
        audit = dict(actor=name or "(empty)", actor_role=role or "anonymous", client=client, target=f"user/{name}")
        if result.ok:
            await aemit(self.settings, "auth.login", **audit)
            return {"name": name, "admin": False, "groups": groups_for(role, checker)}
        self.log.warning("Failed login for %r from %s (%s)", name, client, result.reason)
        await aemit(self.settings, "auth.login_failed", outcome="denied", details={"reason": result.reason}, **audit)
        if result.just_locked:
            await aemit(self.settings, "auth.lockout", outcome="denied",
                        details={"locked_until": result.locked_until.isoformat(),
                                 "threshold": self.settings.lockout_threshold}, **audit)
        return None

    async def check_allowed(self, username, authentication=None):
        def exists():
            from sqlalchemy import select

            with vdb.session_scope(self.settings.vre_db_url) as db:
                account = db.scalar(select(vdb.Account).where(vdb.Account.name == username))
                return account is not None and not account.disabled

        return await asyncio.to_thread(exists)
