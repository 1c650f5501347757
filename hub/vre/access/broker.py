"""The access layer's privileged half: a root process that answers the few questions the
unprivileged layer may not answer itself.

The layer faces the network and runs as its own uid without capabilities; it cannot read a
researcher's home (to resolve a path) nor the VRE's databases (root-only). At start, before it
drops privileges, it forks this broker and keeps one end of two socket pairs, the broker's only
input: one for path checks (on the request path of file routes), one for records (audit and
egress, which wait on durable commits), so a check never queues behind a commit. Requests are
length-prefixed JSON with an id, and each answer carries its request's id. Records are answered
in order, by one thread; checks each in a thread of a small pool (``CHECK_WORKERS``), as they
come: a check that waits (a member's claims reader starting) holds up no other session's.

* ``classify {session, path, raw}``: where a session path leads (:mod:`vre.access.resolve`, from
  the mount table the hub wrote to the session's run directory), and whether it is DICOM. ``raw``:
  the route sends a file's bytes as they are (a download); on Kubernetes with claims only those
  are resolved through the member's claims reader (see ``_on_claims``);
* ``audit {events}``: store events recorded by the layer (the layer authenticated their actors);
* ``egress {rows}``: add the layer's byte counters to the day's totals; ``egress_today``: read them.

The broker dies with the layer (``PR_SET_PDEATHSIG``) and never talks to anything else.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import json
import logging
import os
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from .. import db as vdb
from ..audit.events import emit_many, role_of
from ..audit.schema import AuditError, Event
from ..claims.files import LOCAL
from ..settings import Settings, files_on_host
from .resolve import USER_KINDS, MountMap, access_file, candidates, is_dicom, read_head, resolve

log = logging.getLogger("vre.access.broker")
_LEN = struct.Struct("!I")
MAX_MESSAGE = 8 << 20
#: Checks answered at once (the checks channel); records are answered one at a time, in order.
CHECK_WORKERS = 8
#: Of those, raw-download checks on claims, which may wait for a member's claims reader to start:
#: a pool of their own, so the Lab's other checks never wait behind them.
SLOW_CHECK_WORKERS = 4
SOURCE = "access-layer"
ROLE_CACHE_SECONDS = 60


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _head(mm: MountMap, host: str) -> bytes:
    """The first bytes of a file of the session's (b"" for anything but a regular file)."""
    if mm.files is LOCAL:
        return read_head(host)
    try:
        return mm.files.read(os.path.dirname(host), os.path.basename(host), 0, 132)
    except OSError:
        return b""


class Broker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._maps: dict[tuple[str, bool], tuple[float, MountMap]] = {}
        self._roles: dict[str, tuple[float, str]] = {}

    def _map(self, session: str, raw: bool = False) -> MountMap:
        if "/" in session or session.startswith("."):
            raise ValueError(f"bad session id {session!r}")
        path = access_file(self.settings, session)
        mtime = path.stat().st_mtime
        key = (session, raw and not files_on_host(self.settings))
        cached = self._maps.get(key)
        if cached is None or cached[0] != mtime:
            table = json.loads(path.read_text())
            mm = MountMap.from_dump(table)
            if key[1]:
                mm = self._on_claims(mm, table)
            cached = (mtime, mm)
            self._maps[key] = cached
        return cached[1]

    def _on_claims(self, mm: MountMap, about: dict) -> MountMap:
        """The session's table with its home and workspace on its member's claims reader (the
        hub cannot mount them, and a link there must be read where it is, or a link to a dataset
        would pass for a file of the home). Only for raw downloads: the Lab's contents reads (every
        listing and open of its file browser) would keep a reader pod per member running, and
        each would wait for a reader's start; contents reads are classified by the mounts' kinds
        alone there, and their answers' bytes are still looked at for DICOM by the layer
        (``_inspect``). A check that waits for a reader holds up no other: checks are answered
        each in a thread of their own (``serve``)."""
        from ..claims.pods import ClaimFiles, reader_path   # the cluster's client, only where it is used
        from ..plan import build_plan

        with vdb.session_scope(self.settings.vre_db_url) as db:
            plan = build_plan(db, self.settings, about["user"], about["project"], None)
        mounts = tuple((t, reader_path(k) if k in USER_KINDS else s, k) for t, s, k in mm.mounts)
        return MountMap(mm.root, mounts, ClaimFiles(self.settings, plan))

    def classify(self, session: str, path: str, raw: bool = False) -> dict:
        """The most restrictive reading of ``path`` among the ways a server could take it."""
        mm = self._map(session, raw)
        worst = None
        for variant in candidates(path):
            try:
                r = resolve(mm, variant)
            except OSError:
                return {"kind": "system", "path": variant, "exists": False, "dir": False, "dicom": False,
                        "error": "too many symbolic links"}
            dicom = bool(r.exists and not r.is_dir and r.kind in ("home", "workspace")
                         and is_dicom(_head(mm, r.host)))
            verdict = {"kind": r.kind, "path": r.path, "exists": r.exists, "dir": r.is_dir, "dicom": dicom,
                       "dataset": r.dataset}
            rank = 2 if r.kind in ("dataset", "catalog") else 1 if dicom or r.kind not in ("home", "workspace") else 0
            if worst is None or rank > worst[0]:
                worst = (rank, verdict)
        return worst[1] if worst else {"kind": "system", "path": path, "exists": False, "dir": False, "dicom": False}

    def _role(self, name: str) -> str:
        """An actor's role, looked up at most once a minute (every audited cell needs it)."""
        if not name:
            return "anonymous"
        now = time.monotonic()
        cached = self._roles.get(name)
        if cached is None or now - cached[0] > ROLE_CACHE_SECONDS:
            cached = (now, role_of(self.settings, name))
            self._roles[name] = cached
        return cached[1]

    def audit(self, events: list[dict]) -> int:
        built = []
        for e in events:
            try:
                built.append(_event(e, self._role))
            except (AuditError, KeyError, TypeError) as err:
                log.error("access layer sent an invalid audit event (%s): %s", err, e)
        return emit_many(self.settings, built) if built else 0

    def egress(self, rows: list[dict]) -> None:
        with vdb.session_scope(self.settings.vre_db_url) as db:
            for row in rows:
                key = (row["day"], row["session"])
                rec = db.get(vdb.EgressDaily, key)
                if rec is None:
                    rec = vdb.EgressDaily(day=row["day"], session=row["session"], user=row["user"],
                                          project=row["project"], bytes=0, requests=0, classes={})
                    db.add(rec)
                rec.bytes += int(row["bytes"])
                rec.requests += int(row["requests"])
                classes = dict(rec.classes or {})
                for k, v in row.get("classes", {}).items():
                    classes[k] = classes.get(k, 0) + int(v)
                rec.classes = classes
                rec.updated_at = vdb.utcnow()

    def egress_today(self, day: str) -> list[dict]:
        with vdb.session_scope(self.settings.vre_db_url) as db:
            rows = db.scalars(select(vdb.EgressDaily).where(vdb.EgressDaily.day == day)).all()
            return [{"session": r.session, "user": r.user, "project": r.project, "bytes": r.bytes} for r in rows]

    def handle(self, request: dict):
        op = request.get("op")
        if op == "classify":
            return self.classify(str(request["session"]), str(request["path"]), bool(request.get("raw")))
        if op == "audit":
            return {"stored": self.audit(list(request["events"]))}
        if op == "egress":
            self.egress(list(request["rows"]))
            return {"ok": True}
        if op == "egress_today":
            return {"rows": self.egress_today(str(request["day"]))}
        raise ValueError(f"unknown broker request {op!r}")

    def slow(self, request: dict) -> bool:
        """Whether answering ``request`` may wait for a claims reader's start (``_on_claims``)."""
        return request.get("op") == "classify" and bool(request.get("raw")) and not files_on_host(self.settings)

    def serve(self, sock: socket.socket, workers: int = 1, slow_workers: int = 0) -> None:
        """Answer ``sock``'s requests: in order (``workers`` 1), or each in a thread of a pool of
        ``workers`` as they come, those that may wait for a reader's start (``slow``) in a pool
        of ``slow_workers`` of their own; every answer names its request's id. A request that
        breaks the protocol ends the channel (shut down, so the layer's waiting callers learn
        that the broker is gone rather than wait for ever)."""
        send = threading.Lock()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="vre-broker") if workers > 1 else None
        slow_pool = ThreadPoolExecutor(slow_workers, thread_name_prefix="vre-broker-slow") if slow_workers else None

        def answer(request: dict) -> None:
            try:
                try:
                    reply = {"ok": True, "result": self.handle(request), "id": request.get("id")}
                    data = json.dumps(reply).encode()
                except Exception as e:  # noqa: BLE001 - answered to the layer, which fails closed
                    log.exception("broker request %s failed", request.get("op"))
                    data = json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}",
                                       "id": request.get("id")}).encode()
                with send:
                    sock.sendall(_LEN.pack(len(data)) + data)
            except Exception:   # noqa: BLE001 - the socket is gone, or worse: end the channel
                log.exception("broker could not answer a %s request; closing the channel", request.get("op"))
                _shut(sock)

        try:
            while True:
                try:
                    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
                    if size > MAX_MESSAGE:
                        raise ValueError(f"a request of {size} bytes")
                    request = json.loads(_recv_exact(sock, size))
                    if not isinstance(request, dict):
                        raise ValueError("a request that is not an object")
                except (EOFError, ConnectionError):
                    return
                except ValueError as e:
                    log.error("the access layer broke the broker's protocol (%s); closing the channel", e)
                    return
                if slow_pool is not None and self.slow(request):
                    slow_pool.submit(answer, request)
                elif pool is not None:
                    pool.submit(answer, request)
                else:
                    answer(request)
        finally:
            _shut(sock)
            for p in (pool, slow_pool):
                if p is not None:
                    p.shutdown(wait=False, cancel_futures=True)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _event(e: dict, role_of) -> Event:
    fields = {k: e[k] for k in ("action", "actor", "actor_role", "outcome", "target", "project", "dataset",
                                "session", "client", "details", "id") if k in e}
    if "time" in e:
        fields["time"] = dt.datetime.fromisoformat(e["time"])
    fields.setdefault("actor_role", role_of(fields.get("actor", "")))
    return Event(source=SOURCE, **fields)


def run_child(settings: Settings, socks: list[socket.socket]) -> None:
    """The broker's process body (forked by the layer before it drops privileges): a thread per
    socket, the checks' (the first) with its pool; it ends when the layer closes them (or dies)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the layer
    libc.prctl(4, 0, 0, 0, 0)               # PR_SET_DUMPABLE 0: no ptrace, no /proc/<pid>/mem
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.umask(0o077)
    broker = Broker(settings)
    threads = [threading.Thread(target=broker.serve, args=(s, CHECK_WORKERS, SLOW_CHECK_WORKERS) if i == 0 else (s,),
                                daemon=True) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class BrokerClient:
    """The layer's end: requests go out one at a time, and a task of its own hands each answer
    to its caller by id (the checks channel answers as each check is done, not in order)."""

    def __init__(self, sock: socket.socket, on_gone=None):
        self._sock = sock
        self._on_gone = on_gone   # called once when the broker is gone (the layer then exits: restarted)
        self._lock = asyncio.Lock()
        self._reader = self._writer = None
        self._replies: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._last_id = 0

    async def _read_replies(self) -> None:
        why = None   # None: the layer itself is stopping (this task cancelled)
        try:
            while True:
                (size,) = _LEN.unpack(await self._reader.readexactly(_LEN.size))
                reply = json.loads(await self._reader.readexactly(size))
                waiter = self._pending.pop(reply.get("id"), None) if isinstance(reply, dict) else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except Exception as e:  # noqa: BLE001 - whatever ends the reading, every waiter is told
            why = type(e).__name__
        finally:
            gone = BrokerError(f"the broker is gone ({why or 'the layer stops'})")
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(gone)
            self._pending.clear()
            if why is not None:
                log.critical("the access layer's broker is gone (%s): the layer stops, to be started again", why)
                if self._on_gone is not None:
                    self._on_gone()

    async def call(self, op: str, **args):
        async with self._lock:   # one request written at a time; their answers come as they come
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
                self._replies = asyncio.ensure_future(self._read_replies())
            if self._replies.done():
                raise BrokerError("the broker is gone")
            rid = self._last_id = self._last_id + 1
            data = json.dumps({"op": op, "id": rid, **args}).encode()
            if len(data) > MAX_MESSAGE:
                raise BrokerError(f"a {op} request of {len(data)} bytes is over the broker's {MAX_MESSAGE}")
            waiter = self._pending[rid] = asyncio.get_running_loop().create_future()
            try:
                self._writer.write(_LEN.pack(len(data)) + data)
                await self._writer.drain()
            except BaseException as e:   # gone, or the caller cancelled: no waiter is left behind
                self._pending.pop(rid, None)
                if isinstance(e, ConnectionError):
                    raise BrokerError(f"the broker is gone ({type(e).__name__})") from None
                raise
        try:
            reply = await waiter
        finally:
            self._pending.pop(rid, None)   # a caller that gave up (its request cancelled) leaves nothing
        if not reply.get("ok"):
            raise BrokerError(reply.get("error") or "broker error")
        return reply["result"]


class BrokerError(RuntimeError):
    """The broker could not answer; the layer refuses what depended on the answer."""
