"""Local accounts: creation, passwords and login with lockout after repeated failures."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import ROLES, Account, as_utc, utcnow
from .errors import NotFound, VREError
from .passwords import DUMMY_HASH, generate_password, hash_password, verify_password

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MIN_PASSWORD = 10


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise VREError(
            f"invalid user name {name!r}: use 1-32 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise VREError(f"password too short: use at least {MIN_PASSWORD} characters")
    return password


def get_account(db: Session, name: str) -> Account:
    account = db.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise NotFound(f"unknown user {name!r} (see 'vre user list')")
    return account


def add_account(db: Session, name: str, role: str = "researcher", password: str | None = None) -> tuple[Account, str | None]:
    """Create an account. Without a password one is generated and returned (shown once)."""
    validate_name(name)
    if role not in ROLES:
        raise VREError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    if db.scalar(select(Account).where(Account.name == name)) is not None:
        raise VREError(f"user {name!r} already exists")
    generated = None
    if password is None:
        password = generated = generate_password()
    account = Account(name=name, role=role, password_hash=hash_password(validate_password(password)))
    db.add(account)
    db.flush()
    return account, generated


def set_password(db: Session, name: str, password: str) -> None:
    account = get_account(db, name)
    account.password_hash = hash_password(validate_password(password))
    account.failed_logins = 0
    account.locked_until = None


def unlock(db: Session, name: str) -> None:
    account = get_account(db, name)
    account.failed_logins = 0
    account.locked_until = None


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    reason: str  # "ok", "bad-credentials", "locked", "disabled"
    account: Account | None = None
    locked_until: dt.datetime | None = None
    just_locked: bool = False  # this failure crossed the threshold


def check_login(db: Session, name: str, password: str, *, threshold: int, lockout_seconds: int) -> LoginResult:
    """Verify a login and keep the failure count. The caller commits.

    After ``threshold`` consecutive failures the account is locked for ``lockout_seconds``;
    while locked even the right password is refused (so guessing cannot continue).
    """
    account = db.scalar(select(Account).where(Account.name == name)) if NAME_RE.match(name or "") else None
    if account is None:
        verify_password(password, DUMMY_HASH)
        return LoginResult(False, "bad-credentials")
    now = utcnow()
    if account.locked_until is not None and as_utc(account.locked_until) > now:
        verify_password(password, DUMMY_HASH)
        return LoginResult(False, "locked", account, account.locked_until)
    if account.disabled:
        verify_password(password, DUMMY_HASH)
        return LoginResult(False, "disabled", account)
    if verify_password(password, account.password_hash):
        account.failed_logins = 0
        account.locked_until = None
        return LoginResult(True, "ok", account)
    account.failed_logins += 1
    if account.failed_logins >= threshold:
        account.locked_until = now + dt.timedelta(seconds=lockout_seconds)
        account.failed_logins = 0
        return LoginResult(False, "locked", account, account.locked_until, just_locked=True)
    return LoginResult(False, "bad-credentials", account)
