"""Where a session path really leads, decided on the host from the session's mount table.

The access layer must know whether ``/files/<path>`` or a contents read names a dataset file, but
what the session's server would open is decided inside the session, where the researcher
controls every symlink. The hub writes each session's mount table (``access.json``, root-only, in
its run directory); :func:`resolve` walks a path through it component by component, the way the
kernel does with ``openat2(RESOLVE_IN_ROOT)``: each component is looked up with ``lstat`` in the
host directory its mount maps to, a symlink's target is read and re-interpreted *in the session's
namespace* (absolute targets restart at the session's ``/``), and ``..`` climbs the resolved path.
Host symlinks are never followed, so no link in a home can point the walk at a host file.

What the walk cannot see is a race: a researcher who swaps a link between the layer's check and
the server's open. The layer also sniffs what it serves (DICOM magic), and the host observer
records every dataset open the server makes; docs/architecture.md states the residual risk.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..claims.files import LOCAL, Files

MAX_LINKS = 40  # as the kernel's MAXSYMLINKS
#: Kinds a browser may receive raw files from (subject to the project's downloads mode).
USER_KINDS = ("home", "workspace")


def access_file(settings, session: str) -> Path:
    """Where the hub keeps a session's mount table for the access layer's broker (root-only,
    never in the session)."""
    return settings.sessions_run_dir / session / "access.json"


@dataclass(frozen=True)
class MountMap:
    """A session's view: its server's root directory and its mounts (target -> source, kind).
    ``files`` answers questions about the sources: this machine's (host paths), or a claims
    reader's (its paths) where the hub cannot mount a project's claims."""

    root: str
    mounts: tuple[tuple[str, str, str], ...]  # (target, source, kind), longest target first
    files: Files = field(default=LOCAL, compare=False, repr=False)

    @classmethod
    def from_plan(cls, root: str, mounts, files: Files = LOCAL) -> "MountMap":
        table = [(m.target.rstrip("/") or "/", str(m.source), m.kind) for m in mounts]
        return cls(root, tuple(sorted(table, key=lambda t: len(t[0]), reverse=True)), files)

    @classmethod
    def load(cls, path: Path) -> "MountMap":
        return cls.from_dump(json.loads(path.read_text()))

    @classmethod
    def from_dump(cls, data: dict) -> "MountMap":
        """The table ``dump`` wrote, already parsed (its other fields are the caller's)."""
        return cls(data["root"], tuple(tuple(m) for m in data["mounts"]))

    def dump(self, **about) -> str:
        """The table as JSON, with ``about`` the session (its user and project: whose claims)."""
        return json.dumps({"root": self.root, "mounts": [list(m) for m in self.mounts], **about})

    def host_path(self, path: str) -> tuple[str | None, str]:
        """(host path, kind) of an absolute, normalised session path; (None, "system") outside
        every mount (the image or the host's read-only system directories)."""
        target, source, kind = self.mount_of(path)
        return (None if source is None else source + path[len(target):]), kind

    def mount_of(self, path: str) -> tuple[str | None, str | None, str]:
        """(target, source, kind) of the mount ``path`` lies in; (None, None, "system") outside all."""
        for target, source, kind in self.mounts:
            if path == target or path.startswith(target + "/"):
                return target, source, kind
        return None, None, "system"


class LinkRefused(OSError):
    """A symbolic link met where none may be followed (``resolve(..., no_links_in=...)``). Its
    message names neither the link nor its target: in a held job's folder both are the job's
    choice, and the job may have read batch-only data."""

    def __init__(self, kind: str):
        super().__init__(errno.ELOOP, f"a symbolic link in a {kind} folder, which may hold only regular files "
                                      "and folders")
        self.kind = kind


@dataclass(frozen=True)
class Resolved:
    path: str          # the session path the walk ends at
    kind: str          # the kind of mount it lies in ("system" outside every mount)
    exists: bool
    is_dir: bool
    host: str | None   # its host path (None for "system")
    mount: str | None = None  # the target of the mount it lies in (a dataset's: /data/<slug>)

    @property
    def dataset(self) -> str | None:
        """The dataset (or catalogue entry) slug a path lies in."""
        return self.mount.rsplit("/", 1)[-1] if self.mount and self.kind in ("dataset", "catalog") else None


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def resolve(mm: MountMap, path: str, *, no_links_in: tuple[str, ...] = ()) -> Resolved:
    """Resolve a session path (absolute, or relative to the server's root) as the session would.
    A symlink in a mount whose kind is in ``no_links_in`` is not followed: LinkRefused."""
    pending = _parts(path if path.startswith("/") else f"{mm.root}/{path}")
    done: list[str] = []
    links = 0
    exists = True
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join(done + [part])
        host, kind = mm.host_path(candidate)
        if host is None or not exists:
            done.append(part)
            continue
        try:
            st = mm.files.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            exists = False
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            if kind in no_links_in:
                raise LinkRefused(kind)
            links += 1
            if links > MAX_LINKS:
                raise OSError(40, "too many levels of symbolic links", candidate)
            target = mm.files.readlink(host)
            if target.startswith("/"):
                done = []
            pending = _parts(target) + pending
            continue
        done.append(part)
    final = "/" + "/".join(done)
    host, kind = mm.host_path(final)
    is_dir = False
    if host is not None and exists:
        try:
            is_dir = stat.S_ISDIR(mm.files.lstat(host).st_mode)
        except OSError:
            exists = False
    return Resolved(final, kind, exists and host is not None, is_dir, host, mm.mount_of(final)[0])


def candidates(url_path: str) -> list[str]:
    """The paths a server could make of a URL path (already decoded once): as given, and decoded
    once more (double-encoded input); NUL-free."""
    return [p for p in dict.fromkeys((url_path, unquote(url_path))) if "\x00" not in p]


def read_head(host: str, size: int = 132) -> bytes:
    """The first bytes of a regular file, without following a last-moment symlink or blocking on
    a FIFO; b"" for anything else."""
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, size)
    finally:
        os.close(fd)


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"
