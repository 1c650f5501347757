"""What the hub keeps on its host: secrets created on first use, state files only the hub may read,
lock files its processes share, and the URLs of the unix sockets that its services and sessions
talk over."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from urllib.parse import quote


def unix_url(path: str | Path) -> str:
    """An ``http+unix://`` URL for a socket path (the form JupyterHub and its proxy accept)."""
    return "http+unix://" + quote(str(path), safe="")


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True):
    """Hold an exclusive lock on the root-only file ``path`` (created if missing; never through a
    link) and yield its descriptor; ``wait=False``: BlockingIOError when another holds it. The
    lock goes with the descriptor, so a holder that dies releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A secret kept in a root-only file, created on first use (never in the repository)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with a root-only file holding ``text``, atomically (readers see the old
    file or the new, never half of one; a new file beside it, then renamed: never through a
    link); its folder is made root-only when missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = path.with_name(f".{path.name}.new")
    new.unlink(missing_ok=True)
    with os.fdopen(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "w") as f:
        f.write(text)
    new.replace(path)


def make_private(path: Path) -> None:
    """Create ``path`` if missing and make it (and an SQLite database's -wal/-shm/-journal
    companions that exist) readable and writable by the hub's user alone. SQLite gives the
    companions it creates the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            os.chmod(p, 0o600)
        except FileNotFoundError:
            pass
