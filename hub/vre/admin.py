"""Account administration shared by the CLI (``vre user add|disable|unlock|reset-mfa|set-role|
set-checker``) and the Users admin page (``vre.api.admin_pages``): one function per kind of change,
so both follow the same rules and record the same audit event (action, ``target=user/<name>``,
``details.change``).

Who acts is an ``access_requests.Actor``: the CLI's operator (root at the hub's console, acting
as an admin) or an admin account in the browser (``via=web``, with the client's address). Rules:
the acting account must be an active admin; an admin may neither disable their own account nor
take away their own admin role (someone else must, so the last admin cannot lock everyone out by
a slip); auditors are never output checkers (they audit the airlock); the role of an account that
logs in through single sign-on is the identity provider's (its groups, at each login). Refusals by
these rules are recorded (``outcome=denied``) before they are raised. Raises ``VREError``
subclasses whose message says what to fix.
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
from .errors import Conflict, VREError


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


def audit(settings, who: Actor, action: str, target: str, *, outcome: str = "ok", details: dict | None = None,
          **fields) -> None:
    """Record what ``who`` did (or was refused) as the CLI always recorded it (``emit_cli``), or
    under the admin's name and address from the web."""
    if who.via == "cli" and who.operator:
        actor, role = cli_actor(), "admin"
    else:
        actor, role = who.name, None
    emit(settings, action, actor=actor, actor_role=role, outcome=outcome, target=target, client=who.client,
         details={"via": who.via, **(details or {})}, **fields)


def _audit(settings, who: Actor, action: str, name: str, change: str, *, outcome: str = "ok", **details) -> None:
    audit(settings, who, action, f"user/{name}", outcome=outcome, details={"change": change, **details})


def check_admin(db, who: Actor, what: str = "change accounts") -> None:
    """Refuse (``Forbidden``) anyone but the console's operator and active admin accounts."""
    if who.operator:
        return
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
    if account is None or account.disabled or account.role != "admin":
        raise Forbidden(f"{who.name!r} is not an active admin: only admins {what}")


def admin_refusal(db, who: Actor, what: str = "change accounts") -> Forbidden | None:
    """``check_admin``'s refusal, returned rather than raised: callers record it once the
    transaction is over, then raise it."""
    try:
        check_admin(db, who, what)
    except Forbidden as e:
        return e
    return None


def change_account(settings, who: Actor, name: str, change: str) -> str:
    """Apply one of ``CHANGES`` to account ``name`` (committed), then record it; returns what
    happened, in a sentence."""
    if change not in CHANGES:
        raise VREError(f"unknown change {change!r}: choose one of {', '.join(CHANGES)}")
    spec = CHANGES[change]
    with vdb.session_scope(settings.vre_db_url) as db:
        refused = admin_refusal(db, who)
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


def create_account(settings, who: Actor, name: str, role: str = "researcher", *, password: str | None = None,
                   oidc: bool = False) -> tuple[str, str | None]:
    """Create account ``name`` (``accounts.add_account``'s rules), then record ``user.create``.
    Returns what happened, in a sentence, and the generated password (to be shown once) if one
    was generated; an ``oidc`` account has none: its first single sign-on login takes it."""
    name = (name or "").strip().lower()
    with vdb.concurrent_change_is(lambda: Conflict(f"account {name!r} was just created by someone else; "
                                                   "reload and choose another name")), \
            vdb.session_scope(settings.vre_db_url) as db:
        refused = admin_refusal(db, who, "create accounts")
        if refused is None:
            account, generated = accounts.add_account(db, name, role=role, password=password, oidc=oidc)
    details = {"role": role, **({"login": "oidc"} if oidc else {})}
    if refused is not None:
        audit(settings, who, "user.create", f"user/{name}", outcome="denied",
              details={**details, "reason": str(refused)})
        raise refused
    audit(settings, who, "user.create", f"user/{name}", details=details)
    if oidc:
        return (f"added {role} {name!r}; no password: the first login as {name!r} at the identity provider takes "
                "this account" + ("" if settings.auth == "oidc" else " (this hub's auth is not 'oidc' yet)")), None
    return f"added {role} {name!r}", generated


def set_role(settings, who: Actor, name: str, role: str | None = None, checker: bool | None = None) -> str:
    """Change account ``name``'s role and/or output-checker flag (None: unchanged), together, then
    record each change: ``user.update`` (``change=role``, old, new) and ``airlock.checker``. The
    VRE's own checks follow at once; the hub's rights (its groups) within ``auth_refresh_age`` (``vre.auth``)."""
    if role is not None and role not in vdb.ROLES:
        raise VREError(f"invalid role {role!r}: choose one of {', '.join(vdb.ROLES)}")
    changes = []
    with vdb.session_scope(settings.vre_db_url) as db:
        refused = admin_refusal(db, who)
        if refused is None:
            account = accounts.get_account(db, name or "")  # NotFound
            old_role, new_role = account.role, role or account.role
            new_checker = account.output_checker if checker is None else checker
            if single_sign_on(account) and (new_role != old_role or bool(new_checker) != bool(account.output_checker)):
                refused = VREError(f"{name!r} logs in through single sign-on: the identity provider's groups set its "
                                   "role and output-checker flag at each login; change them there")
            elif old_role == "admin" and new_role != "admin" and account.name == who.name and not who.operator:
                refused = Forbidden("you may not take away your own admin role: another admin must do it")
            elif new_role == "auditor" and new_checker:
                refused = VREError(f"{name!r} would be an auditor and an output checker: auditors audit the airlock, "
                                   "they do not check outputs; turn the output checker off too")
            else:
                if new_role != old_role:
                    account.role = new_role
                    changes.append(("user.update", {"change": "role", "old": old_role, "new": new_role}))
                if bool(new_checker) != bool(account.output_checker):
                    account.output_checker = new_checker
                    changes.append(("airlock.checker", {"change": "checker", "output_checker": bool(new_checker)}))
    if refused is not None:
        audit(settings, who, "user.update", f"user/{name}", outcome="denied",
              details={"change": "role", **({"new": role} if role else {}),
                       **({"output_checker": checker} if checker is not None else {}), "reason": str(refused)})
        raise refused
    for action, details in changes:
        audit(settings, who, action, f"user/{name}", details=details)
    if not changes:
        return f"{name!r} is already {new_role}" + (", an output checker" if new_checker else "") + ": nothing changed"
    return (f"{name!r} is now {new_role}" + (", an output checker" if new_checker else ", not an output checker")
            + " (the VRE applies it at once, the hub's rights within a minute)")


def single_sign_on(account: vdb.Account) -> bool:
    """Whether the account logs in through OIDC (bound, or made ahead to be bound at the first
    login: no password), whose role ``vre.oidc.sync_account`` sets from the groups at each login."""
    return account.oidc_subject is not None or not account.password_hash


def list_accounts(settings) -> list[dict]:
    """Every account, by name, with what an admin acts on: role, disabled, a lockout still running,
    whether a second factor is set up."""
    now = utcnow()
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.scalars(select(vdb.Account).order_by(vdb.Account.name)).all()
        return [{"name": a.name, "role": a.role, "disabled": bool(a.disabled),
                 "locked_until": _iso(a.locked_until) if a.locked_until and as_utc(a.locked_until) > now else None,
                 "mfa": bool(a.totp_secret), "checker": bool(a.output_checker), "oidc": single_sign_on(a),
                 "created_at": _iso(a.created_at)} for a in rows]


def _iso(value: dt.datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
