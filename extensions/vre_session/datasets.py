"""The session's datasets: the manifest, catalogue records, and fast browsing of the DICOM index.

Inside a session, ``$VRE_SESSION`` (``/etc/vre/session.json``) lists the granted datasets, each
with its files (``/data/<slug>``, read-only) and its catalogue directory
(``/opt/vre/catalog/<slug>/{index.sqlite,record.json}``, read-only), and under ``catalogue_only``
the project's batch-only datasets: their catalogue records alone (their files reach batch jobs
only). The index is the one ``vre.catalog.index`` writes (tables ``files``, ``patients``,
``studies``, ``series``); this module only reads it, through read-only SQLite connections, and
never imports the hub's code.

Browsing must stay fast on 100,000 series, and the index has no indexes for the browse order
(patient, study date, series description) nor for substring search. So each dataset's series are
copied once, joined with their study and already sorted, into an in-memory SQLite table with a
lower-cased search column and a few indexes; browse, count and drill-down queries are SQL
(LIMIT/OFFSET, or a page of rowids) on that table, with substring terms matched by a scan of the
search column kept as a Python list (several times faster than SQLite's instr()). The copy is rebuilt when the index file changes (re-indexing), and is
started in the background when the extension loads, so the first page is normally warm.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("vre_session")

DEFAULT_MANIFEST = "/etc/vre/session.json"
DEFAULT_DATA_ROOT = "/data"
DEFAULT_CATALOG_ROOT = "/opt/vre/catalog"
MAX_LIMIT = 1000
BATCH_ONLY_NOTE = "batch-only: available to batch jobs"


class NotFound(LookupError):
    """The named dataset, series or study is not in this session; the message says which."""


class BadRequest(ValueError):
    """A bad query parameter; the message says what to send instead."""


@dataclass(frozen=True)
class DatasetRef:
    slug: str
    path: str      # the dataset's files, e.g. /data/<slug>
    catalog: str   # its catalogue directory, e.g. /opt/vre/catalog/<slug>

    @property
    def index_path(self) -> str:
        return os.path.join(self.catalog, "index.sqlite")

    @property
    def record_path(self) -> str:
        return os.path.join(self.catalog, "record.json")


@dataclass(frozen=True)
class Manifest:
    user: str | None
    project: str | None
    datasets: dict[str, DatasetRef]
    data_root: str       # where datasets are mounted (the parent of their paths), /data
    catalog_root: str    # where catalogue directories are mounted, /opt/vre/catalog
    #: Batch-only datasets of the project: slug -> catalogue record (no files in the session).
    catalogue_only: dict[str, dict] = field(default_factory=dict)


def _common_parent(paths: list[str], default: str) -> str:
    parents = {os.path.dirname(os.path.normpath(p)) for p in paths}
    return parents.pop() if len(parents) == 1 else default


def load_manifest(path: str | None = None) -> Manifest:
    """The session manifest; an empty one (no datasets) when there is none (outside the VRE)."""
    path = path or os.environ.get("VRE_SESSION") or DEFAULT_MANIFEST
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as e:
        log.error("VRE: cannot read the session manifest %s (%s); no datasets are shown", path, e)
        data = {}
    refs = {}
    for item in data.get("datasets") or []:
        if not isinstance(item, dict) or not isinstance(item.get("slug"), str):
            continue
        slug = item["slug"]
        refs[slug] = DatasetRef(slug, str(item.get("path") or f"{DEFAULT_DATA_ROOT}/{slug}"),
                                str(item.get("catalog") or f"{DEFAULT_CATALOG_ROOT}/{slug}"))
    data_root = _common_parent([r.path for r in refs.values()], DEFAULT_DATA_ROOT)
    catalog_root = _common_parent([r.catalog for r in refs.values()], DEFAULT_CATALOG_ROOT)
    records = {item["slug"]: item.get("record") if isinstance(item.get("record"), dict) else None
               for item in data.get("catalogue_only") or []
               if isinstance(item, dict) and isinstance(item.get("slug"), str) and item["slug"] not in refs}
    return Manifest(data.get("user"), data.get("project"), refs, data_root, catalog_root, records)


def open_index(index_path: str) -> sqlite3.Connection:
    """Read-only connection to a dataset index (the mount is read-only too)."""
    if not os.path.isfile(index_path):
        raise NotFound(f"the dataset has no index at {index_path}; ask an admin to index it")
    conn = sqlite3.connect(f"{Path(index_path).absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


# --- the in-memory browse table ------------------------------------------------------------
_BROWSE_COLUMNS = ("series_uid", "study_uid", "patient_id", "study_date", "study_description", "accession",
                   "modality", "body_part", "description", "manufacturer", "rows", "columns", "pixel_spacing",
                   "slice_thickness", "num_instances", "relpath_dir")
_BUILD = """
CREATE TABLE browse AS
SELECT s.series_uid, s.study_uid, st.patient_id, st.study_date, st.description AS study_description,
       st.accession, s.modality, s.body_part, s.description, s.manufacturer, s.rows, s.columns,
       s.pixel_spacing, s.slice_thickness, s.num_instances, s.relpath_dir,
       vre_lower(coalesce(s.description, '') || char(31) || coalesce(st.description, '') || char(31) ||
                 coalesce(st.patient_id, '') || char(31) || coalesce(s.series_uid, '') || char(31) ||
                 coalesce(s.study_uid, '') || char(31) || coalesce(st.accession, '') || char(31) ||
                 coalesce(s.manufacturer, '') || char(31) || coalesce(s.body_part, '') || char(31) ||
                 coalesce(s.modality, '')) AS hay
FROM idx.series s LEFT JOIN idx.studies st ON st.study_uid = s.study_uid
ORDER BY coalesce(st.patient_id, ''), coalesce(st.study_date, ''), coalesce(s.description, ''), s.series_uid;
CREATE TABLE patients AS SELECT patient_id, sex, age_years FROM idx.patients;
CREATE INDEX browse_modality ON browse (modality);
CREATE INDEX browse_body_part ON browse (body_part);
CREATE INDEX browse_patient ON browse (patient_id);
CREATE INDEX browse_study ON browse (study_uid);
CREATE INDEX patients_id ON patients (patient_id);
"""


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Catalog:
    """One dataset: its record, its browse table, and the files of its series."""

    def __init__(self, ref: DatasetRef):
        self.ref = ref
        self._lock = threading.Lock()      # guards the memory connection (one query at a time)
        self._build_lock = threading.Lock()
        self._mem: sqlite3.Connection | None = None
        self._hay: list[str] = []  # browse.hay by rowid - 1
        self._mem_stamp: tuple | None = None
        self._record: dict | None = None
        self._record_stamp: tuple | None = None
        self.build_seconds: float | None = None

    # -- record -----------------------------------------------------------------------------
    def record(self) -> dict | None:
        """The catalogue record (record.json), re-read when it changes; None if missing."""
        stamp = _stamp(self.ref.record_path)
        if stamp is None:
            return None
        if stamp != self._record_stamp:
            try:
                with open(self.ref.record_path) as f:
                    self._record = json.load(f)
            except (OSError, ValueError) as e:
                log.warning("VRE: unreadable catalogue record %s: %s", self.ref.record_path, e)
                self._record = None
            self._record_stamp = stamp
        return self._record

    def index_stamp(self) -> tuple | None:
        return _stamp(self.ref.index_path)

    # -- browse table -------------------------------------------------------------------------
    def _memory(self) -> sqlite3.Connection:
        """The browse table, (re)built if the index changed since."""
        stamp = _stamp(self.ref.index_path)
        if stamp is None:
            raise NotFound(f"dataset {self.ref.slug!r} has no index yet; ask an admin to index it")
        if self._mem is not None and stamp == self._mem_stamp:
            return self._mem
        with self._build_lock:
            if self._mem is not None and stamp == self._mem_stamp:
                return self._mem
            import time

            started = time.perf_counter()
            mem = sqlite3.connect(":memory:", uri=True, check_same_thread=False)
            mem.create_function("vre_lower", 1, _lower, deterministic=True)
            try:
                mem.execute("ATTACH DATABASE ? AS idx", (f"{Path(self.ref.index_path).absolute().as_uri()}?mode=ro",))
                mem.executescript(_BUILD)
                mem.execute("DETACH DATABASE idx")
            except sqlite3.Error as e:
                mem.close()
                raise NotFound(f"the index of dataset {self.ref.slug!r} cannot be read ({e}); "
                               "ask an admin to re-index it") from None
            hay = [h for (h,) in mem.execute("SELECT hay FROM browse ORDER BY rowid")]
            (last,) = mem.execute("SELECT COALESCE(MAX(rowid), 0) FROM browse").fetchone()
            assert last == len(hay), "browse rowids must be 1..n"
            mem.row_factory = sqlite3.Row
            self.build_seconds = time.perf_counter() - started
            log.info("VRE: browse table of %s built in %.2f s", self.ref.slug, self.build_seconds)
            with self._lock:
                old, self._mem, self._hay, self._mem_stamp = self._mem, mem, hay, stamp
            if old is not None:
                old.close()
            return mem

    def warm(self) -> None:
        try:
            self._memory()
        except Exception as e:  # warming is best effort; requests report the problem
            log.warning("VRE: could not prepare dataset %s: %s", self.ref.slug, e)

    def _query(self, sql: str, args: list) -> list[sqlite3.Row]:
        mem = self._memory()
        with self._lock:
            return mem.execute(sql, args).fetchall()

    @staticmethod
    def _where(*, modality=None, body_part=None, q=None, patient=None, study=None) -> tuple[str, list]:
        where, args = [], []
        for column, value in (("modality", modality), ("body_part", body_part)):
            if value:
                values = [v.strip().upper() for v in str(value).split(",") if v.strip()]
                if values:
                    where.append(f"b.{column} IN ({', '.join('?' * len(values))})")
                    args += values
        if patient is not None:
            where.append("b.patient_id = ?")
            args.append(patient)
        if study is not None:
            where.append("b.study_uid = ?")
            args.append(study)
        for term in (q or "").lower().split():
            where.append("instr(b.hay, ?) > 0")
            args.append(term)
        return (" WHERE " + " AND ".join(where)) if where else "", args

    @staticmethod
    def _page(limit, offset) -> tuple[int, int]:
        try:
            limit, offset = int(limit), int(offset)
        except (TypeError, ValueError):
            raise BadRequest("limit and offset must be whole numbers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise BadRequest(f"limit must be 1..{MAX_LIMIT} and offset >= 0, got {limit} and {offset}")
        return limit, offset

    def browse(self, *, modality=None, body_part=None, q=None, patient=None, study=None,
               limit=50, offset=0) -> dict:
        """Series matching all filters, in (patient, study date, description) order, one page.

        ``modality``/``body_part``: exact, case-insensitive, comma-separated alternatives;
        ``q``: whitespace-separated terms, each a case-insensitive substring of the series or
        study description, patient ID, series/study UID, accession, manufacturer, body part or
        modality; ``patient``/``study``: exact IDs (drill-down)."""
        limit, offset = self._page(limit, offset)
        where, args = self._where(modality=modality, body_part=body_part, patient=patient, study=study)
        terms = (q or "").lower().split()
        mem = self._memory()
        hay = self._hay
        columns = ", ".join(f"b.{c}" for c in _BROWSE_COLUMNS)
        with self._lock:
            if not where and not terms:
                total = mem.execute("SELECT COUNT(*) FROM browse").fetchone()[0]
                rows = mem.execute(f"SELECT {columns} FROM browse b ORDER BY b.rowid LIMIT ? OFFSET ?",
                                   [limit, offset]).fetchall()
            else:
                # One pass finds every match (for the count and the page): exact filters through the
                # table's indexes, substring terms over the lower-cased search strings (a Python scan
                # of 100,000 strings is ~5x faster than SQLite's instr()); the page is then fetched
                # by rowid. Rowids are 1..n in browse order.
                terms.sort(key=len, reverse=True)  # the longest term is usually the most selective
                if where:
                    ids = [r[0] for r in mem.execute(f"SELECT b.rowid FROM browse b{where} ORDER BY b.rowid", args)]
                else:
                    term = terms.pop(0)
                    ids = [i for i, h in enumerate(hay, 1) if term in h]
                for term in terms:
                    ids = [i for i in ids if term in hay[i - 1]]
                total, page = len(ids), ids[offset:offset + limit]
                rows = mem.execute(f"SELECT {columns} FROM browse b WHERE b.rowid IN ({', '.join('?' * len(page))}) "
                                   "ORDER BY b.rowid", page).fetchall() if page else []
        return {"total": total, "limit": limit, "offset": offset, "items": [_series_item(r) for r in rows]}

    def patients(self, *, q=None, modality=None, body_part=None, limit=50, offset=0) -> dict:
        """Patients having at least one matching series, by patient ID, with counts."""
        limit, offset = self._page(limit, offset)
        where, args = self._where(modality=modality, body_part=body_part, q=q)
        mem = self._memory()
        with self._lock:
            total = mem.execute(f"SELECT COUNT(DISTINCT b.patient_id) FROM browse b{where}", args).fetchone()[0]
            rows = mem.execute(
                f"""SELECT b.patient_id, COUNT(DISTINCT b.study_uid) AS num_studies, COUNT(*) AS num_series,
                           group_concat(DISTINCT b.modality) AS modalities,
                           (SELECT p.sex FROM patients p WHERE p.patient_id = b.patient_id) AS sex,
                           (SELECT p.age_years FROM patients p WHERE p.patient_id = b.patient_id) AS age_years
                    FROM browse b{where} GROUP BY b.patient_id ORDER BY b.patient_id LIMIT ? OFFSET ?""",
                [*args, limit, offset]).fetchall()
        items = [{"patient_id": r["patient_id"], "sex": r["sex"], "age_years": r["age_years"],
                  "num_studies": r["num_studies"], "num_series": r["num_series"],
                  "modalities": sorted(set((r["modalities"] or "").split(",")) - {""})} for r in rows]
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    def studies(self, *, patient=None, q=None, modality=None, body_part=None, limit=50, offset=0) -> dict:
        """Studies (of ``patient`` if given) with matching series, by patient and date."""
        limit, offset = self._page(limit, offset)
        where, args = self._where(modality=modality, body_part=body_part, q=q, patient=patient)
        mem = self._memory()
        with self._lock:
            total = mem.execute(f"SELECT COUNT(DISTINCT b.study_uid) FROM browse b{where}", args).fetchone()[0]
            rows = mem.execute(
                f"""SELECT b.study_uid, MAX(b.patient_id) AS patient_id, MAX(b.study_date) AS study_date,
                           MAX(b.study_description) AS study_description, MAX(b.accession) AS accession,
                           COUNT(*) AS num_series, SUM(b.num_instances) AS num_instances,
                           group_concat(DISTINCT b.modality) AS modalities, MIN(b.rowid) AS first
                    FROM browse b{where} GROUP BY b.study_uid ORDER BY first LIMIT ? OFFSET ?""",
                [*args, limit, offset]).fetchall()
        items = [{"study_uid": r["study_uid"], "patient_id": r["patient_id"], "study_date": r["study_date"],
                  "study_description": r["study_description"], "accession": r["accession"],
                  "num_series": r["num_series"], "num_instances": r["num_instances"],
                  "modalities": sorted(set((r["modalities"] or "").split(",")) - {""})} for r in rows]
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    # -- files --------------------------------------------------------------------------------
    def series_instances(self, series_uid: str, facts_from_index=None) -> list[tuple[str, dict | None]]:
        """``(path, header facts or None)`` of the readable files of a series, in index order
        (paths that would leave the dataset folder are dropped). The
        facts are those the index recorded at registration (``files.viewer``, turned into
        ``read_instance`` output by ``facts_from_index``, with the UIDs from their own columns), given only when the file
        still has the size and mtime it had then; None means "read the header" (older index,
        enhanced multi-frame file, file changed since)."""
        conn = open_index(self.ref.index_path)
        try:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('viewer_fields', 'viewer_columns')")) \
                if "viewer" in columns and facts_from_index is not None else {}
            try:
                fields = json.loads(meta["viewer_fields"])
                in_columns = json.loads(meta["viewer_columns"])
                ok = isinstance(fields, list) and isinstance(in_columns, dict) and set(in_columns.values()) <= columns
            except (KeyError, ValueError):
                ok = False
            if not ok:
                in_columns = {}
            keywords, names = list(in_columns), [str(c) for c in in_columns.values()]
            viewer = ", ".join(["viewer", *names]) if ok else "NULL"
            rows = conn.execute(
                f"SELECT relpath, size, mtime_ns, {viewer} FROM files WHERE series_uid = ? AND error IS NULL "
                "ORDER BY slice_position IS NULL, slice_position, instance_number, relpath", (series_uid,)).fetchall()
        except sqlite3.Error as e:
            raise NotFound(f"the index of dataset {self.ref.slug!r} cannot be read ({e})") from None
        finally:
            conn.close()
        if not rows:
            raise NotFound(f"no series {series_uid!r} in dataset {self.ref.slug!r}")
        out, root = [], os.path.realpath(self.ref.path)
        for rel, size, mtime_ns, stored, *uids in rows:
            path = self._inside(rel, root)
            if path is None:
                continue
            facts = None
            if stored:
                try:
                    st = os.stat(path)
                    if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
                        facts = facts_from_index(stored, path, fields, dict(zip(keywords, uids)))
                except Exception:  # an odd record: read this file's header instead
                    facts = None
            out.append((path, facts))
        if not out:
            raise NotFound(f"series {series_uid!r} has no readable files in dataset {self.ref.slug!r}")
        return out

    def _inside(self, relpath: str, root: str) -> str | None:
        """The absolute path of an indexed file, or None when it would leave the dataset folder
        (``root``: its real path; it cannot, unless the index was tampered with)."""
        path = os.path.normpath(os.path.join(self.ref.path, relpath))
        real = os.path.realpath(path)
        return path if real == root or real.startswith(root + os.sep) else None

    def series_files(self, series_uid: str) -> list[str]:
        """Absolute paths of the readable files of a series, in index order (slice position,
        instance number, path: the middle one makes a good thumbnail)."""
        return [path for path, _ in self.series_instances(series_uid)]


def _series_item(row: sqlite3.Row) -> dict:
    item = {k: row[k] for k in _BROWSE_COLUMNS}
    item["description"] = item.pop("description")
    item["relpath"] = item.pop("relpath_dir")  # the series' folder, relative to the dataset root
    try:
        item["pixel_spacing"] = json.loads(item["pixel_spacing"]) if item["pixel_spacing"] else None
    except ValueError:
        item["pixel_spacing"] = None
    return item


class Datasets:
    """All datasets of the session, by slug."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.catalogs = {slug: Catalog(ref) for slug, ref in manifest.datasets.items()}

    def get(self, slug: str) -> Catalog:
        catalog = self.catalogs.get(slug)
        if catalog is None and slug in self.manifest.catalogue_only:
            raise NotFound(f"dataset {slug!r} is batch-only in this project: its files are available to "
                           "batch jobs (submit a job to process it), not to sessions")
        if catalog is None:
            raise NotFound(f"no dataset {slug!r} in this session (this project's datasets: "
                           f"{', '.join(sorted(self.catalogs)) or 'none'})")
        return catalog

    def slug_of(self, real_path: str) -> str | None:
        """The dataset a (resolved) path belongs to, or None."""
        for slug, ref in self.manifest.datasets.items():
            for root in {os.path.realpath(ref.path), os.path.normpath(ref.path)}:
                if real_path == root or real_path.startswith(root + os.sep):
                    return slug
        return None

    def warm_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: [c.warm() for c in self.catalogs.values()],
                                  name="vre-browse-warmup", daemon=True)
        thread.start()
        return thread

    def summary(self, browse_prefix: str = "data") -> list[dict]:
        out = []
        for slug, catalog in sorted(self.catalogs.items()):
            record = catalog.record()
            out.append({
                "slug": slug,
                "path": catalog.ref.path,
                "browse_path": f"{browse_prefix}/{slug}" if browse_prefix else None,
                "indexed": catalog.index_stamp() is not None,
                "record": record,
                "mode": "interactive",
            })
        for slug, record in sorted(self.manifest.catalogue_only.items()):
            out.append({"slug": slug, "path": None, "browse_path": None, "indexed": False, "record": record,
                        "mode": "batch-only", "note": BATCH_ONLY_NOTE})
        return out
