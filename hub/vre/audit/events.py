"""The one writer API of the audit trail, and the hub-side sources that use it: logins, sessions,
state-changing API requests and CLI administration.

Attribution comes from what the hub knows (the authenticated user, the spawner), never from what a
client claims; so does provenance (``source``, schema v2): "hub" unless the caller is a hub-side
component that says otherwise, "session" for whatever a session reports (set by the ingest).
Writes are synchronous and durable: when an ``emit`` returns, the event is stored; when it fails,
the exception propagates, so an action that cannot be audited does not happen silently (logins
and session starts fail closed).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
from typing import Any

from sqlalchemy import select

from .. import db as vdb
from ..roles import SERVICE_NAME
from ..settings import Settings
from . import open_store
from .schema import Event

_API_STATE_CHANGE = {"POST", "PUT", "PATCH", "DELETE"}
_TOKENS = re.compile(r"^/hub/api/users/([^/]+)/tokens(?:/([^/]+))?$")
_SERVERS = re.compile(r"^/hub/api/users/([^/]+)/servers?(?:/([^/]+))?$")


def role_of(settings: Settings, name: str) -> str:
    """The account's role; names without an account (failed logins) are 'anonymous'."""
    with vdb.session_scope(settings.vre_db_url) as db:
        role = db.scalar(select(vdb.Account.role).where(vdb.Account.name == name))
    return role or "anonymous"


def emit(settings: Settings, action: str, *, actor: str, actor_role: str | None = None, source: str = "hub",
         **fields: Any) -> None:
    """Record one event durably (the actor's role is looked up when not given). ``source``: who
    reports it, one of ``vre.audit.schema.SOURCES``."""
    role = actor_role or role_of(settings, actor)
    open_store(settings).append(Event(action=action, actor=actor, actor_role=role, source=source, **fields))


def emit_many(settings: Settings, events: list[Event]) -> int:
    """Record attributed events in one transaction, each with its own ``source``; returns how many
    were new (ids make replays idempotent)."""
    return open_store(settings).append_many(events)


async def aemit(settings: Settings, action: str, **kw: Any) -> None:
    await asyncio.to_thread(emit, settings, action, **kw)


def cli_actor() -> str:
    """Who ran a CLI command: the login behind sudo if any, else the effective user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def emit_cli(settings: Settings, action: str, **fields: Any) -> None:
    details = fields.pop("details", {})
    emit(settings, action, actor=cli_actor(), actor_role="admin", details={"via": "cli", **details}, **fields)


# --- the hub's request log: one place that sees every request with its user and status -----------
def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403) else "error"


def classify_request(method: str, path: str, status: int, user_kind: str | None,
                     user_name: str | None = None) -> tuple[str, str] | None:
    """(action, target) for requests worth an audit event, else None. A service stopping a server
    culls it (idle, no longer permitted), except the VRE service, which stops one when an admin
    asks on the Users page (its own ``session.stop`` names the admin). A request turned away by
    the spawn throttle (429) did nothing and is retried: the start that gets through is audited
    (``session.request``); a record per retry would let a crowd fill the trail, and cost the hub's
    loop a write each (1,000 users waiting retry a few hundred times a second)."""
    if status == 429:
        return None
    path = path.rstrip("/") or "/"
    if path.endswith("/hub/logout") and method == "GET":
        return "auth.logout", ""
    if method not in _API_STATE_CHANGE or "/hub/api/" not in path:
        return None
    path = path[path.index("/hub/api/"):]
    if path.endswith("/activity"):  # servers reporting their own activity: housekeeping, not an action
        return None
    if path.startswith("/hub/api/oauth2/"):  # a service finishing a user's OAuth login (the VRE
        return None                           # service's pages): the login itself is auth.login
    if m := _TOKENS.match(path):
        return ("token.create" if method == "POST" else "token.revoke"), f"user/{m.group(1)}"
    if (m := _SERVERS.match(path)) and method == "DELETE" and user_kind == "service":
        return ("session.stop" if user_name == SERVICE_NAME else "session.cull"), f"{m.group(1)}/{m.group(2) or ''}"
    return "api.request", f"{method} {path}"


def make_log_function(settings: Settings):
    """Wrap JupyterHub's request logger so that state-changing requests are audited."""
    from jupyterhub.log import log_request

    def log_and_audit(handler) -> None:
        log_request(handler)
        request = handler.request
        status = handler.get_status()
        # a logout handler keeps the user it logged out (vre.auth.LOGGED_OUT): JupyterHub has forgotten it
        user = getattr(handler, "_jupyterhub_user", None) or getattr(handler, "vre_logged_out_user", None)
        kind = getattr(user, "kind", None)
        hit = classify_request(request.method, request.path, status, kind, getattr(user, "name", None))
        if hit is None or status == 404:
            return
        action, target = hit
        if action == "auth.logout" and user is None:
            return
        name = getattr(user, "name", None) or "anonymous"
        role = "service" if kind == "service" else None
        try:
            emit(settings, action, actor=name, actor_role=role if user else "anonymous", target=target,
                 outcome=_outcome(status), client=request.remote_ip,
                 details={"method": request.method, "path": request.path, "status": status})
        except Exception:
            handler.log.exception("AUDIT FAILURE: could not record %s %s", request.method, request.path)

    return log_and_audit
