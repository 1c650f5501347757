"""Freezing: what a researcher names in their session becomes a copy in hub-owned storage.

A request names *session* paths (``/home/jovyan/...``, ``/home/jovyan/project/...``, or relative to
the home, as the Lab's file browser does). They are resolved through the author's mount table for
the project (``vre.access.resolve``: symlinks are followed as the session would follow them, host
symlinks never), and only files that end up in the home or the project workspace are accepted: a
link to ``/data/...`` or anywhere else is refused with the place it leads to. Held jobs' folders
(``/held/jobs/<id>``, which no session mounts) are named the same way: the airlock is the only way
their files leave. There no link is followed and only regular files and folders are accepted, and
nothing a held job chose reaches its author before release (``vre.airlock.held``).

Copies are streamed in 1 MiB chunks (never a whole file in memory), hashed while they are written,
opened component by component with ``O_NOFOLLOW`` below the mount's host directory (a link swapped
in after the check cannot redirect the copy), and must be regular files. They land in
``state_dir/airlock/<request id>/`` (root, 0700; files 0600), which no session can reach.

On Kubernetes with claims (``k8s_storage = "pvc"``) the hub cannot mount homes and workspaces:
the same walk and copy ask a claims reader in the project's namespace instead (``vre.claims``),
which opens the files the same way. Held jobs' folders are not offered there (the batch queue
does not run on claims yet).

Files byte-for-byte equal to a file of any registered dataset are refused: sizes first (an index
of every dataset's file sizes, built once per dataset and index time), then SHA-256 of the
dataset files of the same size only (cached by path, size and mtime).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import posixpath
import stat
import threading
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..access.resolve import USER_KINDS, MountMap, resolve
from ..catalog.index import file_sha256, file_with_digest, has_digests
from ..claims.files import LOCAL, Files, warm as warm_files
from ..plan import HELD_ROOT, HOME, Mount, build_plan, held_dir
from ..settings import files_on_host
from . import held
from .rules import ContentCheck, Rules, file_problems

CHUNK = 1 << 20
#: Entries of a folder looked at, beyond which a folder is refused as too big (never a hang).
WALK_FACTOR = 4
#: Mount kinds files may be exported from: the session's own, and held jobs' folders.
EXPORT_KINDS = (*USER_KINDS, "held")
#: Mount kinds in which no link is followed: a held job chose its links (and where they lead).
NO_LINKS = ("held",)


def storage_root(settings) -> Path:
    return settings.state_dir / "airlock"


def request_dir(settings, request_id: int, *, create: bool = False) -> Path:
    path = storage_root(settings) / str(int(request_id))
    if create:
        for d in (storage_root(settings), path):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
    return path


def mount_map(db, settings, user: str, project: str) -> MountMap:
    """The author's view of the project, as their session has it (PlanRefused when they may not
    work in it), and the project's held jobs' folders at ``/held/jobs`` (read-only). Where the
    hub cannot mount the claims, the home and workspace are a claims reader's (started at the
    first question about them)."""
    plan = build_plan(db, settings, user, project, None)
    if not files_on_host(settings):
        from ..claims.pods import ClaimFiles, reader_path   # the cluster's client, only where it is used

        mounts = [replace(m, source=Path(reader_path(m.kind))) if m.kind in USER_KINDS else m
                  for m in plan.mounts if m.kind != "held"]
        held = Mount(Path(reader_path("held")) / "jobs", f"{HELD_ROOT}/jobs", True, "held")
        files = ClaimFiles(settings, plan, build_plan(db, settings, user, project, None, role="held"))
        return MountMap.from_plan(HOME, (*mounts, held), files)
    held = Mount(held_dir(settings, project) / "jobs", f"{HELD_ROOT}/jobs", True, "held")
    return MountMap.from_plan(HOME, (*plan.mounts, held))


def warm(mm: MountMap, paths) -> None:
    """Where the files are a claims reader's: ask the reader behind each of ``paths`` (session
    paths) a first question (starting its pod if it is not running) outside any transaction,
    so that no database connection waits for a pod; only those readers (a held export needs
    the held pool's, not the author's). What fails here is said again, with its answer, by the
    request itself."""
    if mm.files is LOCAL:
        return
    asked = set()
    for named in paths:
        try:
            path = session_path(named)
        except ValueError:
            continue
        for target, source, _ in mm.mounts:   # longest target first: the mount the path is under
            if path == target or path.startswith(target.rstrip("/") + "/"):
                if source not in asked:
                    asked.add(source)
                    warm_files(mm.files, source)
                break


def session_path(named: str) -> str:
    """A named path as an absolute session path (relative ones are relative to the home, as in the Lab)."""
    named = (named or "").strip()
    if not named:
        raise ValueError("empty path")
    if "\x00" in named:
        raise ValueError("the path contains a NUL character")
    if named.startswith("~/") or named == "~":
        named = HOME + named[1:]
    return named if named.startswith("/") else f"{HOME}/{named}"


@dataclass
class Candidate:
    """A file to freeze: as named, its release name, and where it is on the host."""

    path: str                 # session path as named (for folders: the folder's path + the entry)
    name: str                 # name in the release
    description: str = ""
    source: str | None = None  # the host directory of its mount (a claims reader's: its directory)
    rel: str = ""             # its path below that directory
    size: int | None = None
    problems: list[str] = field(default_factory=list)
    files: Files = field(default=LOCAL, repr=False)   # who answers for ``source``

    def to_dict(self) -> dict:
        return {"path": self.path, "name": self.name, "size": self.size, "problems": list(self.problems)}


def _where(kind: str, resolved: str) -> str:
    if kind in ("dataset", "catalog"):
        return f"leads to {resolved}, inside a dataset: dataset files never leave through the airlock"
    return (f"leads to {resolved}, outside your home, the project workspace and its held jobs' folders: only "
            "files there can be exported")


def locate(mm: MountMap, named: str, name: str, description: str = "") -> Candidate:
    """One session path resolved to a regular file in the home or workspace (problems otherwise)."""
    try:
        path = session_path(named)
    except ValueError as e:
        return Candidate(named, name, description, problems=[str(e)])
    c = Candidate(path, name, description)
    try:
        r = _resolve(mm, path)
    except OSError as e:
        c.problems.append(f"cannot be resolved: {e.strerror}")
        return c
    if r.kind not in EXPORT_KINDS:
        c.problems.append(_where(r.kind, r.path))
        return c
    if not r.exists:
        c.problems.append("no such file (it was moved or deleted?)")
        return c
    target, source, _kind = mm.mount_of(r.path)
    c.source, c.rel, c.files = source, r.path[len(target):].lstrip("/"), mm.files
    try:
        st = mm.files.lstat(r.host)
    except OSError as e:
        c.problems.append(f"cannot be read: {e.strerror}")
        return c
    if stat.S_ISDIR(st.st_mode):
        c.problems.append("is a folder")
    elif not stat.S_ISREG(st.st_mode):
        c.problems.append(held.NOT_PLAIN if held.is_held(path) else "is not a regular file (a pipe, socket or device)")
    else:
        c.size = st.st_size
    return c


def _resolve(mm: MountMap, path: str):
    """``resolve`` for the airlock: no link followed in a held job's folder (LinkRefused, which names
    nothing), and a path outside ``/held`` that leads into one is refused (OSError), so whether a
    file is held is always its name's say (``held.is_held``)."""
    r = resolve(mm, path, no_links_in=NO_LINKS)
    if r.kind == "held" and not held.is_held(path):
        raise OSError(errno.EXDEV, held.THROUGH_LINK)
    return r


def expand(mm: MountMap, named: str, description: str, limit: int) -> tuple[list[Candidate], list[str]]:
    """The files a named file or folder stands for (at most ``limit``; beyond that a problem, found
    after looking at no more than ``WALK_FACTOR * limit`` entries) and problems with the name itself.
    Hidden entries of a folder (``.ipynb_checkpoints``, ``.cache``) are left out."""
    try:
        path = session_path(named)
    except ValueError as e:
        return [], [f"{named!r}: {e}"]
    base = posixpath.basename(path.rstrip("/")) or "file"
    try:
        r = _resolve(mm, path)
    except OSError as e:
        return [], [f"{path}: cannot be resolved: {e.strerror}"]
    if r.kind in EXPORT_KINDS and r.exists and r.is_dir:
        out: list[Candidate] = []
        seen = 0
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                entries = mm.files.scandir(r.host + ("/" + rel if rel else ""))
            except OSError as e:
                if held.is_held(path):  # the names below a held folder are the job's
                    return out, [f"{path}: a folder in it cannot be listed: {e.strerror}"]
                return out, [f"{path}/{rel}: cannot be listed: {e.strerror}"]
            for name, is_dir in entries:
                if name.startswith("."):  # .ipynb_checkpoints and the like: name them to include them
                    continue
                seen += 1
                sub = f"{rel}/{name}" if rel else name
                if seen > WALK_FACTOR * limit or len(out) >= limit:
                    return out, [f"{path}: the folder holds more than {limit} files, the project's limit per "
                                 "request; request fewer files (or a zip of a results folder)"]
                if is_dir:
                    stack.append(sub)
                    continue
                out.append(locate(mm, f"{path.rstrip('/')}/{sub}", f"{base}/{sub}", description))
        if not out:
            return [], [f"{path}: the folder is empty"]
        return out, []
    return [locate(mm, path, base, description)], []


@dataclass
class Frozen:
    stored: str
    size: int
    sha256: str
    problems: list[str]


def copy_stream(src, dst: int, *, limit: int, on_chunk=None) -> tuple[int, str, bool]:
    """Copy the binary stream ``src`` to ``dst`` (-1: nowhere) in chunks, hashing; stops after
    ``limit`` bytes. Returns (size, sha256, over the limit)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    while True:
        n = src.readinto(buf)
        if n == 0:
            return size, h.hexdigest(), False
        size += n
        if size > limit:
            return size, h.hexdigest(), True
        chunk = view[:n]
        h.update(chunk)
        if on_chunk:
            on_chunk(chunk)
        while dst >= 0 and chunk:
            chunk = chunk[os.write(dst, chunk):]


def freeze(settings, request_id: int, c: Candidate, rules: Rules, *, limit: int, copy: bool = True) -> Frozen:
    """Copy one located file into the request's storage under a new name (``copy=False``: only read
    it through, for the check before submission), checking the rules on what streams through."""
    check = ContentCheck(rules, c.name)
    try:
        src = c.files.open(c.source, c.rel)
    except OSError as e:
        return Frozen("", 0, "", [f"cannot be opened: {e.strerror or e} (a symlink or a special file?)"])
    stored, dest, dst = "", None, -1
    try:
        if copy:
            stored = f"{uuid.uuid4().hex}.bin"
            dest = request_dir(settings, request_id, create=True) / stored
            dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size, digest, over = copy_stream(src, dst, limit=limit, on_chunk=check.feed)
        except http.client.IncompleteRead:  # the claims reader stopped short: it shrank, or the reader went
            if dest is not None:
                dest.unlink(missing_ok=True)
            return Frozen("", 0, "", ["could not be read to its end (it shrank while being copied?); try again"])
        if dst >= 0:
            os.fsync(dst)
    finally:
        src.close()
        if dst >= 0:
            os.close(dst)
    if over:
        problems = [f"more than {limit} bytes: over the project's limit per file (or it grew while being copied)"]
    else:
        problems = file_problems(rules, c.name, size) + check.finish()
    if problems and dest is not None:
        dest.unlink(missing_ok=True)
        stored = ""
    return Frozen(stored, size, digest, problems)


def stored_path(settings, request_id: int, stored: str) -> Path:
    if not stored or "/" in stored or stored.startswith("."):
        raise ValueError(f"bad stored name {stored!r}")
    return request_dir(settings, request_id) / stored


def discard(settings, request_id: int, stored: str | None) -> None:
    if stored:
        stored_path(settings, request_id, stored).unlink(missing_ok=True)


def read_chunks(path: Path, expect_sha256: str | None = None):
    """The stored file in chunks; raises IOError at the end when its hash is not the recorded one."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            yield chunk
    if expect_sha256 and h.hexdigest() != expect_sha256:
        raise OSError(f"{path.name}: stored copy does not match its recorded SHA-256 (tampered?)")


# --- dataset copies ----------------------------------------------------------------------------
class Unchecked(Exception):
    """A dataset the check for copies cannot look at (its slug, its registered path)."""


class DatasetIndex:
    """Which dataset files have a given size, and their hashes, cached across requests (per process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sizes: dict[tuple[str, str], dict[int, list[str]]] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._indexed: dict[tuple[str, str], bool] = {}

    def sizes(self, root: str, version: str) -> dict[int, list[str]]:
        key = (root, version)
        with self._lock:
            if key in self._sizes:
                return self._sizes[key]
        table: dict[int, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(root):  # never follows links
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    table.setdefault(st.st_size, []).append(p)
        with self._lock:
            self._sizes = {k: v for k, v in self._sizes.items() if k[0] != root}
            self._sizes[key] = table
        return table

    def digest(self, path: str) -> str | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._hashes:
                return self._hashes[key]
        digest = file_sha256(path)
        if digest is None:
            return None
        with self._lock:
            self._hashes[key] = digest
        return digest

    def hashed(self, index: str, version: str) -> bool:
        """Whether the dataset's index keeps its files' hashes (indexed in the cluster, where the
        hub cannot read the dataset: ``vre.catalog.cluster``)."""
        key = (index, version)
        with self._lock:
            if key in self._indexed:
                return self._indexed[key]
        found = has_digests(Path(index))
        with self._lock:
            self._indexed = {k: v for k, v in self._indexed.items() if k[0] != index}
            self._indexed[key] = found
        return found

    def match(self, datasets: list[tuple[str, str, str, str]], size: int, sha256: str) -> str | None:
        """'<slug>/<relative path>' of a dataset file with this content, or None.
        ``datasets``: (slug, root, version, index path) for every registered dataset: its index's
        hashes where it keeps them, else its files (same size, then the same SHA-256).
        ``Unchecked`` when a dataset has neither (a claim or NFS dataset whose index has no hashes)."""
        for slug, root, version, index in datasets:
            if self.hashed(index, version):
                rel = file_with_digest(Path(index), size, sha256)
                if rel is not None:
                    return f"{slug}/{rel}"
                continue
            if root.startswith("claim:") or not os.path.isdir(root):   # never "no copy" for one it cannot look at
                raise Unchecked(slug, root)
            for p in self.sizes(root, version).get(size, ()):
                if self.digest(p) == sha256:
                    return f"{slug}/{os.path.relpath(p, root)}"
        return None


DATASETS = DatasetIndex()


def write_zip(fileobj, files, record: str | None, signature: str | None) -> None:
    """A release as a zip written to ``fileobj`` (may be unseekable: entries are streamed with
    ZIP_STORED, nothing is assembled in memory): the files (``Outgoing``), ``SHA256SUMS``, the signed
    record ``release-record.json`` and its signature ``release-record.json.sig``. A stored copy that
    no longer matches its hash stops the zip (OSError)."""
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for out in files:
            info = zipfile.ZipInfo(out.name)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=out.size > (1 << 31)) as dst:
                for chunk in read_chunks(out.path, out.sha256):
                    dst.write(chunk)
        zf.writestr("SHA256SUMS", "".join(f"{o.sha256}  {o.name}\n" for o in files))
        if record:
            zf.writestr("release-record.json", record)
            zf.writestr("release-record.json.sig", (signature or "") + "\n")
