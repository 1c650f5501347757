"""The claims reader: a small HTTP server in a pod of the project's namespace that lets the hub
look at files on claims it cannot mount (homes and workspaces under ``k8s_storage = "pvc"``).

It runs the session image's ``python3 -I`` on this file's source, passed in the pod's command, so
nothing of it comes from a place a researcher can write (the claims are mounted read-only, and
``-I`` keeps the mounts and the environment off its import path). Hence: **standard library only,
no imports from vre**; ``tests/unit/test_claims.py`` runs it exactly that way.

It answers four questions about paths below ``--root`` and nothing else, never following a
symbolic link (every folder on the way is opened with ``O_NOFOLLOW``, as ``vre.beneath`` does):

- ``GET /lstat?path=``: ``{"mode": ..., "size": ...}`` of the entry itself;
- ``GET /readlink?path=``: ``{"target": ...}``;
- ``GET /scandir?path=``: ``{"entries": [[name, is_dir], ...]}`` (a link is never a folder);
- ``GET /read?path=[&offset=N][&limit=M]``: the bytes of a regular file, as many as it held when
  opened (its ``Content-Length``; a file that shrinks meanwhile ends the connection early, which
  the hub sees as an incomplete read), or a JSON error before the first byte; from byte
  ``offset``, at most ``limit`` of them (a job's log, read as it grows);
- ``GET /walk?path=``: ``{"files": [[relative path, size], ...], "truncated": bool}``, every
  regular file below the folder (at most ``WALK_MAX`` of ``WALK_VISIT`` entries looked at; links
  neither followed nor listed).

An error of the file system is ``{"errno": n, "error": "..."}`` with status 200 (the question was
answered); a bad request or token is a 4xx. Every request must carry ``Authorization: Bearer
<token>`` with the token in ``$VRE_READER_TOKEN`` (its pod's Secret): other pods of the project
can connect, and another member must not read the author's home through it. After ``--idle``
seconds without a request the server exits, so a reader whose hub went away ends by itself.
"""

import argparse
import errno
import hmac
import json
import os
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20
#: The most files a walk lists, and entries it looks at (a job's outputs: a listing, not an
#: inventory of the claims; a folder of a million entries must not hold the reader up).
WALK_MAX, WALK_VISIT = 10000, 100000
#: The largest offset or length a read takes (beyond any file; lseek's own limit is 2**63 - 1).
MAX_BYTES = 1 << 62


class Refused(Exception):
    """A request the reader does not answer (status, message)."""


def _parts(root: str, path: str) -> list[str]:
    """The components of ``path`` below ``root`` (absolute, normalised, never '..')."""
    if not path.startswith("/") or "\x00" in path:
        raise Refused(400, "give an absolute path")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise Refused(400, "'..' is not allowed")
    top = [p for p in root.split("/") if p]
    if parts[:len(top)] != top:
        raise Refused(403, f"{path} is not below {root}")
    return parts[len(top):]


def _parent(root: str, parts: list[str]) -> int:
    """A descriptor of the real folder holding the last of ``parts`` (a link on the way: ELOOP).
    ``vre.beneath.open_dir_beneath``'s walk, written again: this file imports nothing of vre."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _at(root: str, path: str, act, top):
    """``act(name, folder fd)`` for the last component of ``path``, in its real parent folder;
    ``top(root)`` for the root itself."""
    parts = _parts(root, path)
    if not parts:
        return top(root)
    fd = _parent(root, parts)
    try:
        return act(parts[-1], fd)
    finally:
        os.close(fd)


def _refuse(code: int, what: str):
    def refuse(_root):
        raise OSError(code, what)
    return refuse


def lstat(root: str, path: str) -> dict:
    st = _at(root, path, lambda name, fd: os.stat(name, dir_fd=fd, follow_symlinks=False), os.stat)
    return {"mode": st.st_mode, "size": st.st_size}


def readlink(root: str, path: str) -> dict:
    return {"target": _at(root, path, lambda name, fd: os.readlink(name, dir_fd=fd),
                          _refuse(errno.EINVAL, "not a symbolic link"))}


def scandir(root: str, path: str) -> dict:
    fd = _parent(root, [*_parts(root, path), "."])  # the folder itself, opened like those above it
    try:
        entries = []
        for name in sorted(os.listdir(fd)):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            entries.append([name, stat.S_ISDIR(st.st_mode)])
        return {"entries": entries}
    finally:
        os.close(fd)


def open_file(root: str, path: str) -> int:
    """A descriptor of the regular file ``path`` (no link followed, never blocking on a FIFO)."""
    f = _at(root, path, lambda name, fd: os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                                  dir_fd=fd), _refuse(errno.EISDIR, "is a folder"))
    if not stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise OSError(errno.EINVAL, "not a regular file")
    return f


def walk(root: str, path: str) -> dict:
    """Every regular file below the folder ``path``, depth first in sorted order: at most
    ``WALK_MAX`` files of at most ``WALK_VISIT`` entries looked at (``truncated`` then). Pending
    folders are kept by name and opened one at a time (no descriptor per folder held)."""
    parts = _parts(root, path)
    found, stack, visited = [], [""], 0
    while stack:
        prefix = stack.pop()
        try:
            fd = _parent(root, [*parts, *prefix.split("/")[:-1], "."])
        except OSError:
            if not prefix:
                raise      # the folder asked about: its error is the answer
            continue   # replaced by a link or gone meanwhile
        try:
            subdirs = []
            for name in sorted(os.listdir(fd)):
                visited += 1
                if visited > WALK_VISIT:
                    return {"files": found, "truncated": True}
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    if len(found) == WALK_MAX:
                        return {"files": found, "truncated": True}
                    found.append([prefix + name, st.st_size])
                elif stat.S_ISDIR(st.st_mode):
                    subdirs.append(f"{prefix}{name}/")
            stack.extend(reversed(subdirs))
        finally:
            os.close(fd)
    return {"files": found, "truncated": False}


ASKS = {"/lstat": lstat, "/readlink": readlink, "/scandir": scandir, "/walk": walk}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vre-claims-reader"

    def log_message(self, format, *args):  # one line per request would flood the pod's log
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        try:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
                raise Refused(401, "a token is required")
            self.server.last_request = time.monotonic()   # only the hub's questions keep it alive
            if url.path == "/health":
                return self._json(200, {"ok": True})
            query = parse_qs(url.query)
            path = (query.get("path") or [""])[0]
            if url.path == "/read":
                return self._read(path, _whole(query, "offset", 0), _whole(query, "limit", None))
            ask = ASKS.get(url.path)
            if ask is None:
                raise Refused(404, f"no such question: {url.path}")
            try:
                body = ask(self.server.root, path)
            except OSError as e:
                body = {"errno": e.errno, "error": e.strerror or str(e)}
            self._json(200, body)
        except Refused as e:
            self._json(e.args[0], {"error": e.args[1]})

    def _read(self, path: str, offset: int, limit: int | None) -> None:
        try:
            fd = open_file(self.server.root, path)
        except OSError as e:
            return self._json(200, {"errno": e.errno, "error": e.strerror or str(e)})
        try:
            # what it holds now: a file that shrinks meanwhile is cut short
            left = max(0, os.fstat(fd).st_size - offset)
            left = left if limit is None else min(left, limit)
            os.lseek(fd, offset, os.SEEK_SET)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(left))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while left > 0:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    break  # the connection closes early: the hub sees an incomplete read, never a short file
                self.wfile.write(chunk)
                left -= len(chunk)
                self.server.last_request = time.monotonic()
        finally:
            os.close(fd)


def _whole(query: dict, name: str, default):
    """A whole number of bytes (0 or more) from the query, or ``default`` when absent."""
    raw = (query.get(name) or [None])[0]
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_BYTES:
        raise Refused(400, f"{name} must be a whole number of bytes, at most {MAX_BYTES}")
    return int(raw)


def serve(root: str, host: str, port: int, token: str, idle: float, ready=None) -> None:
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.root, server.token, server.last_request = root.rstrip("/") or "/", token, time.monotonic()
    if ready is not None:
        ready(server.server_address[1])

    def idle_exit():
        while time.monotonic() - server.last_request < idle:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=idle_exit, daemon=True).start()
    server.serve_forever()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vre-claims-reader")
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=300)
    args = ap.parse_args(argv)
    token = os.environ.pop("VRE_READER_TOKEN", "")
    if len(token) < 32:
        print("vre-claims-reader: VRE_READER_TOKEN (32 characters or more) is required", file=sys.stderr)
        return 2

    def ready(port):
        print(f"vre-claims-reader: serving {args.root} on port {port}", flush=True)

    serve(args.root, args.host, args.port, token, args.idle, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
