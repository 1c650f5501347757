"""DICOM header index: one SQLite file per dataset, built from headers only.

Reading a header costs far more than a ``stat``, so the index remembers each file's
(size, mtime_ns) and re-reads only what changed; the patient/study/series tables are
derived from per-file columns, so they can always be rebuilt without touching the
dataset. Headers are read in worker processes, in chunks, because parsing is CPU
bound and per-task overhead would otherwise dominate.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import posixpath
import sqlite3
import stat
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import repeat
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

FORMAT_VERSION = "3"  # 2: files.viewer (the header elements the session's viewer reads); 3: its "px"
CLINICAL_SUFFIXES = (".csv", ".tsv", ".json")
_POOL_THRESHOLD = 200  # below this, starting worker processes costs more than it saves
_CHUNK_MIN, _CHUNK_MAX = 64, 256
_MAX_EXAMPLES = 10
_HASH_CHUNK, _HASH_BATCH = 1 << 20, 256
_RETRY_PREFIX = "cannot read"  # e.g. permission denied: retried every run, as chmod leaves mtime alone

_KEYWORDS = (
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "PatientSex",
    "PatientAge", "PatientBirthDate", "StudyDate", "StudyDescription", "AccessionNumber",
    "Modality", "BodyPartExamined", "SeriesDescription", "Manufacturer", "Rows", "Columns",
    "PixelSpacing", "SliceThickness", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient",
)  # fmt: skip
# The top-level elements the session's DICOM viewer builds its geometry, order and windows from
# (vre_session.dicom.INDEX_KEYWORDS must be a subset). Stored per file as JSON so that opening a
# series reads no header; files with functional groups (enhanced multi-frame) store none.
VIEWER_KEYWORDS = (
    "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "StudyDate",
    "StudyDescription", "SeriesDescription", "Modality", "BodyPartExamined", "Manufacturer",
    "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient", "ImageOrientationPatient",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "GridFrameOffsetVector", "VOILUTFunction",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
)  # fmt: skip
_PRESENCE = ("ModalityLUTSequence",)  # only whether it is there
VIEWER_FIELDS = (*VIEWER_KEYWORDS, *_PRESENCE)  # the order of files.viewer's "v"
# Left out of "v" (null there): the session takes them from the row's own columns.
_IN_COLUMNS = {"SOPInstanceUID": "sop_instance_uid", "SeriesInstanceUID": "series_uid",
               "StudyInstanceUID": "study_uid"}
_FUNCTIONAL_GROUPS = (tag_for_keyword("PerFrameFunctionalGroupsSequence"),
                      tag_for_keyword("SharedFunctionalGroupsSequence"))
_TAG = {k: tag_for_keyword(k) for k in (*_KEYWORDS, *VIEWER_KEYWORDS, *_PRESENCE)}
_READ_TAGS = [*_TAG.values(), *_FUNCTIONAL_GROUPS]

# Per-file header fields, in the order _header_fields() returns them.
_HEADER_COLUMNS = (
    ("sop_instance_uid", "TEXT"), ("series_uid", "TEXT"), ("study_uid", "TEXT"),
    ("patient_id", "TEXT"), ("patient_sex", "TEXT"), ("age_years", "REAL"),
    ("birth_date", "TEXT"), ("study_date", "TEXT"), ("study_description", "TEXT"),
    ("accession", "TEXT"), ("modality", "TEXT"), ("body_part", "TEXT"),
    ("series_description", "TEXT"), ("manufacturer", "TEXT"), ("rows", "INTEGER"),
    ("columns", "INTEGER"), ("pixel_spacing", "TEXT"), ("slice_thickness", "REAL"),
    ("instance_number", "INTEGER"), ("slice_position", "REAL"),
)  # fmt: skip
_FILE_COLUMNS = ("relpath", "dir", "size", "mtime_ns", "error", *(name for name, _ in _HEADER_COLUMNS), "viewer")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    relpath TEXT PRIMARY KEY, dir TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, error TEXT,
    {", ".join(f"{name} {kind}" for name, kind in _HEADER_COLUMNS)},
    viewer TEXT
);
CREATE INDEX IF NOT EXISTS files_series ON files (series_uid);
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY, sex TEXT, age_years REAL, birth_date TEXT);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, patient_id TEXT, study_date TEXT, description TEXT,
    accession TEXT);
CREATE TABLE IF NOT EXISTS digests (
    relpath TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS digests_size ON digests (size, sha256);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT, modality TEXT, body_part TEXT,
    description TEXT, manufacturer TEXT, rows INTEGER, columns INTEGER, pixel_spacing TEXT,
    slice_thickness REAL, num_instances INTEGER, relpath_dir TEXT);
"""

# Patient age is "at the latest study", hence MAX; other fields should agree within a group.
_REBUILD = (
    "DELETE FROM patients",
    "DELETE FROM studies",
    "DELETE FROM series",
    """INSERT INTO patients
       SELECT patient_id, MAX(patient_sex), MAX(age_years), MAX(birth_date)
       FROM files WHERE error IS NULL GROUP BY patient_id""",
    """INSERT INTO studies
       SELECT study_uid, MAX(patient_id), MIN(study_date), MAX(study_description), MAX(accession)
       FROM files WHERE error IS NULL GROUP BY study_uid""",
    """INSERT INTO series
       SELECT series_uid, MAX(study_uid), MAX(modality), MAX(body_part), MAX(series_description),
              MAX(manufacturer), MAX(rows), MAX(columns), MAX(pixel_spacing), MAX(slice_thickness),
              COUNT(DISTINCT sop_instance_uid), NULL
       FROM files WHERE error IS NULL GROUP BY series_uid""",
)


class CatalogError(ValueError):
    """The dataset or index cannot be catalogued; the message says what to fix."""


@dataclass
class IndexReport:
    files_seen: int
    files_indexed: int  # headers read this run
    files_skipped_unchanged: int
    files_removed: int
    errors: int
    error_examples: list[tuple[str, str]] = field(default_factory=list)
    clinical_files: list[str] = field(default_factory=list)
    patients: int = 0
    studies: int = 0
    series: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (
            f"{self.patients} patients, {self.studies} studies, {self.series} series from "
            f"{self.files_seen} files ({self.files_indexed} read, {self.files_skipped_unchanged} "
            f"unchanged, {self.files_removed} removed) in {self.seconds:.1f} s"
        )
        if self.errors:
            text += f"; {self.errors} unreadable"
        if self.clinical_files:
            text += f"; {len(self.clinical_files)} clinical file(s)"
        return text


# --- header parsing (runs in worker processes) --------------------------------------------
class _Header:
    """Values decoded straight from the raw element bytes.

    pydicom's per-element conversion costs more than parsing the file itself, and we
    need only strings and two US values, so decode those here; pydicom is used only
    for ISO 2022 code extensions (escape sequences), which need its decoder.
    """

    def __init__(self, ds) -> None:
        self.ds = ds
        self.little = ds.original_encoding[1] is not False
        encodings = ds.original_character_set  # Python codec names, from SpecificCharacterSet
        self.encoding = encodings if isinstance(encodings, str) else encodings[0]

    def _raw(self, tag: int) -> bytes | None:
        elem = self.ds.get_item(tag)
        return elem.value if isinstance(elem, RawDataElement) else None

    def text(self, keyword: str) -> str | None:
        tag = _TAG[keyword]
        raw = self._raw(tag)
        if raw is not None and b"\x1b" not in raw:
            value = raw.decode("ascii" if raw.isascii() else self.encoding, "replace")
        elif tag in self.ds:
            value = self.ds[tag].value
            value = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
        else:
            return None
        return value.strip(" \x00") or None

    def numbers(self, keyword: str) -> list[float]:
        try:
            values = [float(v) for v in (self.text(keyword) or "").split("\\")]
        except ValueError:
            return []
        return values if all(map(math.isfinite, values)) else []

    def number(self, keyword: str) -> float | None:
        values = self.numbers(keyword)
        return values[0] if len(values) == 1 else None

    def us(self, keyword: str) -> int | None:
        raw = self._raw(_TAG[keyword])
        if raw is not None and len(raw) >= 2:
            return int.from_bytes(raw[:2], "little" if self.little else "big")
        value = self.ds.get(keyword)
        return int(value) if isinstance(value, int) else None


def _iso_date(value: str | None) -> str | None:
    """DICOM DA (also the old ACR-NEMA ``YYYY.MM.DD``) as ISO ``YYYY-MM-DD``."""
    v = (value or "").replace(".", "")
    try:
        return date(int(v[:4]), int(v[4:6]), int(v[6:8])).isoformat() if len(v) == 8 else None
    except ValueError:
        return None


def _age_years(age: str | None, birth: str | None, study: str | None) -> float | None:
    """PatientAge (``063Y``, ``006M``, ``010W``, ``003D``), else birth date to study date."""
    units = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if age and len(age) == 4 and age[:3].isdigit() and age[3] in units:
        return round(int(age[:3]) / units[age[3]], 2)
    if birth and study:
        b, s = date.fromisoformat(birth), date.fromisoformat(study)
        years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
        return float(years) if years >= 0 else None
    return None


def _slice_position(header: _Header) -> float | None:
    """Distance along the slice normal (row x column cosines): sorts slices in any orientation."""
    position = header.numbers("ImagePositionPatient")
    cosines = header.numbers("ImageOrientationPatient")
    if len(position) != 3 or len(cosines) != 6:
        return None
    (a1, a2, a3), (b1, b2, b3) = cosines[:3], cosines[3:]
    normal = (a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1)
    return sum(p * n for p, n in zip(position, normal))


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_NATIVE_LITTLE_ENDIAN = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)


def _pixel_data(fh, size: int, ds) -> tuple[list[int] | None, str | None]:
    """(span, problem) of the pixel data: ``span`` is ``[offset, length]`` of its value in the file
    when it is uncompressed little-endian Pixel Data of a defined length, wholly present (the
    session's viewer then reads those bytes directly, with no header parse); ``problem`` says
    why a file is cut short (headers parse fine, the pixel data is incomplete).

    ``stop_before_pixels`` leaves the file positioned at the pixel data element, so its declared
    length can be compared with the bytes actually present.
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None, None  # positions refer to the inflated stream
    start = fh.tell()
    if start >= size:
        return None, ("truncated: the file ends before its pixel data" if "Rows" in ds else None)
    head = fh.read(12)
    implicit, little = ds.original_encoding
    endian = "<" if little is not False else ">"
    long_vr = not implicit and head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")
    if len(head) < (12 if long_vr else 8):
        return None, "truncated: the file ends inside the pixel data header"
    if long_vr:
        length, value_start = struct.unpack(endian + "I", head[8:12])[0], start + 12
    elif implicit:
        length, value_start = struct.unpack(endian + "I", head[4:8])[0], start + 8
    else:
        length, value_start = struct.unpack(endian + "H", head[6:8])[0], start + 8
    if length == 0xFFFFFFFF:
        return None, None  # encapsulated (compressed) frames
    if value_start + length > size:
        return None, f"truncated: pixel data needs {length} bytes, only {max(size - value_start, 0)} present"
    native = head[:4] == _PIXEL_DATA_TAG and ds.file_meta.get("TransferSyntaxUID") in _NATIVE_LITTLE_ENDIAN
    return ([value_start, length] if native and length else None), None


def _header_fields(ds) -> tuple:
    h = _Header(ds)
    study_date = _iso_date(h.text("StudyDate"))
    birth_date = _iso_date(h.text("PatientBirthDate"))
    sex = (h.text("PatientSex") or "").upper()
    spacing = h.numbers("PixelSpacing")
    instance = h.number("InstanceNumber")
    return (
        h.text("SOPInstanceUID"),
        h.text("SeriesInstanceUID"),
        h.text("StudyInstanceUID"),
        h.text("PatientID") or "",
        sex if sex in ("F", "M", "O") else None,
        _age_years(h.text("PatientAge"), birth_date, study_date),
        birth_date,
        study_date,
        h.text("StudyDescription"),
        h.text("AccessionNumber"),
        (h.text("Modality") or "").upper() or None,
        (h.text("BodyPartExamined") or "").upper() or None,
        h.text("SeriesDescription"),
        h.text("Manufacturer"),
        h.us("Rows"),
        h.us("Columns"),
        json.dumps(spacing) if len(spacing) == 2 else None,
        h.number("SliceThickness"),
        int(instance) if instance is not None else None,
        _slice_position(h),
    )


def _viewer_json(ds, span: list[int] | None = None) -> str | None:
    """The viewer's elements as compact JSON ``{"ts", "ts_name", "ts_compressed": the transfer
    syntax, "px": [offset, length] of uncompressed pixel data (``_pixel_data``; absent otherwise),
    "v": [one value per VIEWER_FIELDS entry, null when absent]}`` (text, integers, or lists
    of text for multi-valued ones, as pydicom gives them; the field names are stored once, in
    ``meta.viewer_fields``; the UIDs, which have their own columns, are null there and named in
    ``meta.viewer_columns``), or None when the file has functional groups or a value that does not
    convert: the viewer then reads the header."""
    if any(tag in ds for tag in _FUNCTIONAL_GROUPS):
        return None
    try:
        values: list = []
        for keyword in VIEWER_KEYWORDS:
            if keyword in _IN_COLUMNS:  # stored once already, in its own column
                values.append(None)
                continue
            value = ds[_TAG[keyword]].value if _TAG[keyword] in ds else None
            if isinstance(value, MultiValue):
                value = [str(v) for v in value]
            elif isinstance(value, bool) or isinstance(value, (bytes, bytearray)):
                return None
            elif isinstance(value, int):  # US, IS
                value = int(value)
            elif value is not None:  # DS keeps its text (the viewer parses it as it would the header)
                value = str(value)
            values.append(value)
        values += [True if _TAG[keyword] in ds else None for keyword in _PRESENCE]
        ts = ds.file_meta.get("TransferSyntaxUID")
        if not ts:  # as the viewer infers it (vre_session.dicom._read)
            implicit, little = ds.original_encoding
            ts = ("1.2.840.10008.1.2" if implicit is not False else "1.2.840.10008.1.2.1" if little is not False
                  else "1.2.840.10008.1.2.2")
        ts = UID(str(ts))
        record = {"ts": str(ts), "ts_name": ts.name, "ts_compressed": bool(ts.is_compressed), "v": values}
        if span is not None:
            record["px"] = span
        return json.dumps(record, allow_nan=False, separators=(",", ":"))
    except Exception:  # pydicom raises many types on odd values: the viewer reads this file's header
        return None


def _read_one(path: str) -> tuple[tuple | None, str | None]:
    """(header fields and the viewer's JSON, None) or (None, short reason); never raises."""
    try:
        with open(path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=_READ_TAGS)
            size = os.fstat(fh.fileno()).st_size
            fields = _header_fields(ds)
            for value, what in zip(fields[:3], ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")):
                if value is None:
                    cut = " (the file may be truncated)" if fh.tell() >= size else ""
                    return None, f"missing {what}{cut}"
            span, problem = _pixel_data(fh, size, ds)
            fields = (*fields, _viewer_json(ds, span))
    except InvalidDicomError:
        return None, "not a DICOM file (no 'DICM' header)"
    except OSError as e:
        return None, f"{_RETRY_PREFIX}: {e.strerror or e}"
    except Exception as e:  # pydicom raises many types on malformed data
        return None, f"unreadable DICOM: {type(e).__name__}: {str(e)[:120]}"
    return (None, problem) if problem else (fields, None)


def _read_chunk(root: str, relpaths: list[str]) -> list[tuple[tuple | None, str | None]]:
    """Runs in a worker: one task per chunk keeps pickling and scheduling overhead small."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns per odd value; errors are reported instead
        return [_read_one(os.path.join(root, rel)) for rel in relpaths]


# --- scanning and orchestration -----------------------------------------------------------
def _scan(root: Path, skip: set[str], unlisted: dict[str, tuple[int, int]] | None = None
          ) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Every visible file under root: DICOM candidates and clinical files (each with its size and
    mtime_ns), and the problems (unreadable folders, links, what sessions could not read).
    ``unlisted``, if given, gets the files sessions can read that the index does not list
    (hidden ones, those in hidden folders, DICOMDIR), for the files' hashes.

    The indexer runs as root, but what it publishes is read by sessions (unprivileged uids, the
    dataset's folder alone mounted): a file or folder that sessions cannot read (no o+r, or o+x for
    a folder) and a symbolic link (its target may lie outside the folder, e.g. another dataset)
    are reported, never indexed, so no header of theirs reaches the catalogue."""
    candidates: dict[str, tuple[int, int]] = {}
    clinical: dict[str, tuple[int, int]] = {}
    problems: list[tuple[str, str]] = []
    pending = [("", str(root), False)]
    while pending:
        rel_dir, abs_dir, hidden = pending.pop()
        try:
            entries = list(os.scandir(abs_dir))
        except OSError as e:
            if not hidden:
                problems.append((rel_dir or ".", f"cannot list folder: {e.strerror or e}"))
            continue
        for entry in entries:
            if entry.path in skip:
                continue  # our own index
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if hidden or entry.name.startswith(".") or entry.name == "DICOMDIR":
                # hidden files and DICOMDIR (an index, not an image): not in the index, but sessions
                # read them, so their hashes are kept when asked for
                if unlisted is not None:
                    _unlisted(entry, rel, unlisted, pending)
                continue
            try:
                if entry.is_symlink():
                    problems.append((rel, "a symbolic link: not indexed (sessions see the dataset's own files only)"))
                elif entry.is_dir(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
                        problems.append((rel, f"folder not readable by sessions, not indexed: run chmod o+rx {rel}"))
                    else:
                        pending.append((rel, entry.path, False))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if not st.st_mode & stat.S_IROTH:
                        problems.append((rel, f"not readable by sessions, not indexed: run chmod o+r {rel}"))
                    elif entry.name.lower().endswith(CLINICAL_SUFFIXES):
                        clinical[rel] = (st.st_size, st.st_mtime_ns)
                    else:
                        candidates[rel] = (st.st_size, st.st_mtime_ns)
            except OSError as e:
                problems.append((rel, f"cannot stat: {e.strerror or e}"))
    return candidates, clinical, problems


def _unlisted(entry: os.DirEntry, rel: str, out: dict[str, tuple[int, int]], pending: list) -> None:
    """A file or folder the index leaves out, as sessions see it: a readable folder's files, a readable file."""
    try:
        if entry.is_symlink():
            return
        st = entry.stat(follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            if st.st_mode & (stat.S_IROTH | stat.S_IXOTH) == stat.S_IROTH | stat.S_IXOTH:
                pending.append((rel, entry.path, True))
        elif entry.is_file(follow_symlinks=False) and st.st_mode & stat.S_IROTH:
            out[rel] = (st.st_size, st.st_mtime_ns)
    except OSError:
        pass


def _chunks(items: list[str], workers: int) -> Iterator[list[str]]:
    size = min(_CHUNK_MAX, max(_CHUNK_MIN, math.ceil(len(items) / (workers * 8))))  # short tail
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork starts workers in ~10 ms; forkserver costs ~0.3 s but is the safe choice when
    the caller runs threads (the hub), since fork copies locks other threads may hold."""
    return multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")


def _read_all(
    root: Path, relpaths: list[str], workers: int, progress: Callable[[int, int], None] | None
) -> Iterator[tuple[str, tuple | None, str | None]]:
    chunks = list(_chunks(relpaths, workers))
    if progress:  # how many there are to read, before the first (slow with worker processes) chunk
        progress(0, len(relpaths))
    if len(relpaths) < _POOL_THRESHOLD or workers == 1:
        results = map(_read_chunk, repeat(str(root)), chunks)
        pool = None
    else:
        pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=_mp_context())
        results = pool.map(_read_chunk, repeat(str(root)), chunks)
    try:
        done = 0
        for chunk, rows in zip(chunks, results):
            for rel, (fields, error) in zip(chunk, rows):
                yield rel, fields, error
            done += len(chunk)
            if progress:
                progress(done, len(relpaths))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def file_sha256(path: str) -> str | None:
    """The file's SHA-256 (hex), or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _hash_all(root: Path, relpaths: list[str], workers: int, offset: int,
              progress: Callable[[int, int], None] | None) -> Iterator[tuple[str, str | None]]:
    """(relpath, SHA-256 or None if unreadable) of each file, in threads (hashing and reads let
    go of the GIL); ``progress`` counts on from ``offset`` (the headers read before)."""
    done = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i in range(0, len(relpaths), _HASH_BATCH):   # a batch at a time: a million files, bounded memory
            batch = relpaths[i:i + _HASH_BATCH]
            yield from zip(batch, pool.map(file_sha256, [os.path.join(root, r) for r in batch]))
            done += len(batch)
            if progress:
                progress(offset + done, 0)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise CatalogError(f"dataset folder {root} does not exist; check the path (is the data volume mounted?)")
    if not root.is_dir():
        raise CatalogError(f"{root} is a file, not a folder; give the folder that holds the DICOM series")


def _connect(index_path: Path) -> sqlite3.Connection:
    if index_path.is_dir():
        raise CatalogError(f"index path {index_path} is a folder; give a file path such as {index_path}/index.sqlite")
    index_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(index_path)
    version = None
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
    except sqlite3.DatabaseError as e:
        if "no such table" not in str(e):
            conn.close()
            raise CatalogError(f"{index_path} is not a readable index ({e}); delete it and index again") from None
    if version and version[0] != FORMAT_VERSION:  # older layout: start afresh, headers are re-read
        for table in ("files", "patients", "studies", "series", "meta"):
            conn.execute(f"DROP TABLE {table}")
    conn.executescript(_SCHEMA)
    return conn


def _common_dirs(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(common directory, series_uid) pairs: where a series lives, even if split over folders."""
    dirs: dict[str, list[str]] = {}
    for uid, d in conn.execute("SELECT series_uid, dir FROM files WHERE error IS NULL GROUP BY series_uid, dir"):
        dirs.setdefault(uid, []).append(d)
    return [(posixpath.commonpath(ds) or ".", uid) for uid, ds in dirs.items()]


def _no_dicom_message(root: Path, clinical: int, errors: int, examples: list[tuple[str, str]]) -> str:
    example = f" (e.g. {examples[0][0]}: {examples[0][1]})" if examples else ""
    return (
        f"no DICOM files found in {root}: {clinical} clinical side file(s) and {errors} unreadable or "
        f"non-DICOM file(s){example}. Point the index at the folder that holds the DICOM series "
        "(files with a 'DICM' header, any extension)."
    )


def index_dataset(
    root: Path,
    index_path: Path,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    digests: bool = False,
) -> IndexReport:
    """Create or update the header index of the DICOM files under ``root``.

    Only new or changed files (size or mtime differs) and previously unreadable ones
    are read; bad files are reported, never fatal. ``progress(done, total)`` is called
    once before the headers are read and after each chunk of them (and of the files hashed).
    ``digests``: also keep the SHA-256 of every indexed and clinical file (new or changed ones
    hashed), for the airlock's check for dataset copies where the hub cannot read the dataset
    itself (``vre.catalog.cluster``); it reads every byte, not only headers.
    """
    started = time.perf_counter()
    root, index_path = Path(root), Path(index_path)
    _check_root(root)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise CatalogError(f"workers must be at least 1, got {workers}")
    own = str(index_path.resolve())  # an index kept inside the dataset must not index itself
    unlisted: dict[str, tuple[int, int]] | None = {} if digests else None
    found, clinical, walk_problems = _scan(root.resolve(), {own + s for s in ("", "-journal", "-wal", "-shm")},
                                           unlisted)
    if not found and not clinical and not walk_problems:
        raise CatalogError(f"dataset folder {root} is empty (hidden files are ignored); copy the DICOM files into it")

    created = not index_path.exists()
    conn = _connect(index_path)
    try:
        known = {row[0]: row[1:] for row in conn.execute("SELECT relpath, size, mtime_ns, error FROM files")}
        to_read = sorted(
            rel
            for rel, stat in found.items()
            if rel not in known or known[rel][:2] != stat or (known[rel][2] or "").startswith(_RETRY_PREFIX)
        )
        removed = [(rel,) for rel in known.keys() - found.keys()]
        every = {**found, **clinical, **(unlisted or {})}
        hashed = {row[0]: row[1:] for row in conn.execute("SELECT relpath, size, mtime_ns FROM digests")}
        to_hash = sorted(rel for rel, st in every.items() if hashed.get(rel) != st) if digests else []
        unhashed = [(rel,) for rel in hashed.keys() - every.keys()]
        total = len(to_read) + len(to_hash)
        step = (lambda done, _n: progress(done, total)) if progress else None
        rows = []
        for rel, fields, error in _read_all(root, to_read, workers, step):
            fields = fields or (None,) * (len(_HEADER_COLUMNS) + 1)
            rows.append((rel, posixpath.dirname(rel), *found[rel], error, *fields))
        sums = []
        for rel, sha256 in _hash_all(root, to_hash, workers, len(to_read), step):
            if sha256 is None:   # unreadable now: no stale hash kept, hashed again next time
                unhashed.append((rel,))
            else:
                sums.append((rel, *every[rel], sha256))
        with conn:
            conn.executemany("DELETE FROM files WHERE relpath = ?", removed)
            marks = ", ".join("?" * len(_FILE_COLUMNS))
            conn.executemany(f"INSERT OR REPLACE INTO files ({', '.join(_FILE_COLUMNS)}) VALUES ({marks})", rows)
            if not digests:   # a hashed index indexed again without: none kept, none stale
                conn.execute("DELETE FROM digests")
                conn.execute("DELETE FROM meta WHERE key = 'digests'")
            conn.executemany("DELETE FROM digests WHERE relpath = ?", unhashed)
            conn.executemany("INSERT OR REPLACE INTO digests (relpath, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                             sums)
            examples = walk_problems + conn.execute(
                "SELECT relpath, error FROM files WHERE error IS NOT NULL ORDER BY relpath LIMIT ?", (_MAX_EXAMPLES,)
            ).fetchall()
            (bad,) = conn.execute("SELECT COUNT(*) FROM files WHERE error IS NOT NULL").fetchone()
            errors = bad + len(walk_problems)
            if not conn.execute("SELECT 1 FROM files WHERE error IS NULL LIMIT 1").fetchone():
                raise CatalogError(_no_dicom_message(root, len(clinical), errors, examples))
            for statement in _REBUILD:
                conn.execute(statement)
            conn.executemany("UPDATE series SET relpath_dir = ? WHERE series_uid = ?", _common_dirs(conn))
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format_version", FORMAT_VERSION),
                    ("root", str(root.absolute())),
                    ("indexed_at", datetime.now(timezone.utc).isoformat(timespec="seconds")),
                    ("viewer_fields", json.dumps(VIEWER_FIELDS)),
                    ("viewer_columns", json.dumps(_IN_COLUMNS)),
                    *([("digests", "sha256")] if digests else []),
                ],
            )
            counts = [
                conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("patients", "studies", "series")
            ]
    except CatalogError:
        conn.close()
        if created:
            index_path.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    return IndexReport(
        files_seen=len(found) + len(clinical),
        files_indexed=len(to_read),
        files_skipped_unchanged=len(found) - len(to_read),
        files_removed=len(removed),
        errors=errors,
        error_examples=examples[:_MAX_EXAMPLES],
        clinical_files=sorted(clinical),
        patients=counts[0],
        studies=counts[1],
        series=counts[2],
        seconds=time.perf_counter() - started,
    )


# --- read API ------------------------------------------------------------------------------
def open_index(index_path: Path) -> sqlite3.Connection:
    """Read-only connection (sessions see the index on a read-only mount)."""
    path = Path(index_path)
    if not path.is_file():
        raise CatalogError(f"no index at {path}; index the dataset first")
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def list_series(
    conn: sqlite3.Connection,
    *,
    modality: str | None = None,
    body_part: str | None = None,
    text: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict]:
    """Series with their study and patient, filtered; ``text`` matches descriptions,
    patient id, manufacturer and body part (case-insensitive substring)."""
    if limit < 0 or offset < 0:
        raise CatalogError(f"limit and offset must be >= 0, got {limit} and {offset}")
    where, args = [], []
    if modality:
        where.append("s.modality = ?")
        args.append(modality.upper())
    if body_part:
        where.append("s.body_part = ?")
        args.append(body_part.upper())
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        fields = ("s.description", "st.description", "st.patient_id", "s.manufacturer", "s.body_part")
        where.append("(" + " OR ".join(f"{f} LIKE ? ESCAPE '\\'" for f in fields) + ")")
        args += [pattern] * len(fields)
    sql = (
        "SELECT s.*, st.patient_id, st.study_date, st.description AS study_description "
        "FROM series s LEFT JOIN studies st ON st.study_uid = s.study_uid"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY st.patient_id, st.study_date, s.description, s.series_uid LIMIT ? OFFSET ?"
    )
    cursor = conn.execute(sql, [*args, limit, offset])
    names = [d[0] for d in cursor.description]
    result = []
    for row in cursor:
        item = dict(zip(names, row))
        item["pixel_spacing"] = json.loads(item["pixel_spacing"]) if item["pixel_spacing"] else None
        result.append(item)
    return result


def has_digests(index_path: Path) -> bool:
    """Whether the index keeps every file's SHA-256 (``index_dataset(digests=True)``)."""
    try:
        conn = open_index(index_path)
    except CatalogError:
        return False
    try:
        return conn.execute("SELECT 1 FROM meta WHERE key = 'digests' AND value = 'sha256'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def file_with_digest(index_path: Path, size: int, sha256: str) -> str | None:
    """The relative path of an indexed file with this size and SHA-256, or None."""
    conn = open_index(index_path)
    try:
        row = conn.execute("SELECT relpath FROM digests WHERE size = ? AND sha256 = ? ORDER BY relpath LIMIT 1",
                           (size, sha256)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()
