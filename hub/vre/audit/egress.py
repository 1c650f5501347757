"""Egress totals for auditors: bytes each session sent to the browser per day (``egress_daily``,
written by the access layer's broker, :mod:`vre.access.meter`)."""

from __future__ import annotations

from sqlalchemy import select

from .. import db as vdb
from ..settings import Settings


def query(settings: Settings, *, since: str | None = None, until: str | None = None, user: str | None = None,
          project: str | None = None, session: str | None = None) -> list[dict]:
    """Rows per day and session (days as ``YYYY-MM-DD``, both ends included), newest day first."""
    t = vdb.EgressDaily
    q = select(t)
    for column, value in ((t.user, user), (t.project, project), (t.session, session)):
        if value:
            q = q.where(column == value)
    if since:
        q = q.where(t.day >= since)
    if until:
        q = q.where(t.day <= until)
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.scalars(q.order_by(t.day.desc(), t.bytes.desc())).all()
        return [{"day": r.day, "session": r.session, "user": r.user, "project": r.project, "bytes": r.bytes,
                 "requests": r.requests, "classes": dict(r.classes or {}),
                 "updated_at": r.updated_at.isoformat() if r.updated_at else None} for r in rows]
