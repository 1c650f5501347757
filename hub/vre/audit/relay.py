"""Audit events from sessions: the credential decides who and where, the payload only what.

Each session run gets a relay credential, ``<identity>.<hmac>``, where the identity (user, project,
session run) is signed with a hub secret. The session's relay posts batches to
``/services/vre/api/audit/events`` over the VRE service's unix socket (``vre.api``); the service
attributes every event from the
verified identity, ignores any actor/project/session/source the payload claims (every event is
stored with source "session": the session runs the researcher's code, so what it reports is a
claim, and it must never pass for a hub-side record), accepts only session-side actions and only
datasets granted to the project, and answers after the batch is durably stored.
The same validation replays the spool a session leaves behind when it stops.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from .. import db as vdb
from ..hostfiles import read_or_create_secret
from ..settings import Settings
from .events import emit_many, role_of
from .schema import AuditError, Event

SESSION_ACTIONS = frozenset({
    "dicom.series_view", "dicom.instance_view", "download.refused", "kernel.start", "kernel.stop",
    "kernel.restart", "contents.get", "contents.save", "contents.rename", "contents.delete",
    "contents.create",
})  # not cell.execute: executed code is recorded by the access layer, never taken from a session
MAX_BATCH = 1000
MAX_FUTURE = dt.timedelta(minutes=5)


class IngestError(ValueError):
    pass


@dataclass(frozen=True)
class Identity:
    user: str
    project: str
    session: str


def _key(settings: Settings) -> bytes:
    return read_or_create_secret(settings.secrets_dir / "audit_relay_key").encode()


def make_token(settings: Settings, identity: Identity) -> str:
    body = base64.urlsafe_b64encode(json.dumps([identity.user, identity.project, identity.session]).encode())
    mac = hmac.new(_key(settings), body, hashlib.sha256).hexdigest()
    return f"{body.decode()}.{mac}"


def check_token(settings: Settings, token: str) -> Identity:
    body, _, mac = (token or "").partition(".")
    expected = hmac.new(_key(settings), body.encode(), hashlib.sha256).hexdigest()
    if not mac or not hmac.compare_digest(mac, expected):
        raise IngestError("invalid relay credential")
    user, project, session = json.loads(base64.urlsafe_b64decode(body))
    return Identity(user, project, session)


def _granted(settings: Settings, project: str) -> set[str]:
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.execute(select(vdb.Dataset.slug).join(vdb.Grant).join(vdb.Project)
                          .where(vdb.Project.slug == project))
        return {r[0] for r in rows}


def to_events(settings: Settings, identity: Identity, items: list) -> list:
    """Validate what a session sent and attribute it. Raises IngestError naming the bad item."""
    if not isinstance(items, list) or len(items) > MAX_BATCH:
        raise IngestError(f"'events' must be a list of at most {MAX_BATCH} events")
    granted, role = _granted(settings, identity.project), role_of(settings, identity.user)
    now = vdb.utcnow()
    events = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise IngestError(f"event {i} is not an object")
        action = item.get("action")
        if action not in SESSION_ACTIONS:
            raise IngestError(f"event {i}: sessions may not record {action!r}")
        dataset = item.get("dataset")
        if dataset is not None and dataset not in granted:
            raise IngestError(f"event {i}: dataset {dataset!r} is not granted to project {identity.project!r}")
        if not item.get("id"):
            raise IngestError(f"event {i}: an 'id' is required (it makes replays idempotent)")
        try:
            when = dt.datetime.fromisoformat(str(item.get("time") or now.isoformat()).replace("Z", "+00:00"))
            when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
            events.append(Event(
                action=action, actor=identity.user, actor_role=role, project=identity.project,
                session=identity.session, dataset=dataset, target=str(item.get("target") or "")[:1000],
                outcome=item.get("outcome") or "ok", details=item.get("details") or {},
                id=str(item["id"]), time=min(when, now + MAX_FUTURE), source="session",
            ))
        except (AuditError, ValueError, TypeError) as e:
            raise IngestError(f"event {i}: {e}") from None
    return events


def store_events(settings: Settings, identity: Identity, items: list) -> int:
    return emit_many(settings, to_events(settings, identity, items))


def replay_spool(settings: Settings, identity: Identity, spool: Path, log) -> int:
    """Store what a stopped session left in its spool (one JSON event per file)."""
    if not spool.is_dir():
        return 0
    stored = 0
    for path in sorted(spool.glob("*.json")):
        try:
            item = json.loads(path.read_text())
            stored += store_events(settings, identity, [item])
        except (OSError, ValueError) as e:  # IngestError is a ValueError
            log.warning("Audit spool of %s: rejected %s: %s", identity.session, path.name, e)
        path.unlink(missing_ok=True)
    return stored
