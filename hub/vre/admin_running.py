"""What runs now, for admins: the batch queue's open jobs with what they asked for and use, a
job's cancellation (``vre jobs cancel`` and the Users admin page), and the rule and record of an
admin stopping someone's session (the page asks the hub to stop it: ``vre.api.admin_pages``).

The same rules as ``vre.admin``: active admins (or the console's operator) only, refusals recorded
(``outcome=denied``); every stop and cancellation is recorded under who did it (``via``)."""

from __future__ import annotations

from sqlalchemy import select

from . import db as vdb
from .access_requests import Actor
from .admin import admin_refusal, audit
from .errors import NotFound
from .jobs import service
from .resource_use import UNKNOWN, sample, session_id


def open_jobs(settings) -> list[dict]:
    """Queued and running jobs, oldest first: who, what, the resources asked for, the GPUs granted
    and, for running ones, what their workers use now (``resource_use.sample``)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.scalars(select(vdb.Job).where(vdb.Job.state.in_(("queued", "running"))).order_by(vdb.Job.id)).all()
        jobs = [{"id": j.id, "project": j.project.slug, "user": j.account.name, "kind": j.kind,
                 "name": j.name or j.target, "state": j.state, "cancel_requested": bool(j.cancel_requested),
                 "cpu": j.cpu, "mem_mb": j.mem_mb, "gpus": j.gpus, "devices": j.devices,
                 "workers": [w for w in j.worker.split(",") if w] if j.state == "running" else [],
                 "submitted_at": vdb.as_utc(j.submitted_at).isoformat()} for j in rows]
    used = sample(settings, {j["id"]: j["workers"] for j in jobs if j["workers"]})
    for j in jobs:
        j["use"] = used.get(j["id"], UNKNOWN)
    return jobs


def cancel_job(settings, who: Actor, job_id: int) -> str:
    """Cancel job ``job_id`` (queued: at once; running: the engine stops it), recorded as
    ``job.cancel``; returns what happened, in a sentence. ``JobRejected`` when it already ended."""
    with vdb.session_scope(settings.vre_db_url) as db:
        refused = admin_refusal(db, who, "cancel others' jobs")
        job = vdb.get_by_id(db, vdb.Job, job_id)
        if job is None:
            raise NotFound(f"there is no job {job_id} (see 'vre jobs list')")
        project = job.project.slug
        if refused is None:
            service.request_cancel(job, "an admin")  # JobRejected: nothing changes
            was = "queued" if job.state == "cancelled" else "running"
    if refused is not None:
        audit(settings, who, "job.cancel", f"job/{job_id}", outcome="denied", project=project,
              details={"reason": str(refused)})
        raise refused
    audit(settings, who, "job.cancel", f"job/{job_id}", project=project, details={"while": was})
    service.wake(settings)
    return f"job {job_id}: " + ("cancelled" if was == "queued" else "cancel requested")


def check_session_stop(settings, who: Actor, user: str, server: str) -> None:
    """Refuse (and record) a stop by anyone but an active admin."""
    with vdb.session_scope(settings.vre_db_url) as db:
        refused = admin_refusal(db, who, "stop others' sessions")
    if refused is None:
        return
    record_session_stop(settings, who, user, server, outcome="denied", reason=str(refused))
    raise refused


def record_session_stop(settings, who: Actor, user: str, server: str, *, outcome: str = "ok",
                        reason: str = "stopped by an admin") -> None:
    """``session.stop`` under the admin (the session's own stop event names its user)."""
    audit(settings, who, "session.stop", session_id(user, server), outcome=outcome, project=server or None,
          details={"user": user, "server": server, "reason": reason})
