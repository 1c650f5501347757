"""Registering datasets: validate the directory, index its DICOM headers, store the catalogue record.

The index and the record live in ``<state>/catalog/<slug>/`` (``index.sqlite``, ``record.json``)
and are shown read-only to sessions of projects granted the dataset. The dataset directory itself
is never written to.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db import AccessRequest, Dataset, utcnow
from ..errors import Conflict, VREError
from ..hostfiles import locked
from ..projects import get_dataset, validate_slug
from ..settings import Settings, dataset_roots
from . import cluster
from .index import CatalogError, IndexReport, index_dataset
from .metadata import CATALOG_FIELDS, build_record, summarize

#: ``progress(done, total)``: headers read so far, of how many (``index_dataset``'s callback).
Progress = Callable[[int, int], None]


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


def _write_record(settings: Settings, dataset: Dataset, record: dict) -> None:
    """Publish ``record`` (``record.json``, sessions read it) and keep it on the dataset's row."""
    record = {**record, "slug": dataset.slug, "path": f"/data/{dataset.slug}"}
    out = dataset_dir(settings, dataset.slug) / "record.json"
    out.write_text(json.dumps(record, indent=2, default=str))
    os.chmod(out, 0o644)
    dataset.catalog = record  # a new dict: the JSON column sees the change
    dataset.title = record["title"]


def _index(settings: Settings, dataset: Dataset, admin_fields: dict, workers: int | None,
           progress: Progress | None = None) -> IndexReport:
    out = dataset_dir(settings, dataset.slug)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o755)
    locks = settings.run_dir / "indexing"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:   # one indexing of a dataset at a time, whoever asks (the page, the CLI): one index file
        with locked(locks / f"{dataset.slug}.lock", wait=False):
            return _index_now(settings, dataset, admin_fields, workers, progress, out)
    except BlockingIOError:
        raise Conflict(f"dataset {dataset.slug!r} is being indexed now; try again when that has finished") from None


def _index_now(settings: Settings, dataset: Dataset, admin_fields: dict, workers: int | None,
               progress: Progress | None, out: Path) -> IndexReport:
    try:
        if cluster.in_cluster(settings):
            report = cluster.index_in_cluster(settings, dataset.slug, dataset.path, out / "index.sqlite", progress)
        else:
            report = _index_locally(Path(dataset.path), out / "index.sqlite", workers, progress)
        record = build_record(admin_fields, summarize(out / "index.sqlite"))
    except CatalogError as e:
        raise VREError(str(e)) from None
    os.chmod(out / "index.sqlite", 0o644)
    _write_record(settings, dataset, record)
    dataset.indexed_at = utcnow()
    return report


def _index_locally(root: Path, index: Path, workers: int | None, progress: Progress | None) -> IndexReport:
    """``index_dataset`` on a copy of ``index``, which then takes its place (one rename): whoever
    reads the index meanwhile (a session pod's catalogue fetch, streaming it from an open file; a
    session with it open) reads one whole index, the one before or the one after, never a mix.
    A failure leaves the index as it was. (The copy needs room for a second index meanwhile.)"""
    fd, name = tempfile.mkstemp(prefix=f".{index.name}.", suffix=".new", dir=index.parent)
    os.close(fd)
    new = Path(name)
    try:
        if index.exists():
            shutil.copyfile(index, new)   # what is unchanged is not read again
        report = index_dataset(root, new, workers=workers, progress=progress)
        os.chmod(new, 0o644)   # as sessions read it (mkstemp made it the hub's alone)
        index.with_name(index.name + "-journal").unlink(missing_ok=True)   # of a write before copies
        new.replace(index)
        return report
    finally:
        for leftover in (new, new.with_name(new.name + "-journal")):
            leftover.unlink(missing_ok=True)


#: Never a dataset, nor anything below them.
_SYSTEM = tuple(Path(p) for p in ("/etc", "/proc", "/sys", "/dev", "/boot", "/run"))
#: Never a dataset themselves (too broad), though a folder below them may be.
_TOO_BROAD = tuple(Path(p) for p in ("/", "/home", "/usr", "/var", "/srv", "/opt", "/mnt", "/media", "/tmp"))


def check_new_dataset(db: Session, settings: Settings, path: str, slug: str, **fields) -> tuple[Path, dict]:
    """What registering ``path`` as ``slug`` checks before the (long) indexing: the slug, the
    directory, that sessions can read it, that neither is registered, the catalogue fields.
    Returns the resolved directory and the fields to publish."""
    validate_slug(slug, "dataset")
    if cluster.in_cluster(settings):
        return _check_new_in_cluster(db, settings, path, slug, **fields)
    root = Path(path).expanduser()
    if not root.exists():
        raise VREError(f"dataset path {path} does not exist")
    if not root.is_dir():
        raise VREError(f"dataset path {path} is not a directory: give the folder that holds the DICOM files")
    root = root.resolve()
    _check_free(db, slug, root)
    for managed in (settings.projects_dir, settings.catalog_dir, settings.secrets_dir, settings.run_dir):
        if root == managed or managed in root.parents or root in managed.parents:
            raise VREError(f"{root} overlaps the VRE's own directory {managed}; keep datasets elsewhere")
    allowed = dataset_roots(settings)
    if allowed and not any(root == r or r in root.parents for r in allowed):
        raise VREError(f"{root} is outside the folders datasets may come from (dataset_roots: "
                       f"{', '.join(map(str, allowed))}); move the data there or ask the operator to add its folder")
    if root in _TOO_BROAD or any(root == s or s in root.parents for s in _SYSTEM):
        raise VREError(f"{root} is a system folder, not a dataset: give the folder that holds the DICOM files")
    _check_readable_by_sessions(root)
    return root, _check_fields(fields)


def _check_free(db: Session, slug: str, root: Path) -> None:
    """Neither the slug nor the folder (nor one around or inside it) is registered: one folder,
    one dataset, so that grants mean one thing."""
    if db.scalar(select(Dataset).where(Dataset.slug == slug)) is not None:
        raise Conflict(f"dataset slug {slug!r} is taken; choose another or use 'vre dataset reindex {slug}'")
    for other in db.scalars(select(Dataset)).all():
        there = Path(other.path)
        if root == there:
            raise Conflict(f"{root} is already registered as dataset {other.slug!r}")
        if there in root.parents or root in there.parents:
            raise Conflict(f"{root} overlaps dataset {other.slug!r} ({there}): a file would belong to two datasets "
                           "with different grants; register a folder beside it")


def _check_fields(fields: dict) -> dict:
    """The catalogue fields to publish; bad ones fail before the (long) indexing."""
    title = (fields.get("title") or "").strip()
    if not title:
        raise VREError("a dataset needs a --title")
    admin_fields = {k: v for k, v in fields.items() if v not in (None, "", [])}
    try:
        build_record(admin_fields, {})
    except CatalogError as e:
        raise VREError(str(e)) from None
    return admin_fields


def _check_new_in_cluster(db: Session, settings: Settings, path: str, slug: str, **fields) -> tuple[Path, dict]:
    """``check_new_dataset`` where the hub cannot see the dataset (``cluster.in_cluster``): a
    claim's is its claim (``path`` empty or that), an NFS export's its path on the server; the
    Job that indexes it finds out whether it is there."""
    if source_kind(settings) == "claim":
        claim = cluster.claim_path(slug)
        if path and path != claim:
            raise VREError(f"this deployment's datasets are claims (k8s_dataset_volume = pvc): leave the path out; "
                           f"dataset {slug!r} is the claim {claim.removeprefix('claim:')} in namespace "
                           f"{cluster.namespace(settings)} (to index it) and in each granted project's")
        root = Path(claim)
    else:
        if not path.startswith("/") or "\x00" in path:
            raise VREError(f"give the folder's absolute path on the NFS server {settings.k8s_nfs_server} "
                           f"(got {path!r})")
        root = _where(settings, path)
        if root in _TOO_BROAD or any(root == s or s in root.parents for s in _SYSTEM):
            raise VREError(f"{root} is a system folder, not a dataset: give the folder that holds the DICOM files")
    _check_free(db, slug, root)
    allowed = dataset_roots(settings)
    if allowed and settings.k8s_dataset_volume == "nfs" and not any(root == r or r in root.parents for r in allowed):
        raise VREError(f"{root} is outside the folders datasets may come from (dataset_roots: "
                       f"{', '.join(map(str, allowed))})")
    return root, _check_fields(fields)


def source_kind(settings: Settings) -> str:
    """Where a registration's path is: ``host`` (a folder the hub reads), ``nfs`` (a path on the
    NFS server) or ``claim`` (none: the claim ``dataset-<slug>``)."""
    if not cluster.in_cluster(settings):
        return "host"
    return "claim" if settings.k8s_dataset_volume == "pvc" else "nfs"


def given_path(settings: Settings, path: str, slug: str) -> str:
    """The path a registration names: the admin's, or a claim dataset's claim (no path given)."""
    if not path.strip() and source_kind(settings) == "claim":
        return cluster.claim_path(slug)
    if not path.strip():
        raise VREError("give the dataset's folder (an absolute path)")
    return path


def _where(settings: Settings, path: str) -> Path:
    """The folder a registration is of, to tell overlapping ones: where the hub cannot look, the
    path itself, normalised (one leading '/': '//x' is '/x')."""
    if not cluster.in_cluster(settings):
        return Path(path).expanduser().resolve()
    return Path(path) if path.startswith("claim:") else Path("/" + os.path.normpath(path).lstrip("/"))


@contextlib.contextmanager
def registering(settings: Settings, slug: str, path: str):
    """Held from a registration's checks until its commit (the CLI's and the page's alike): the
    database shows a registration only once it is committed, so two at once would both pass its
    checks (the slug free, the folders apart) and index into the same catalogue place. Conflict,
    naming the registration under way, when one with the same slug or an overlapping folder is.
    Others run side by side (indexing a large cohort takes long)."""
    folder = settings.run_dir / "registering"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = _where(settings, path)
    mine = folder / f"{slug}.json"
    with contextlib.ExitStack() as entry:
        with locked(folder / ".lock"):  # briefly: the look at the others and the own entry
            _check_under_way(folder, slug, root)
            fd = entry.enter_context(locked(mine))   # held for the registration's life
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"slug": slug, "path": str(root)}).encode())
        try:
            yield
        finally:
            mine.unlink(missing_ok=True)


def check_not_under_way(settings: Settings, slug: str, path: str) -> None:
    """Conflict when a registration of ``slug`` or of a folder overlapping ``path`` is under way
    (the page's quick check, before it starts its own in the background)."""
    folder = settings.run_dir / "registering"
    if folder.is_dir():
        with locked(folder / ".lock"):
            _check_under_way(folder, slug, _where(settings, path))


def _check_under_way(folder: Path, slug: str, root: Path) -> None:
    for entry in folder.glob("*.json"):
        try:
            with locked(entry, wait=False):  # its registration ended without removing it
                entry.unlink(missing_ok=True)
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        other = json.loads(entry.read_text() or "{}")
        there = Path(other.get("path", "/nonexistent"))
        if other.get("slug") == slug or root == there or there in root.parents or root in there.parents:
            raise Conflict(f"dataset {other.get('slug')!r} ({there}) is being registered now; "
                           f"register {slug!r} ({root}) when that has finished")


def add_dataset(db: Session, settings: Settings, path: str, slug: str, *, workers: int | None = None,
                progress: Progress | None = None, **fields) -> tuple[Dataset, IndexReport]:
    """Register the directory ``path`` as dataset ``slug``; ``fields`` are the catalogue fields
    (title, description, publisher, access_rights, condition, interoperability_tier, keywords)."""
    root, admin_fields = check_new_dataset(db, settings, path, slug, **fields)
    dataset = Dataset(slug=slug, title=admin_fields["title"].strip(), path=str(root), catalog={})
    report = _index(settings, dataset, admin_fields, workers, progress)
    db.add(dataset)
    db.flush()
    return dataset, report


def admin_fields_of(dataset: Dataset) -> dict:
    """The catalogue fields an admin set (the rest of the record is computed from the index)."""
    return {k: dataset.catalog[k] for k in CATALOG_FIELDS if dataset.catalog.get(k) not in (None, "", [])}


def check_reindex(db: Session, settings: Settings, slug: str) -> Dataset:
    """What ``reindex`` checks before indexing: the dataset exists and its directory is there
    (where the hub sees it; else the Job that indexes it finds out)."""
    dataset = get_dataset(db, slug)
    if not cluster.in_cluster(settings) and not Path(dataset.path).is_dir():
        raise VREError(f"dataset {slug!r}: its directory {dataset.path} is gone; restore it or remove the dataset")
    return dataset


def reindex(db: Session, settings: Settings, slug: str, *, workers: int | None = None,
            progress: Progress | None = None) -> IndexReport:
    """Re-read changed files only; the catalogue record keeps the admin's descriptive fields."""
    dataset = check_reindex(db, settings, slug)
    return _index(settings, dataset, admin_fields_of(dataset), workers, progress)


def update_record(db: Session, settings: Settings, slug: str, changes: dict) -> list[str]:
    """Change the catalogue fields in ``changes`` (None: unchanged, '' or []: cleared; the title
    cannot be cleared) and publish the record again; the computed part stays. Returns the names
    of the fields that changed."""
    dataset = get_dataset(db, slug)
    before = admin_fields_of(dataset)
    fields = {**before, **{k: v for k, v in changes.items() if v is not None}}
    fields = {k: v for k, v in fields.items() if v not in ("", [])}
    try:
        admin = build_record(fields, {})
    except CatalogError as e:
        raise VREError(str(e)) from None
    changed = sorted(k for k in set(before) | set(admin) if before.get(k) != admin.get(k))
    if changed:
        computed = {k: v for k, v in dataset.catalog.items() if k not in CATALOG_FIELDS}
        dataset_dir(settings, slug).mkdir(parents=True, exist_ok=True)
        _write_record(settings, dataset, {**admin, **computed})
    return changed


def remove_dataset(db: Session, settings: Settings, slug: str) -> None:
    dataset = get_dataset(db, slug)
    if dataset.grants:
        projects = ", ".join(sorted(g.project.slug for g in dataset.grants))
        raise Conflict(f"dataset {slug!r} is granted to {projects}; revoke those grants first")
    waiting = db.scalars(select(AccessRequest).where(AccessRequest.dataset_id == dataset.id,
                                                     AccessRequest.state == "open")).all()
    if waiting:  # retiring would drop them unanswered: the requesters are owed a decision
        ids = ", ".join(f"#{r.id} ({r.project.slug})" for r in waiting)
        raise Conflict(f"dataset {slug!r} has open access requests: {ids}; approve or deny them first")
    # Decided requests stay, under the slug they kept (the history of who asked and who decided).
    # The foreign key sets NULL too; done here as well so that no request is left pointing at an
    # id SQLite may hand to the next dataset registered.
    db.execute(update(AccessRequest).where(AccessRequest.dataset_id == dataset.id).values(dataset_id=None)
               .execution_options(synchronize_session=False))
    db.delete(dataset)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "record.json"):
        (dataset_dir(settings, slug) / name).unlink(missing_ok=True)
    try:
        dataset_dir(settings, slug).rmdir()
    except OSError:
        pass
