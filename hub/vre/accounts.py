"""Local accounts: creation, passwords, the second factor (TOTP, recovery codes) and login with
lockout after repeated failures (of either factor)."""

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


def add_account(db: Session, name: str, role: str = "researcher", password: str | None = None, *,
                oidc: bool = False) -> tuple[Account, str | None]:
    """Create an account. Without a password one is generated and returned (shown once).

    ``oidc``: an account for a person who logs in through the OpenID Connect provider, made
    before their first login so that projects can take them as a member already. It has no
    password; the first login under its name binds it to that identity (``vre.oidc.sync_account``)."""
    validate_name(name)
    if role not in ROLES:
        raise VREError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    if db.scalar(select(Account).where(Account.name == name)) is not None:
        raise VREError(f"user {name!r} already exists")
    if oidc:
        if password is not None:
            raise VREError("an OIDC account has no password: people log in at the identity provider")
        account = Account(name=name, role=role, password_hash="", oidc_subject=None)
        db.add(account)
        db.flush()
        return account, None
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
    #: "ok", "bad-credentials", "locked", "disabled", "bad-otp" (the password was right, the code
    #: missing or wrong), "mfa-enrol" (the password was right; a second factor must be set up first)
    reason: str
    account: Account | None = None
    locked_until: dt.datetime | None = None
    just_locked: bool = False  # this failure crossed the threshold
    second_factor: str | None = None  # "totp" or "recovery" when one was used


def check_login(db: Session, name: str, password: str, *, threshold: int, lockout_seconds: int,
                otp: str | None = None, mfa_roles=()) -> LoginResult:
    """Verify a login and keep the failure count. The caller commits.

    After ``threshold`` consecutive failures the account is locked for ``lockout_seconds``;
    while locked even the right password is refused (so guessing cannot continue). An account
    with a second factor (or whose role is one of ``mfa_roles``) also needs ``otp``, a
    current code or an unused recovery code; a wrong or missing one counts as a failure, and the
    count is only cleared by a complete login (a known password does not reset it).
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
    if not verify_password(password, account.password_hash):
        return _failure(account, now, threshold, lockout_seconds, "bad-credentials")
    factor = None
    if account.role in mfa_roles or account.totp_secret:
        if not account.totp_secret:
            return LoginResult(False, "mfa-enrol", account)
        factor = _second_factor(account, otp or "")
        if factor is None:
            return _failure(account, now, threshold, lockout_seconds, "bad-otp")
    account.failed_logins = 0
    account.locked_until = None
    return LoginResult(True, "ok", account, second_factor=factor)


def _failure(account: Account, now: dt.datetime, threshold: int, lockout_seconds: int, reason: str) -> LoginResult:
    account.failed_logins += 1
    if account.failed_logins >= threshold:
        account.locked_until = now + dt.timedelta(seconds=lockout_seconds)
        account.failed_logins = 0
        return LoginResult(False, "locked", account, account.locked_until, just_locked=True)
    return LoginResult(False, reason, account)


def _second_factor(account: Account, otp: str) -> str | None:
    from . import totp

    step = totp.verify(account.totp_secret, otp, account.totp_last_step)
    if step is not None:
        account.totp_last_step = step
        return "totp"
    left = totp.use_recovery_code(account.recovery_codes, otp)
    if left is not None:
        account.recovery_codes = left
        return "recovery"
    return None


def enrol_totp(db: Session, name: str, secret: str, code: str) -> list[str]:
    """Turn on the second factor with ``secret`` once ``code`` shows the app has it; returns the
    recovery codes (shown once). Refused when one is already set up (an admin resets it first)."""
    from . import totp

    account = get_account(db, name)
    if account.totp_secret:
        raise VREError(f"{name!r} already has a second factor; an admin can reset it (vre user reset-mfa {name})")
    step = totp.verify(secret, code, None)
    if step is None:
        raise VREError("that code does not match: check the authenticator app's clock and enter the current code")
    codes, digests = totp.new_recovery_codes()
    account.totp_secret, account.totp_last_step, account.recovery_codes = secret, step, digests
    return codes


def reset_mfa(db: Session, name: str) -> None:
    """Forget the account's second factor (a lost phone): it sets one up again at its next login."""
    account = get_account(db, name)
    account.totp_secret = account.totp_last_step = account.recovery_codes = None
