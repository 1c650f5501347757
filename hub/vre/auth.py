"""Login for the embedded default: per-user hashed passwords with lockout, from the VRE database.

JupyterHub admin rights follow the account's role; whether a name may log in at all is decided
by the VRE database (``check_allowed``), so removing or disabling an account takes effect at once.
"""

from __future__ import annotations

import asyncio

from jupyterhub.auth import Authenticator
from traitlets import Instance, default

from . import db as vdb
from .accounts import check_login
from .settings import Settings, load


class VREAuthenticator(Authenticator):
    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")

    @default("settings")
    def _settings_default(self):
        return load()

    @default("allow_all")
    def _allow_all_default(self):
        return False

    @default("manage_roles")
    def _manage_roles_default(self):
        return False

    def _check(self, name: str, password: str):
        with vdb.session_scope(self.settings.vre_db_url) as db:
            result = check_login(db, name, password, threshold=self.settings.lockout_threshold,
                                 lockout_seconds=self.settings.lockout_seconds)
            role = result.account.role if result.account else None
            return result, role

    async def authenticate(self, handler, data):
        name = (data.get("username") or "").strip().lower()
        password = data.get("password") or ""
        # scrypt costs ~50 ms: keep it off the event loop
        result, role = await asyncio.to_thread(self._check, name, password)
        if result.ok:
            return {"name": name, "admin": role == "admin"}
        client = handler.request.remote_ip if handler else "?"
        if result.reason == "locked":
            self.log.warning("Login refused for locked account %r from %s (locked until %s)",
                             name, client, result.locked_until)
        else:
            self.log.warning("Failed login for %r from %s (%s)", name, client, result.reason)
        return None

    async def check_allowed(self, username, authentication=None):
        def exists():
            from sqlalchemy import select

            with vdb.session_scope(self.settings.vre_db_url) as db:
                account = db.scalar(select(vdb.Account).where(vdb.Account.name == username))
                return account is not None and not account.disabled

        return await asyncio.to_thread(exists)
