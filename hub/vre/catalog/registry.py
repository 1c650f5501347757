"""Registering datasets: validate the directory, index its DICOM headers, store the catalogue record.

The index and the record live in ``<state>/catalog/<slug>/`` (``index.sqlite``, ``record.json``)
and are shown read-only to sessions of projects granted the dataset. The dataset directory itself
is never written to.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Dataset, utcnow
from ..errors import VREError
from ..projects import get_dataset, validate_slug
from ..settings import Settings
from .index import CatalogError, IndexReport, index_dataset
from .metadata import build_record, summarize


def _check_readable_by_sessions(path: Path) -> None:
    """Sessions run as unprivileged uids: the tree must be world-readable (o+rX) down to the files."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise VREError(
                f"{parent} is not searchable by other users, so sessions (unprivileged uids) cannot "
                f"read the dataset; run: chmod o+x {parent}"
            )
    if not os.stat(path).st_mode & stat.S_IROTH:
        raise VREError(f"{path} is not readable by sessions; run: chmod -R o+rX {path}")


def dataset_dir(settings: Settings, slug: str) -> Path:
    return settings.catalog_dir / slug


def _index(settings: Settings, dataset: Dataset, admin_fields: dict, workers: int | None) -> IndexReport:
    out = dataset_dir(settings, dataset.slug)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o755)
    try:
        report = index_dataset(Path(dataset.path), out / "index.sqlite", workers=workers)
        record = build_record(admin_fields, summarize(out / "index.sqlite"))
    except CatalogError as e:
        raise VREError(str(e)) from None
    os.chmod(out / "index.sqlite", 0o644)
    record.update(slug=dataset.slug, path=f"/data/{dataset.slug}")
    (out / "record.json").write_text(json.dumps(record, indent=2, default=str))
    os.chmod(out / "record.json", 0o644)
    dataset.catalog = record
    dataset.title = record["title"]
    dataset.indexed_at = utcnow()
    return report


def add_dataset(db: Session, settings: Settings, path: str, slug: str, *, workers: int | None = None,
                **fields) -> tuple[Dataset, IndexReport]:
    """Register the directory ``path`` as dataset ``slug``; ``fields`` are the catalogue fields
    (title, description, publisher, access_rights, condition, interoperability_tier, keywords)."""
    validate_slug(slug, "dataset")
    root = Path(path).expanduser()
    if not root.exists():
        raise VREError(f"dataset path {path} does not exist")
    if not root.is_dir():
        raise VREError(f"dataset path {path} is not a directory: give the folder that holds the DICOM files")
    root = root.resolve()
    if db.scalar(select(Dataset).where(Dataset.slug == slug)) is not None:
        raise VREError(f"dataset slug {slug!r} is taken; choose another or use 'vre dataset reindex {slug}'")
    other = db.scalar(select(Dataset).where(Dataset.path == str(root)))
    if other is not None:
        raise VREError(f"{root} is already registered as dataset {other.slug!r}")
    for managed in (settings.projects_dir, settings.catalog_dir, settings.secrets_dir, settings.run_dir):
        if root == managed or managed in root.parents or root in managed.parents:
            raise VREError(f"{root} overlaps the VRE's own directory {managed}; keep datasets elsewhere")
    _check_readable_by_sessions(root)
    title = (fields.get("title") or "").strip()
    if not title:
        raise VREError("a dataset needs a --title")
    admin_fields = {k: v for k, v in fields.items() if v not in (None, "", [])}
    try:
        build_record(admin_fields, {})  # bad catalogue fields fail before the (long) indexing
    except CatalogError as e:
        raise VREError(str(e)) from None
    dataset = Dataset(slug=slug, title=title, path=str(root), catalog={})
    report = _index(settings, dataset, admin_fields, workers)
    db.add(dataset)
    db.flush()
    return dataset, report


def reindex(db: Session, settings: Settings, slug: str, *, workers: int | None = None) -> IndexReport:
    """Re-read changed files only; the catalogue record keeps the admin's descriptive fields."""
    from .metadata import CATALOG_FIELDS

    dataset = get_dataset(db, slug)
    if not Path(dataset.path).is_dir():
        raise VREError(f"dataset {slug!r}: its directory {dataset.path} is gone; restore it or remove the dataset")
    admin_fields = {k: dataset.catalog[k] for k in CATALOG_FIELDS if dataset.catalog.get(k) not in (None, "", [])}
    return _index(settings, dataset, admin_fields, workers)


def remove_dataset(db: Session, settings: Settings, slug: str) -> None:
    dataset = get_dataset(db, slug)
    if dataset.grants:
        projects = ", ".join(sorted(g.project.slug for g in dataset.grants))
        raise VREError(f"dataset {slug!r} is granted to {projects}; revoke those grants first")
    db.delete(dataset)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "record.json"):
        (dataset_dir(settings, slug) / name).unlink(missing_ok=True)
    try:
        dataset_dir(settings, slug).rmdir()
    except OSError:
        pass
