"""The few questions about a session's files that the hub asks when it resolves a path the way the
session would (``vre.access.resolve``) and when the airlock freezes a file: the entry itself
(``lstat``), a link's target, a folder's entries, and a regular file's bytes. The job service
asks two more of a project's workspace: part of a file (a job's log from an offset, its
progress) and the regular files below a folder (a job's outputs).

``LOCAL`` answers them on this machine, where homes and workspaces are folders of the host.
``ReaderFiles`` asks a claims reader (``vre.claims.reader``) in the project's namespace, for
Kubernetes with claims, which the hub cannot mount. Both never follow a link in the last
component, and both refuse anything but a regular file when asked for bytes.
"""

from __future__ import annotations

import errno
import http.client
import itertools
import json
import os
import threading
from typing import NamedTuple, Protocol
from urllib.parse import quote

from ..beneath import open_beneath, open_dir_beneath, walk_files_beneath
from ..errors import VREError

#: Seconds a question may take (a read's bytes may take longer: each chunk gets this much).
TIMEOUT_S = 30
#: The most bytes ``read`` returns at once, by default.
READ_MAX = 1 << 20
#: The most files ``walk`` lists (the reader's own cap, ``reader.WALK_MAX``).
WALK_MAX = 10000


class Stat(NamedTuple):
    st_mode: int
    st_size: int


class Files(Protocol):
    def lstat(self, path: str) -> Stat: ...
    def readlink(self, path: str) -> str: ...
    def scandir(self, path: str) -> list[tuple[str, bool]]: ...
    def open(self, base: str, rel: str): ...
    def read(self, base: str, rel: str, offset: int = 0, limit: int = READ_MAX) -> bytes: ...
    def walk(self, base: str, rel: str) -> list[tuple[str, int]]: ...


class LocalFiles:
    """This machine's files (host paths)."""

    def lstat(self, path: str) -> Stat:
        st = os.lstat(path)
        return Stat(st.st_mode, st.st_size)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def scandir(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of a folder's entries, sorted; a link is never a folder."""
        with os.scandir(path) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)

    def open(self, base: str, rel: str):
        """The regular file ``rel`` below ``base`` (no link on the way), as a binary file object."""
        return os.fdopen(open_beneath(base, rel), "rb", buffering=0)

    def read(self, base: str, rel: str, offset: int = 0, limit: int = READ_MAX) -> bytes:
        """Up to ``limit`` bytes of the regular file ``rel`` below ``base``, from ``offset``."""
        fd = open_beneath(base, rel)
        try:
            chunks, left = [], limit
            while left > 0:
                chunk = os.pread(fd, min(left, READ_MAX), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset, left = offset + len(chunk), left - len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def walk(self, base: str, rel: str) -> list[tuple[str, int]]:
        """(path below ``rel``, size) of its regular files, links not followed (OSError when
        ``rel`` is not a real folder, as from a reader)."""
        os.close(open_dir_beneath(base, rel))
        return list(itertools.islice(walk_files_beneath(base, rel), WALK_MAX))


LOCAL = LocalFiles()


class ReaderUnavailable(VREError):
    """The claims reader did not answer: nothing was decided about the files."""


def _os_error(body: dict, path: str) -> OSError:
    code = body.get("errno") or errno.EIO
    return OSError(code, body.get("error") or os.strerror(code), path)


def warm(files: Files, path: str) -> None:
    """Ask ``files`` a first question about ``path``: a claims reader starts its pod for it, so a
    request does that before its transaction (no database connection waits for a pod). What fails
    here is said again, with its answer, by the request itself."""
    if files is LOCAL:
        return
    try:
        files.lstat(path)
    except (OSError, VREError):
        pass


class ReaderFiles:
    """The files on a project's claims, as a claims reader at ``host:port`` sees them below its
    ``root``. Other paths (a dataset's, say) are not on the claims: nothing there, for the walk
    (the mount's kind, not its files, decides what a path may be used for)."""

    def __init__(self, host: str, port: int, token: str, root: str, *, on_lost=None):
        self.host, self.port, self.token, self.root = host, port, token, root.rstrip("/")
        self._local = threading.local()
        self._on_lost = on_lost   # called once the reader stops answering (it is then replaced)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        return conn

    def _request(self, what: str, path: str, *, keep: bool = True, extra: str = ""):
        conn = self._connection() if keep else http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        url = f"/{what}?path={quote(path, safe='')}{extra}"
        try:
            conn.request("GET", url, headers={"Authorization": f"Bearer {self.token}"})
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self._local.conn = None
            if self._on_lost:
                self._on_lost()
            raise ReaderUnavailable(f"the reader of the project's files did not answer ({e or type(e).__name__}); "
                                    "nothing was changed, try again") from None

    def _on_claims(self, path: str) -> None:
        if not (path + "/").startswith(self.root + "/"):
            raise FileNotFoundError(errno.ENOENT, "not on the project's claims", path)

    def _ask(self, what: str, path: str) -> dict:
        if what != "health":
            self._on_claims(path)
        r = self._request(what, path)
        body = json.loads(r.read() or b"{}")
        if r.status != 200:
            raise ReaderUnavailable(f"the reader of the project's files refused {what} of {path}: "
                                    f"{body.get('error', r.status)}")
        if "errno" in body:
            raise _os_error(body, path)
        return body

    def healthy(self) -> bool:
        """Whether the reader answers (which also gives it ``IDLE_S`` more)."""
        try:
            return self._ask("health", "/").get("ok") is True
        except (ReaderUnavailable, ValueError):
            return False

    def lstat(self, path: str) -> Stat:
        body = self._ask("lstat", path)
        return Stat(int(body["mode"]), int(body["size"]))

    def readlink(self, path: str) -> str:
        return str(self._ask("readlink", path)["target"])

    def scandir(self, path: str) -> list[tuple[str, bool]]:
        return [(str(n), bool(d)) for n, d in self._ask("scandir", path)["entries"]]

    def walk(self, base: str, rel: str) -> list[tuple[str, int]]:
        return [(str(p), int(size)) for p, size in self._ask("walk", f"{base.rstrip('/')}/{rel}")["files"]]

    def read(self, base: str, rel: str, offset: int = 0, limit: int = READ_MAX) -> bytes:
        """As ``LocalFiles.read``; a file cut short while it was sent is an OSError (EIO) here,
        as a failed read is there."""
        with self.open(base, rel, offset=offset, limit=limit) as f:
            try:
                return f.read()
            except http.client.IncompleteRead:
                raise OSError(errno.EIO, "the file changed while it was read", f"{base}/{rel}") from None

    def open(self, base: str, rel: str, *, offset: int = 0, limit: int | None = None):
        """The bytes of the regular file ``rel`` below ``base`` (from ``offset``, at most ``limit``):
        a stream to read to its end, which raises ``http.client.IncompleteRead`` when the reader
        stops short."""
        path = f"{base.rstrip('/')}/{rel}"
        self._on_claims(path)
        extra = (f"&offset={offset}" if offset else "") + (f"&limit={limit}" if limit is not None else "")
        r = self._request("read", path, keep=False, extra=extra)
        if r.getheader("Content-Type") == "application/json":
            body = json.loads(r.read() or b"{}")
            r.close()
            if r.status == 200 and "errno" in body:
                raise _os_error(body, path)
            raise ReaderUnavailable(f"the reader of the project's files refused to read {path}: "
                                    f"{body.get('error', r.status)}")
        return _Body(r)


class _Body:
    """A reader's answer to ``read``: http.client ends a body cut short as if it were whole; this
    raises ``IncompleteRead`` instead, so a copy is never a shorter file than the one named."""

    def __init__(self, response: http.client.HTTPResponse):
        self._r = response
        self._left = response.length

    def readinto(self, buf) -> int:
        n = self._r.readinto(buf)
        if n == 0 and len(buf) and self._left:
            raise http.client.IncompleteRead(b"", self._left)
        self._left -= n
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative: read until it is)."""
        if size >= 0:
            buf = bytearray(size)
            return bytes(buf[:self.readinto(buf)])
        buf, got = bytearray(max(self._left, 0)), 0
        view = memoryview(buf)
        while got < len(buf):
            got += self.readinto(view[got:])
        return bytes(buf)

    def close(self) -> None:
        self._r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
