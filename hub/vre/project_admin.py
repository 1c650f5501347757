"""Project administration shared by the CLI (``vre project ...``) and the Projects admin page
(``vre.api.admin_projects``): one function per change, each doing the change (``vre.projects``'
rules, one transaction) and then recording its audit event, so both record the same action,
target and details, differing only in who acted and how (``details.via``).

Who acts is an ``access_requests.Actor``: the CLI's operator (root at the hub's console, acting as
an admin) or an admin account in the browser (``via=web``, with the client's address). Only active
admins change projects; a refusal for that reason is recorded (``outcome=denied``) before it is
raised. Each change returns what happened in a sentence (what the CLI prints). Raises ``VREError``
subclasses whose message says what to fix.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import select

from . import admin
from . import db as vdb
from . import projects as P
from .access_requests import Actor
from .airlock.rules import rules_of, set_rules
from .errors import Conflict, VREError


def _audit(settings, who: Actor, action: str, *, outcome: str = "ok", details: dict | None = None,
           target: str | None = None, **fields) -> None:
    admin.audit(settings, who, action, target or "", outcome=outcome, details=details, **fields)


def _change(settings, who: Actor, action: str, apply: Callable, **target) -> tuple:
    """Check ``who``, run ``apply(db) -> (result, audit fields)`` in one transaction, then record the
    event; ``target``: the event's fields should it be refused (``project``, ``dataset``, ``target``)."""
    with vdb.concurrent_change_is(lambda: Conflict(
            f"{_what(target)} was just changed by someone else at the same moment; reload and try again")), \
            vdb.session_scope(settings.vre_db_url) as db:
        refused = admin.admin_refusal(db, who, "change projects")
        if refused is None:
            result, fields = apply(db)
    if refused is not None:
        _audit(settings, who, action, outcome="denied", details={"reason": str(refused)}, **target)
        raise refused
    _audit(settings, who, action, **fields)
    return result


def _what(target: dict) -> str:
    """'project 'lung'', 'project 'lung' (dataset 'lung-ct')': what a conflicting change was to."""
    said = f"project {target.get('project')!r}"
    extra = f"dataset {target['dataset']!r}" if target.get("dataset") else target.get("target")
    return f"{said} ({extra})" if extra else said


def _grant_effect(g: vdb.Grant) -> str:
    """What a grant now means, in words (from sessions and batch jobs started from now on)."""
    where = {"interactive": "mounted read-only in new sessions and batch jobs",
             "batch-only": "mounted read-only in new held batch jobs only (sessions list its catalogue record; "
                           "held jobs' outputs leave through the airlock)"}[g.mode]
    return where + (f", until {g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else "")


# --- the changes ----------------------------------------------------------------------------------
def create(settings, who: Actor, slug: str, title: str, description: str = "", expires: str | None = None) -> str:
    def apply(db):
        p = P.create_project(db, slug, title, description or "", expires)
        return (f"created project {p.slug!r}; next: grant datasets, add members and a profile",
                dict(project=p.slug, details={"title": p.title}))
    return _change(settings, who, "project.create", apply, project=slug)


def grant(settings, who: Actor, project: str, dataset: str, *, mode: str = "interactive",
          expires: str | None = None) -> str:
    def apply(db):
        g = P.grant(db, project, dataset, mode=mode, expires=expires)
        return (f"granted {dataset!r} to {project!r}: {_grant_effect(g)}",
                dict(project=project, dataset=dataset, details=P.grant_summary(g)))
    return _change(settings, who, "project.grant", apply, project=project, dataset=dataset)


def update_grant(settings, who: Actor, project: str, dataset: str, *, mode: str | None = None,
                 expires: str | None = None) -> str:
    def apply(db):
        g = P.update_grant(db, project, dataset, mode=mode, expires=expires)
        return (f"grant of {dataset!r} to {project!r}: {_grant_effect(g)}",
                dict(project=project, dataset=dataset, details=P.grant_summary(g)))
    return _change(settings, who, "project.grant_update", apply, project=project, dataset=dataset)


def revoke(settings, who: Actor, project: str, dataset: str) -> str:
    def apply(db):
        P.revoke(db, project, dataset)
        return (f"revoked {dataset!r} from {project!r}: gone from sessions and batch jobs started from now on",
                dict(project=project, dataset=dataset))
    return _change(settings, who, "project.revoke", apply, project=project, dataset=dataset)


def add_member(settings, who: Actor, project: str, user: str) -> str:
    def apply(db):
        P.add_member(db, project, user)
        return f"added {user!r} to {project!r}", dict(project=project, target=f"user/{user}")
    return _change(settings, who, "project.member_add", apply, project=project, target=f"user/{user}")


def remove_member(settings, who: Actor, project: str, user: str) -> str:
    def apply(db):
        P.remove_member(db, project, user)
        return (f"removed {user!r} from {project!r}; a running session of theirs is stopped "
                f"within {settings.poll_interval} s", dict(project=project, target=f"user/{user}"))
    return _change(settings, who, "project.member_remove", apply, project=project, target=f"user/{user}")


def set_profile(settings, who: Actor, project: str, name: str, *, cpu: float, memory: str | int, gpus: int = 0,
                gpu_shared: bool = False, description: str = "", node_selector=None) -> str:
    def apply(db):
        pr = P.set_profile(db, project, name, cpu=cpu, memory=memory, gpus=gpus, description=description or "",
                           node_selector=node_selector)
        pr.gpu_shared = bool(gpu_shared)
        return (f"profile {pr.name!r} of {project!r}: {pr.describe()}",
                dict(project=project, target=pr.name, details={
                    "cpu": pr.cpu, "mem_mb": pr.mem_mb, "gpus": pr.gpus, "gpu_shared": pr.gpu_shared,
                    "node_selector": pr.node_selector or {}}))
    return _change(settings, who, "project.profile_set", apply, project=project, target=name)


def remove_profile(settings, who: Actor, project: str, name: str) -> str:
    def apply(db):
        P.remove_profile(db, project, name)
        return f"removed profile {name!r} from {project!r}", dict(project=project, target=name)
    return _change(settings, who, "project.profile_remove", apply, project=project, target=name)


def set_quota(settings, who: Actor, project: str, *, jobs: int | None = None, cpu: float | None = None,
              memory: str | None = None, gpus: int | None = None) -> str:
    """The batch queue's quota (what is not given stays)."""
    def apply(db):
        p = P.set_job_quota(db, project, slots=jobs, cpu=cpu, memory=memory, gpus=gpus)
        q = P.job_quota(p)
        return (f"batch quota of {p.slug!r}: {q['slots']} job(s) at once, {q['cpu']:g} CPU, "
                f"{q['mem_mb']} MiB, {q['gpus']} GPU(s) in all; more jobs wait in the queue",
                dict(project=p.slug, details={"job_quota": q}))
    return _change(settings, who, "project.update", apply, project=project)


def set_cell_audit(settings, who: Actor, project: str, on: bool) -> str:
    def apply(db):
        p = P.set_cell_audit(db, project, on)
        return (f"code audit {'on: every executed cell of' if p.audit_cells else 'off for'} {p.slug!r}"
                + (" is recorded (sessions started from now on; researchers are told)" if p.audit_cells else ""),
                dict(project=p.slug, details={"audit_cells": p.audit_cells}))
    return _change(settings, who, "project.update", apply, project=project)


def set_downloads(settings, who: Actor, project: str, mode: str) -> str:
    def apply(db):
        p = P.set_downloads(db, project, mode)
        return (f"downloads of {p.slug!r}: {p.downloads} (sessions started from now on)",
                dict(project=p.slug, details={"downloads": p.downloads}))
    return _change(settings, who, "project.update", apply, project=project)


def set_egress_cap(settings, who: Actor, project: str, cap: str) -> str:
    def apply(db):
        p = P.set_egress_cap(db, project, cap)
        return (f"egress of {p.slug!r}: " + (f"at most {p.egress_cap} bytes per member per day to the browser"
                                             if p.egress_cap else "no daily cap (always counted)")
                + " (sessions started from now on)", dict(project=p.slug, details={"egress_cap": p.egress_cap}))
    return _change(settings, who, "project.update", apply, project=project)


def set_expiry(settings, who: Actor, project: str, expires: str) -> str:
    """The permit's expiry ('never' clears it; a past moment expires the project now)."""
    def apply(db):
        p = P.set_expiry(db, project, expires)
        if p.expires_at is None:
            said = f"{p.slug!r} no longer expires"
        elif p.is_expired():
            said = f"{p.slug!r} is now expired: its sessions are stopped within {settings.poll_interval} s"
        else:
            said = f"{p.slug!r} permit valid until {p.expires_at:%Y-%m-%d %H:%M} UTC"
        return said, dict(project=p.slug, details={"expires_at": p.expires_at.isoformat() if p.expires_at else None})
    return _change(settings, who, "project.expiry_set", apply, project=project)


def set_airlock_rules(settings, who: Actor, project: str, **rules) -> dict:
    """The project's airlock rules (``airlock.rules.set_rules``' keywords: ``reviews`` is the number
    of independent reviews a request needs); returns the new rules."""
    def apply(db):
        new = set_rules(db, project, **rules).to_dict()
        return new, dict(project=project, details=new)
    return _change(settings, who, "airlock.rules", apply, project=project)


# --- what the page shows --------------------------------------------------------------------------
def memory_text(mem_mb: int) -> str:
    """MiB as the forms take them back: '4G', '512M'."""
    return f"{mem_mb // 1024}G" if mem_mb % 1024 == 0 else f"{mem_mb}M"


def bytes_text(n: int) -> str:
    """A size as ``parse_bytes`` reads it: '2G', '500M', 'none' for 0."""
    if not n:
        return "none"
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _expiry(value) -> str | None:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else None


def list_projects(settings) -> list[dict]:
    """Every project, by slug, with what the list page shows."""
    with vdb.session_scope(settings.vre_db_url) as db:
        return [{"slug": p.slug, "title": p.title, "members": len(p.members),
                 "datasets": [P.describe_grant(g) for g in sorted(p.grants, key=lambda g: g.dataset.slug)],
                 "profiles": sorted(pr.name for pr in p.profiles), "expires_at": _expiry(p.expires_at),
                 "expired": p.is_expired()}
                for p in db.scalars(select(vdb.Project).order_by(vdb.Project.slug))]


def project_details(settings, slug: str) -> dict:
    """One project with everything an admin changes on its page, the registered datasets it may be
    granted and the accounts that may join it (``NotFound`` for an unknown slug)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        p = P.get_project(db, slug)
        granted = {g.dataset.slug for g in p.grants}
        members = {m.account.name for m in p.members}
        rules = rules_of(p, db)
        return {
            "slug": p.slug, "title": p.title, "description": p.description,
            "expires_at": _expiry(p.expires_at), "expired": p.is_expired(),
            "members": sorted(members),
            "grants": [{**P.grant_summary(g), "title": g.dataset.title, "until": _expiry(g.expires_at)}
                       for g in sorted(p.grants, key=lambda g: g.dataset.slug)],
            "profiles": [{"name": pr.name, "cpu": pr.cpu, "memory": memory_text(pr.mem_mb), "gpus": pr.gpus,
                          "gpu_shared": pr.gpu_shared, "description": pr.description,
                          "node_selector": ",".join(f"{k}={v}" for k, v in sorted((pr.node_selector or {}).items())),
                          "describe": pr.describe()} for pr in sorted(p.profiles, key=lambda pr: pr.name)],
            "quota": {**P.job_quota(p), "memory": memory_text(p.job_mem_mb)},
            "audit_cells": p.audit_cells, "downloads": p.downloads, "egress_cap": bytes_text(p.egress_cap),
            "reviews_required": rules.reviews_required,
            "grantable": [{"slug": d.slug, "title": d.title} for d in db.scalars(
                select(vdb.Dataset).order_by(vdb.Dataset.slug)) if d.slug not in granted],
            "accounts": [a.name for a in db.scalars(select(vdb.Account).where(
                vdb.Account.role != "auditor", vdb.Account.disabled.is_(False)).order_by(vdb.Account.name))
                if a.name not in members],
        }


def number(text: str, what: str, kind: type = float, *, required: bool = False):
    """A number typed into a form (``kind``: int or float), '' as None (what is not given stays)
    unless ``required``."""
    value = (text or "").strip()
    if not value:
        if required:
            raise VREError(f"{what} is required: give {'a whole number' if kind is int else 'a number'}")
        return None
    try:
        return kind(value)
    except ValueError:
        raise VREError(f"{what} must be {'a whole number' if kind is int else 'a number'}, not {text!r}") from None
