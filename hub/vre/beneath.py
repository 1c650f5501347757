"""Root's file access below folders that researchers (or their jobs) can write.

The hub and the VRE service run as root and read and create files in project workspaces and held
folders: job folders, logs, progress, airlock inputs. Whoever can write there can swap any path
component for a symlink (``jobs -> /``, ``log.txt -> /etc/shadow``) or a FIFO, so root never
resolves such a path in one go: every component is opened relative to its parent with
``O_NOFOLLOW`` (a link anywhere on the way fails with ELOOP, whatever changed since the last
look), the last one without blocking, and only regular files and real folders are used. The
trusted ``base`` itself is a folder the hub created and researchers cannot replace (a mount point
in their sandboxes).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise PermissionError(1, "'..' is not allowed", rel)
    return parts


def open_dir_beneath(base: str | os.PathLike, rel: str) -> int:
    """A descriptor of the real folder ``rel`` below ``base`` (``""``: ``base`` itself)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in _parts(rel):
            nfd = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(base: str | os.PathLike, rel: str) -> int:
    """A read-only descriptor of the regular file ``rel`` below ``base``. Raises OSError (ELOOP
    for a link on the way, EINVAL for a FIFO, socket or device, ENOENT, ...)."""
    parts = _parts(rel)
    if not parts:
        raise IsADirectoryError(21, "is a folder", rel)
    fd = open_dir_beneath(base, "/".join(parts[:-1]))
    try:
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise OSError(22, "not a regular file", rel)
    return f


@contextlib.contextmanager
def opened_beneath(base: str | os.PathLike, rel: str) -> Iterator[object]:
    """``open_beneath`` as a binary file object."""
    with os.fdopen(open_beneath(base, rel), "rb") as f:
        yield f


def makedirs_beneath(base: str | os.PathLike, rel: str, *, uid: int, gid: int, mode: int,
                     fresh: bool = False) -> int:
    """Create the folders of ``rel`` below ``base`` as needed, each owned by ``uid:gid`` with
    ``mode``, set through the opened folder (fchown/fchmod: never a path). Returns a descriptor of the last one. A component
    that exists as anything but a real folder fails (ENOTDIR, ELOOP). ``fresh``: the last one is
    new and empty; whatever was already there under its name (planted ahead by someone who can
    write its parent) is renamed aside to ``.stale-<name>-<random>``."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = _parts(rel)
        for depth, part in enumerate(parts):
            nfd = mkdir_beneath(fd, part, uid=uid, gid=gid, mode=mode, fresh=fresh and depth == len(parts) - 1)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def mkdir_beneath(dir_fd: int, name: str, *, uid: int, gid: int, mode: int, fresh: bool = False) -> int:
    """The folder ``name`` of the folder ``dir_fd``, made if missing, owned by ``uid:gid`` with
    ``mode`` (set through the opened folder); returns a descriptor of it. One that exists as
    anything but a real folder fails (ENOTDIR, ELOOP). ``fresh``: new and empty; whatever was
    there is renamed aside (``rename_aside``)."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        if fresh:
            rename_aside(dir_fd, name)
            os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def rename_aside(dir_fd: int, name: str) -> None:
    """Rename the entry ``name`` of the folder ``dir_fd`` to ``.stale-<name>-<random>``: out of
    the way without reading or deleting it (a rename cannot block on, or follow, whatever a member
    planted in it)."""
    os.rename(name, f".stale-{name}-{os.urandom(4).hex()}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_beneath(dir_fd: int, name: str, data: bytes, *, uid: int, gid: int, mode: int) -> None:
    """Create the new regular file ``name`` in the folder ``dir_fd`` (never through a link or over
    an existing entry) with ``data``, owned ``uid:gid``, ``mode``."""
    f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.fchown(f, uid, gid)
        os.fchmod(f, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(f, view):]
    finally:
        os.close(f)


def walk_files_beneath(base: str | os.PathLike, rel: str = "") -> Iterator[tuple[str, int]]:
    """(path relative to ``base``/``rel``, size) of every regular file below ``rel``, links not
    followed (neither to folders nor to files), in sorted order."""
    try:
        top = open_dir_beneath(base, rel)
    except OSError:
        return
    stack: list[tuple[int, str]] = [(top, "")]
    while stack:
        fd, prefix = stack.pop()
        try:
            names = sorted(os.listdir(fd))
            subdirs = []
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield prefix + name, st.st_size
                elif stat.S_ISDIR(st.st_mode):
                    subdirs.append(name)
            for name in reversed(subdirs):
                try:
                    stack.append((os.open(name, _DIR, dir_fd=fd), f"{prefix}{name}/"))
                except OSError:
                    continue
        finally:
            os.close(fd)
