"""Handlers of the VRE service (``vre.api.service``): JupyterHub's service auth and the VRE's scopes.

Who calls is decided by JupyterHub (``jupyterhub.services.auth``): a token in the ``Authorization``
header (an API token, a session's server token) or, in the browser, the service's own login cookie
from the hub's OAuth flow. The hub hands the service the caller's model with the token's scopes;
each handler method then requires one VRE scope (``requires_scope``), as the hub's handlers did.
"""

from __future__ import annotations

import asyncio
import functools
import json

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web
from tornado.log import app_log

from .. import db as vdb
from ..admin import Actor, admin_refusal
from ..roles import ADMIN_SCOPE
from ..settings import Settings
from .pages import render_error


class Who(dict):
    """The caller's model from the hub (``name``, ``kind``, ``scopes``, ...), with attribute access."""

    @property
    def name(self) -> str:
        return self["name"]

    @property
    def kind(self) -> str:
        return self.get("kind") or "user"


class ServiceHandler(HubOAuthenticated, web.RequestHandler):
    """A page of the VRE service: unknown callers are sent to the hub's login (OAuth)."""

    log = app_log

    def initialize(self, vre_settings: Settings | None = None, **kwargs):
        super().initialize(**kwargs)
        self.vre_settings = vre_settings or self.settings["vre_settings"]

    def get_current_user(self):
        model = super().get_current_user()
        return Who(model) if model else None

    def write_error(self, status_code: int, **kwargs):
        self.finish(render_error(self, status_code, kwargs.get("exc_info")))


class ServiceAPIHandler(ServiceHandler):
    """A REST handler of the VRE service: JSON answers and JSON errors (as the hub's own API)."""

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=utf-8")
        super().set_default_headers()

    def write_error(self, status_code: int, **kwargs):
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        message = (exc.get_message() if isinstance(exc, web.HTTPError) else None) or self._reason
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": message}))


def _still_admin(settings: Settings, name: str) -> bool:
    """What the database says now (the hub's answer about a token is cached for minutes)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        return admin_refusal(db, Actor(name)) is None


def requires_scope(scope: str):
    """The handler method needs ``scope`` in the caller's token (403 without it). Pages without a
    caller are sent to the hub's login first (OAuth); APIs answer 403."""
    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, *args, **kwargs):
            who = self.current_user
            if who is None:
                if isinstance(self, ServiceAPIHandler):
                    raise web.HTTPError(403, "Missing or invalid credentials.")
                return self.redirect(self.get_login_url())
            if not self.hub_auth.check_scopes({scope}, who):
                raise web.HTTPError(403, f"Action is not authorized with current scopes; requires any of [{scope}]")
            if scope == ADMIN_SCOPE and not await asyncio.to_thread(_still_admin, self.vre_settings, who.name):
                # the token's scopes are cached for minutes: a demoted or disabled admin reads no more
                raise web.HTTPError(403, f"{who.name!r} is not an active admin any more")
            return await method(self, *args, **kwargs)

        return wrapper

    return decorate
