"""The catalogue as researchers browse it: every dataset's published record, filtered by modality,
body part, condition and tier, with what the caller's projects hold of each and their requests.

Only the record's descriptive fields and counts leave this module (``PUBLIC_FIELDS``): never a
dataset's path, files or index. Anyone with an account may read every record; access to the files
is still only through a grant.
"""

from __future__ import annotations

from sqlalchemy import select

from .. import db as vdb

#: The catalogue record's fields a researcher sees (HealthDCAT-AP descriptive fields and counts).
PUBLIC_FIELDS = ("title", "description", "publisher", "access_rights", "condition", "interoperability_tier",
                 "keywords", "license", "contact_point", "modalities", "body_parts", "num_subjects",
                 "num_studies", "num_series", "num_instances", "age_range", "study_date_range")
#: Filter name -> how it matches a record (list fields match any element, case-insensitively).
FILTERS = {"modality": "modalities", "body_part": "body_parts", "condition": "condition",
           "tier": "interoperability_tier"}
#: What one project has of a dataset (``access``): a grant in force (interactive or batch-only), an
#: open request, or nothing (an expired grant is nothing).
ACCESS_STATES = ("granted", "batch-only", "requested", "not granted")


def public_record(dataset: vdb.Dataset) -> dict:
    cat = dataset.catalog or {}
    record = {k: cat[k] for k in PUBLIC_FIELDS if cat.get(k) not in (None, "", [])}
    record.setdefault("title", dataset.title)
    return {"slug": dataset.slug, **record}


def _values(record: dict, field: str) -> list[str]:
    value = record.get(field)
    return [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]


def _matches(record: dict, filters: dict[str, str]) -> bool:
    for name, wanted in filters.items():
        if wanted and wanted.lower() not in (v.lower() for v in _values(record, FILTERS[name])):
            return False
    return True


def facets(records: list[dict]) -> dict[str, list[str]]:
    """The values each filter can take, from all records (the filter menus)."""
    return {name: sorted({v for r in records for v in _values(r, field)}, key=str.lower)
            for name, field in FILTERS.items()}


def access_of(held: list[dict], requests: list[dict], project: str) -> str:
    """``project``'s state of one dataset (``ACCESS_STATES``), from a record's ``held`` and ``requests``."""
    for h in held:
        if h["project"] == project and not h["expired"]:
            return "batch-only" if h["mode"] == "batch-only" else "granted"
    return "requested" if any(r["project"] == project for r in requests) else "not granted"


def browse(db, username: str, filters: dict[str, str] | None = None, *, only_project: str | None = None) -> dict:
    """``{"datasets": [...], "facets": {...}, "projects": [...]}``: the records matching ``filters``
    (unknown filter names are ignored), each with ``held`` (the caller's projects that have it, with
    mode and expiry), ``requests`` (the caller's projects' open requests for it) and ``access``
    (project -> ``ACCESS_STATES``, for each of the caller's projects); ``projects``:
    the caller's projects (slug, title), those a request may be made for. ``only_project``: of the
    caller's projects only that one (a session's view)."""
    filters = {k: (v or "").strip() for k, v in (filters or {}).items() if k in FILTERS}
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == username))
    mine = sorted((m.project for m in account.memberships), key=lambda p: p.slug) if account else []
    if only_project is not None:
        mine = [p for p in mine if p.slug == only_project]
    mine_ids = {p.id for p in mine}
    open_requests = db.scalars(select(vdb.AccessRequest).where(vdb.AccessRequest.state == "open",
                                                               vdb.AccessRequest.project_id.in_(mine_ids))).all()
    datasets = db.scalars(select(vdb.Dataset).order_by(vdb.Dataset.slug)).all()
    records = [public_record(d) for d in datasets]
    rows = []
    for d, record in zip(datasets, records):
        if not _matches(record, filters):
            continue
        held = [{"project": g.project.slug, "mode": g.mode, "expired": g.is_expired(),
                 "until": f"{g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else None}
                for g in sorted(d.grants, key=lambda g: g.project.slug) if g.project_id in mine_ids]
        requests = [{"id": r.id, "project": r.project.slug, "mode": r.mode, "requester": r.requester.name}
                    for r in open_requests if r.dataset_id == d.id]
        busy = {h["project"] for h in held} | {r["project"] for r in requests}
        rows.append({**record, "held": held, "requests": requests,
                     "requestable": [p.slug for p in mine if p.slug not in busy],
                     "access": {p.slug: access_of(held, requests, p.slug) for p in mine}})
    return {"datasets": rows, "facets": facets(records), "filters": filters,
            "projects": [{"slug": p.slug, "title": p.title} for p in mine]}
