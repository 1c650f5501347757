"""Account administration shared by the CLI (``vre user disable|unlock|reset-mfa``) and the Users
admin page (``vre.api.admin_pages``): one function per change, so both follow the same rules and
record the same audit event (action, ``target=user/<name>``, ``details.change``).

Who acts is an ``access_requests.Actor``: the CLI's operator (root at the hub's console, acting
as an admin) or an admin account in the browser (``via=web``, with the client's address). Rules:
the acting account must be an active admin; an admin may not disable their own account (someone
else must, so the last admin cannot lock everyone out by a slip). Refusals by these rules are
recorded (``outcome=denied``) before they are raised. Raises ``VREError`` subclasses whose message
says what to fix.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select

from . import accounts
from . import db as vdb
from .access_requests import Actor, Forbidden
from .audit.events import cli_actor, emit
from .db import as_utc, utcnow
from .errors import VREError


@dataclass(frozen=True)
class Change:
    apply: Callable  # (db, account) -> None
    action: str      # the audit event's action
    said: str        # what happened, "{name}" filled in


def _set_disabled(value: bool):
    def apply(db, account: vdb.Account) -> None:
        account.disabled = value
    return apply


#: The changes, by the name the CLI and the page use (``details.change`` of the audit event).
CHANGES = {
    "disable": Change(_set_disabled(True), "user.update", "{name!r} disabled"),
    "enable": Change(_set_disabled(False), "user.update", "{name!r} enabled"),
    "unlock": Change(lambda db, a: accounts.unlock(db, a.name), "user.update", "{name!r} unlocked"),
    "reset-mfa": Change(lambda db, a: accounts.reset_mfa(db, a.name), "auth.mfa_reset",
                        "{name!r}: second factor and recovery codes removed; a new one is set up at the next login"),
}


def _audit(settings, who: Actor, action: str, name: str, change: str, *, outcome: str = "ok", **details) -> None:
    if who.via == "cli":  # as `emit_cli` records it
        actor, role = (cli_actor(), "admin") if who.operator else (who.name, None)
    else:
        actor, role = who.name, None
    emit(settings, action, actor=actor, actor_role=role, outcome=outcome, target=f"user/{name}", client=who.client,
         details={"via": who.via, "change": change, **details})


def _check_admin(db, who: Actor) -> None:
    if who.operator:
        return
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
    if account is None or account.disabled or account.role != "admin":
        raise Forbidden(f"{who.name!r} is not an active admin: only admins change accounts")


def change_account(settings, who: Actor, name: str, change: str) -> str:
    """Apply one of ``CHANGES`` to account ``name`` (committed), then record it; returns what
    happened, in a sentence."""
    if change not in CHANGES:
        raise VREError(f"unknown change {change!r}: choose one of {', '.join(CHANGES)}")
    spec = CHANGES[change]
    refused = None
    with vdb.session_scope(settings.vre_db_url) as db:
        try:
            _check_admin(db, who)
        except Forbidden as e:
            refused = e
        if refused is None:
            account = accounts.get_account(db, name or "")  # NotFound
            if change == "disable" and account.name == who.name and not who.operator:
                refused = Forbidden("you may not disable your own account: another admin must do it")
            else:
                spec.apply(db, account)
    if refused is not None:
        _audit(settings, who, spec.action, name, change, outcome="denied", reason=str(refused))
        raise refused
    _audit(settings, who, spec.action, name, change)
    return spec.said.format(name=name)


def list_accounts(settings) -> list[dict]:
    """Every account, by name, with what an admin acts on: role, disabled, a lockout still running,
    whether a second factor is set up."""
    now = utcnow()
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.scalars(select(vdb.Account).order_by(vdb.Account.name)).all()
        return [{"name": a.name, "role": a.role, "disabled": bool(a.disabled),
                 "locked_until": _iso(a.locked_until) if a.locked_until and as_utc(a.locked_until) > now else None,
                 "mfa": bool(a.totp_secret), "checker": bool(a.output_checker), "oidc": a.oidc_subject is not None,
                 "created_at": _iso(a.created_at)} for a in rows]


def _iso(value: dt.datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
