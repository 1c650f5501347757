"""Dataset administration shared by the CLI (``vre dataset add|reindex|edit|remove``) and the Datasets
admin page (``vre.api.admin_datasets``): one function per change, so both follow the same rules
(``vre.catalog.registry``'s) and record the same audit event (``dataset.register``,
``dataset.reindex``, ``dataset.update``, ``dataset.remove``, with ``dataset=<slug>``).

Who acts is an ``access_requests.Actor``: the CLI's operator (root at the hub's console, acting as
an admin) or an admin account in the browser (``via=web``, with the client's address). The acting
account must be an active admin; refusals by that rule are recorded (``outcome=denied``) before
they are raised. Other errors (a bad path, a taken slug) are raised as ``VREError`` subclasses whose
message says what to fix, and change nothing.
"""

from __future__ import annotations

from sqlalchemy import select

from . import admin
from . import db as vdb
from .access_requests import Actor, Forbidden
from .catalog.index import IndexReport
from .catalog.metadata import CATALOG_FIELDS
from .catalog import registry
from .projects import get_dataset


def _audit(settings, who: Actor, action: str, slug: str, *, outcome: str = "ok", target: str = "",
           **details) -> None:
    admin.audit(settings, who, action, target, outcome=outcome, dataset=slug, details=details)


def _check_admin(settings, db, who: Actor, action: str, slug: str) -> None:
    """Admins only (the operator always); a refusal is recorded, then raised."""
    try:
        admin.check_admin(db, who, "manage datasets")
    except Forbidden as refused:
        _audit(settings, who, action, slug, outcome="denied", reason=str(refused))
        raise


def check_register(settings, who: Actor, path: str, slug: str, fields: dict) -> None:
    """Everything ``register`` checks before indexing (quick): the page calls it before it starts
    the indexing in the background, so that a bad path comes back on the form."""
    path = registry.given_path(settings, path, slug)
    with vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.register", slug)
        registry.check_new_dataset(db, settings, path, slug, **fields)
    registry.check_not_under_way(settings, slug, path)


def register(settings, who: Actor, path: str, slug: str, fields: dict, *, workers: int | None = None,
             progress: registry.Progress | None = None) -> tuple[str, IndexReport]:
    """Register directory ``path`` as dataset ``slug`` with the catalogue ``fields``
    (``CATALOG_FIELDS``) and index it; returns the resolved path and the index report. Another
    registration of the same slug or an overlapping folder under way is a Conflict
    (``registry.registering``). Where the datasets are claims on Kubernetes, ``path`` is empty
    (the claim ``dataset-<slug>``); where the hub cannot read them, a Job indexes them
    (``catalog.cluster``)."""
    path = registry.given_path(settings, path, slug)
    with registry.registering(settings, slug, path), vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.register", slug)
        dataset, report = registry.add_dataset(db, settings, path, slug, workers=workers, progress=progress,
                                               **fields)
        where = dataset.path
    _audit(settings, who, "dataset.register", slug, target=where,
           files=report.files_seen, errors=report.errors, series=report.series)
    return where, report


def check_reindex(settings, who: Actor, slug: str) -> None:
    """What ``reindex`` checks before indexing (for the page, as ``check_register``)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.reindex", slug)
        registry.check_reindex(db, settings, slug)


def reindex(settings, who: Actor, slug: str, *, workers: int | None = None,
            progress: registry.Progress | None = None) -> IndexReport:
    """Re-read the dataset's new and changed files; the catalogue record keeps the admin's fields."""
    with vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.reindex", slug)
        report = registry.reindex(db, settings, slug, workers=workers, progress=progress)
    _audit(settings, who, "dataset.reindex", slug, read=report.files_indexed)
    return report


def update(settings, who: Actor, slug: str, changes: dict) -> list[str]:
    """Change catalogue fields (None: unchanged, '': cleared); returns the names of those that
    changed (none changed: nothing recorded)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.update", slug)
        changed = registry.update_record(db, settings, slug, changes)
    if changed:
        _audit(settings, who, "dataset.update", slug, changed=changed)
    return changed


def remove(settings, who: Actor, slug: str) -> None:
    """Unregister the dataset (refused while granted or requested); its files are untouched, its
    decided access requests kept."""
    with vdb.session_scope(settings.vre_db_url) as db:
        _check_admin(settings, db, who, "dataset.remove", slug)
        registry.remove_dataset(db, settings, slug)
    _audit(settings, who, "dataset.remove", slug)


def _row(d: vdb.Dataset) -> dict:
    cat = d.catalog or {}
    return {"slug": d.slug, "title": d.title, "path": d.path, "modalities": cat.get("modalities", []),
            "subjects": cat.get("num_subjects"), "series": cat.get("num_series"),
            "granted_to": sorted(g.project.slug for g in d.grants),
            "indexed_at": vdb.as_utc(d.indexed_at).isoformat() if d.indexed_at else None}


def list_datasets(settings) -> list[dict]:
    """Every registered dataset, by slug, with what the admin's list shows."""
    with vdb.session_scope(settings.vre_db_url) as db:
        return [_row(d) for d in db.scalars(select(vdb.Dataset).order_by(vdb.Dataset.slug))]


def describe(settings, slug: str) -> dict:
    """One dataset: the list's row, the catalogue fields an admin sets (``fields``) and the whole
    published record (``record``). ``NotFound`` if unknown."""
    with vdb.session_scope(settings.vre_db_url) as db:
        d = get_dataset(db, slug)
        return {**_row(d), "fields": {k: (d.catalog or {}).get(k) for k in CATALOG_FIELDS},
                "record": dict(d.catalog or {})}
