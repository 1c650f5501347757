"""The append-only, hash-chained audit store (SQLite by default, PostgreSQL in production).

Layout. ``audit_events`` holds one row per event. ``seq`` numbers records 1, 2, 3, ... with no
gaps *by construction*: it is not an autoincrement, the writer computes ``head + 1`` while holding
the chain's write lock, and a rolled-back transaction leaves no hole. ``record`` is the canonical
JSON of the event plus ``seq`` and ``received_at`` (see :mod:`vre.audit.schema`), and
``hash = sha256(prev_hash + record)`` with ``prev_hash`` of seq 1 = 64 zeros. Binding ``seq`` and
``received_at`` into what is hashed is what lets verification tell a moved or swapped record from
an edited one. The fields queries filter on are also plain, indexed columns (``event_id``,
``time``, ``actor``, ``action``, ``outcome``, ``project``, ``dataset``, ``session``, ``source``,
plus ``received_at``; ``source`` is NULL for v1 records, sealed before it existed); verification
checks every one of them against the record text, so editing a column is detected as surely as
editing the text. The other fields (``actor_role``, ``target``,
``client``, ``details``, ``v``) live only in the record: nothing reads a copy that nothing checks,
and every column fewer makes appends and verification cheaper. Queries and exports return the
record itself (queries add ``"source": null`` to v1 records, so every row has the key).

Times are stored as fixed-width canonical strings (``2026-11-22T10:04:05.123456Z``), not as
timestamp types: the column then holds exactly the bytes that were hashed (no driver or time zone
round trip can change them), sorts chronologically on both backends, buckets by ``substr`` for
the timeline chart, and verification needs no datetime parsing (which would dominate its cost).

``audit_checkpoints`` holds signed checkpoints: Ed25519 signatures over
``{"hash", "key", "seq", "time", "v"}`` for the chain head, made automatically every
``checkpoint_every`` records or ``checkpoint_seconds`` (checked on append), on the first append,
and on :meth:`AuditStore.checkpoint`. Each checkpoint is also appended to a JSON Lines file
(``state_dir/audit/checkpoints.jsonl``, mode 0600; by default ``key_dir.parent / "audit" /
"checkpoints.jsonl"``, or the ``checkpoint_file`` argument), so that deleting checkpoints from
the database is not enough to hide a truncated tail. The file line is written after the database
commit: a crash in between leaves a checkpoint in the database only, which verification accepts.

Writers. Every append holds the chain's write lock for its transaction: ``BEGIN IMMEDIATE`` on
SQLite (on a private writer engine with ``synchronous=FULL``), ``pg_advisory_xact_lock`` plus
``SET LOCAL synchronous_commit = on`` on PostgreSQL. The hub and any number of CLI processes can
therefore append at once and the chain stays linear. Within a process, concurrent ``append``
calls are group-committed: threads queue their events, one of them writes the whole queue in a
single transaction, and each caller returns once its own event is committed (so a request pays
about one fsync, however many requests are in flight). :meth:`append` returns only after the
commit, i.e. an event is acknowledged only when durably stored; an event whose ``id`` is already
stored is not written again and the call returns False, which makes replays idempotent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, TextIO

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine

from .. import db as vdb
from . import export as export_formats
from . import keys
from .schema import (
    ACTIONS,
    OUTCOMES,
    CHECKPOINT_VERSION,
    SOURCES,
    AuditError,
    Event,
    canonical_json,
    canonical_record,
    format_time,
    parse_time,
    utcnow,
)
from .verify import VerifyReport, verify_chain

log = logging.getLogger("vre.audit")

GENESIS = "0" * 64
#: Key of the PostgreSQL advisory lock that serialises appends ("VREAUDIT" in ASCII).
PG_LOCK_KEY = 0x5652454155444954
_SeqType = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = the rowid

audit_events = Table(
    "audit_events", vdb.Base.metadata,
    Column("seq", _SeqType, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False),
    Column("time", String(27), nullable=False),
    Column("received_at", String(27), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("project", String(255), nullable=True),
    Column("dataset", String(255), nullable=True),
    Column("session", String(255), nullable=True),
    Column("source", String(16), nullable=True),
    Column("record", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("event_id", name="uq_audit_events_event_id"),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_actor", "actor"),
    Index("ix_audit_events_action", "action"),
    Index("ix_audit_events_outcome", "outcome"),
    Index("ix_audit_events_project", "project"),
    Index("ix_audit_events_dataset", "dataset"),
    Index("ix_audit_events_session", "session"),
    Index("ix_audit_events_source", "source"),
)

audit_checkpoints = Table(
    "audit_checkpoints", vdb.Base.metadata,
    Column("seq", _SeqType, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("time", String(27), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", String(128), nullable=False),
)

_BUCKETS = {"hour": 13, "day": 10, "month": 7}
_CHUNK = 2000
_MAX_LIMIT = 100_000


def db_identity(url: str) -> str:
    """Which database a line of the checkpoint file belongs to: a digest of its URL (without the
    password), so one state directory can move from SQLite to PostgreSQL without the old chain's
    checkpoints being held against the new one."""
    from sqlalchemy.engine import make_url

    try:
        safe = make_url(url).set(password=None).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: use it as given
        safe = url
    return hashlib.sha256(safe.encode()).hexdigest()[:16]


def checkpoint_payload(seq: int, hash_: str, time: str, key_id: str) -> str:
    """The exact text a checkpoint signature covers."""
    return canonical_json({"v": CHECKPOINT_VERSION, "seq": seq, "hash": hash_, "time": time, "key": key_id})


# --- engines ---------------------------------------------------------------------------------
_writers: dict[str, Engine] = {}
_writers_lock = threading.Lock()


def _writer_engine(url: str) -> Engine:
    """SQLite: a private engine whose connections use synchronous=FULL (fsync on every commit) and
    leave transaction control to us (``BEGIN IMMEDIATE`` takes the write lock before the head is
    read). PostgreSQL: the VRE's engine (locking and durability are set per transaction there)."""
    if not url.startswith("sqlite"):
        return vdb.engine_for(url)
    with _writers_lock:
        if url in _writers:
            return _writers[url]
        vdb.engine_for(url)  # creates the parent directory
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # autocommit mode: we issue BEGIN IMMEDIATE / COMMIT
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        _writers[url] = engine
        return engine


_INSERT_COLUMNS = ("seq", "event_id", "time", "received_at", "actor", "action", "outcome", "project", "dataset",
                   "session", "source", "record", "prev_hash", "hash")
_SQL = {
    "insert": f'INSERT INTO audit_events ({", ".join(chr(34) + c + chr(34) for c in _INSERT_COLUMNS)}) '
              f'VALUES ({", ".join("?" for _ in _INSERT_COLUMNS)})',
    "state": 'SELECT (SELECT "seq" FROM audit_events ORDER BY "seq" DESC LIMIT 1), '
             '(SELECT "hash" FROM audit_events ORDER BY "seq" DESC LIMIT 1), '
             '(SELECT "seq" FROM audit_checkpoints ORDER BY "seq" DESC LIMIT 1), '
             '(SELECT "time" FROM audit_checkpoints ORDER BY "seq" DESC LIMIT 1)',
    "copy": f'COPY audit_events ({", ".join(chr(34) + c + chr(34) for c in _INSERT_COLUMNS)}) FROM STDIN',
    "checkpoint": 'INSERT INTO audit_checkpoints ("seq", "hash", "time", "key_id", "signature") VALUES (?, ?, ?, ?, ?)',
    "exists": 'SELECT "event_id" FROM audit_events WHERE "event_id" IN ({})',
    "lock": "SELECT pg_advisory_xact_lock(?), set_config('synchronous_commit', 'on', true)",
}


_PG_EXISTS = 'SELECT "event_id" FROM audit_events WHERE "event_id" = ANY(%s)'
_PG_STATE_ONE = _SQL["state"] + ', EXISTS (SELECT 1 FROM audit_events WHERE "event_id" = %s)'
_PG_PIPELINED = 64   # rows an append sends with its COMMIT; more go by COPY


class _Pending:
    __slots__ = ("event", "done", "result", "error")

    def __init__(self, event: Event):
        self.event, self.done, self.result, self.error = event, False, False, None


def _hash(prev_hash: str, record: str) -> str:
    return hashlib.sha256((prev_hash + record).encode("utf-8")).hexdigest()


class AuditStore:
    """Append, query, export, checkpoint and verify the audit chain in the VRE database at ``db_url``.

    ``key_dir`` holds the checkpoint signing key (created on first use, see :mod:`vre.audit.keys`).
    The tables come from migration 0002: run ``vre.db.upgrade(db_url)`` first. Thread-safe.
    """

    def __init__(self, db_url: str, key_dir: Path, *, checkpoint_every: int = 1000,
                 checkpoint_seconds: float = 60.0, checkpoint_file: Path | None = None,
                 public_key: Path | None = None):
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise AuditError("checkpoint_every must be >= 1 and checkpoint_seconds > 0")
        self.db_url = db_url
        self.key_dir = Path(key_dir)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_file = Path(checkpoint_file) if checkpoint_file else \
            self.key_dir.parent / "audit" / "checkpoints.jsonl"
        self.public_key_path = Path(public_key) if public_key else self.key_dir / keys.PUBLIC_NAME
        self._sqlite = db_url.startswith("sqlite")
        self._reader = vdb.engine_for(db_url)
        self._writer = _writer_engine(db_url)
        self._db_id = db_identity(db_url)
        self._key = keys.load_or_create(self.key_dir)
        self._key_id = keys.key_id(self._key.public_key())
        self._lock = threading.Lock()        # one writer transaction per process at a time
        self._pg_conn = None                 # PostgreSQL: the writer's own connection, kept open
        self._deferred: list[tuple[str, object, bool]] = []  # PostgreSQL: sent with the COMMIT
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []

    def __repr__(self) -> str:
        return f"AuditStore({self.db_url.split('@')[-1]!r})"

    # --- writing -----------------------------------------------------------------------------
    def append(self, event: Event) -> bool:
        """Store ``event``; durable when this returns. False if its id was already stored."""
        if not isinstance(event, Event):
            raise AuditError(f"append() takes an Event, not {type(event).__name__}")
        mine = _Pending(event)
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if not mine.done:  # nobody committed it for us while we waited: lead a group commit
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                try:
                    new = self._write([p.event for p in batch])
                    for p in batch:
                        p.result = p.event.id in new
                except BaseException as e:
                    for p in batch:
                        p.error = e
                    raise
                finally:
                    for p in batch:
                        p.done = True
        if mine.error is not None:
            raise mine.error
        return mine.result

    def append_many(self, events: Iterable[Event]) -> int:
        """Store ``events`` in one transaction; returns how many were new (repeated ids count once)."""
        with self._lock:
            return len(self._write(events))

    def _sql(self, name: str) -> str:
        text_ = _SQL[name]
        return text_ if self._sqlite else text_.replace("?", "%s")

    @contextmanager
    def _transaction(self):
        """A raw DBAPI transaction (plain DBAPI: the append path runs a handful of statements, and
        SQLAlchemy's per-statement overhead would be most of a request's audit cost). The caller
        takes the chain's write lock first, with ``_open``.

        PostgreSQL: on the store's own connection, kept open (no pool check-out, no pre-ping);
        small inserts are deferred (``_insert_rows``) and sent in one pipeline with the COMMIT, so
        an append is two round trips: lock + head + stored ids, then rows + COMMIT."""
        if self._sqlite:
            raw = self._writer.raw_connection()
            try:
                cur = raw.cursor()
                try:
                    yield cur
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
            finally:
                raw.close()
            return
        conn = self._pg()
        self._deferred = []
        try:
            cur = conn.cursor()
            yield cur
            with conn.pipeline():
                self._send_deferred(cur)
                conn.commit()
        except BaseException:
            self._deferred = []
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection: dropped below
                pass
            if conn.broken or conn.closed:
                self._drop_pg()
            raise

    def _pg(self):
        """The writer's PostgreSQL connection (opened with the engine's own connect arguments)."""
        conn = self._pg_conn
        if conn is None or conn.closed or conn.broken:
            cargs, cparams = self._writer.dialect.create_connect_args(self._writer.url)
            conn = self._pg_conn = self._writer.dialect.loaded_dbapi.connect(*cargs, **cparams)
        return conn

    def _drop_pg(self) -> None:
        conn, self._pg_conn = self._pg_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def _send_deferred(self, cur) -> None:
        ops, self._deferred = self._deferred, []
        for sql, params, many in ops:
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)

    def _open(self, cur, ids: list[str] | None, *, within: bool = False) -> tuple[tuple, set[str] | None]:
        """Take the chain's write lock and read the head: (head seq, head hash, last checkpoint seq,
        its time), and which of ``ids`` are stored already (None when not asked). SQLite: ``BEGIN
        IMMEDIATE``. PostgreSQL: the advisory lock, the head and the ids in one pipeline (one round
        trip); the head is read by a statement after the lock's, so with a snapshot taken after
        the lock was granted."""
        if self._sqlite:
            if not (within and cur.connection.in_transaction):
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(_SQL["state"])
            return cur.fetchone(), None
        conn = cur.connection
        head = conn.cursor()
        have = conn.cursor() if ids and len(ids) > 1 else None
        with conn.pipeline():
            cur.execute(self._sql("lock"), (PG_LOCK_KEY,))
            if ids and len(ids) == 1:  # one request's event: an equality, prepared like the rest
                head.execute(_PG_STATE_ONE, (ids[0],))
            else:
                head.execute(_SQL["state"])
            if have is not None:  # one array parameter, planned each time (see _stored)
                have.execute(_PG_EXISTS, (ids,), prepare=False)
        row = head.fetchone()
        if ids and len(ids) == 1:
            return row[:4], ({ids[0]} if row[4] else set())
        return row, ({r[0] for r in have.fetchall()} if have is not None else None)

    def _stored(self, cur, ids: list[str]) -> set[str]:
        if self._sqlite:
            cur.execute(_SQL["exists"].format(", ".join("?" for _ in ids)), ids)
        else:  # one array parameter, planned each time: a cached generic plan made while the
            # table was small can scan it when it no longer is
            cur.execute(_PG_EXISTS, (ids,), prepare=False)
        return {r[0] for r in cur.fetchall()}

    def _write(self, events: Iterable[Event]) -> set[str]:
        """One transaction under the chain lock; returns the ids that were new. On PostgreSQL a
        kept connection the server has closed meanwhile (a restart) is replaced and the write
        tried once more: events are idempotent by id, so a retry never stores one twice."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        reused = not self._sqlite and self._pg_conn is not None
        try:
            return self._write_once(events)
        except Exception:
            if reused and self._pg_conn is None:  # the connection broke (and was dropped): once more
                log.warning("the audit writer's database connection was lost; reconnecting")
                return self._write_once(events)
            raise

    def _write_once(self, events: list[Event] | tuple) -> set[str]:
        with self._transaction() as cur:
            new, file_lines = self._chain(cur, events)
        for line in file_lines:
            self._append_file(line)
        return new

    def append_within(self, dbapi_connection, events: Iterable[Event], commit) -> set[str]:
        """Append ``events`` in a transaction of the caller's and commit it by calling ``commit()``,
        so that a change and its audit records are stored together or not at all (the job engine:
        a job's new state and its events). Returns the ids that were new.

        The chain's lock is held from the head's read to the commit: the caller's transaction
        should have done its own writes already. SQLite: a connection in a transaction must hold
        the write lock (it has written: Python's sqlite3 begins transactions at the first write);
        otherwise ``BEGIN IMMEDIATE`` takes it. If anything fails, nothing is committed here (the
        caller rolls back) and no checkpoint line is written to the file."""
        with self._lock:
            cur = dbapi_connection.cursor()
            try:
                new, lines = self._chain(cur, list(events), within=True)
                if not self._sqlite:
                    self._send_deferred(cur)
            finally:
                self._deferred = []
                cur.close()
            commit()
        for line in lines:
            self._append_file(line)
        return new

    def _chain(self, cur, events: list[Event] | tuple, *, within: bool = False) -> tuple[set[str], list[str]]:
        """Take the chain's lock, append ``events`` (chunked, checkpoints where due) on ``cur``:
        (the new ids, checkpoint lines for the file once committed)."""
        new: set[str] = set()
        seen: set[str] = set()
        file_lines: list[str] = []
        # a batch that fits one chunk (every request's append) has its stored ids read with the head
        ask = [] if len(events) > _CHUNK else list({e.id: None for e in events if isinstance(e, Event)})
        (head_seq, head_hash, cp_seq, cp_time), known = self._open(cur, ask, within=within)
        seq, prev = (head_seq, head_hash) if head_seq is not None else (0, GENESIS)
        first, cp_seq = cp_seq is None, cp_seq or 0
        every = self.checkpoint_every
        received_at = format_time(utcnow())
        it = iter(events)
        while True:
            chunk = []
            # end chunks where a checkpoint is due, so large batches are sealed at intervals too
            size = min(_CHUNK, every - seq % every)
            for e in it:
                if not isinstance(e, Event):
                    raise AuditError(f"append_many() takes Events, not {type(e).__name__}")
                if e.id not in seen:
                    seen.add(e.id)
                    chunk.append(e)
                if len(chunk) >= size:
                    break
            if not chunk:
                break
            stored = known if known is not None else self._stored(cur, [e.id for e in chunk])
            known = None
            rows = []
            for e in chunk:
                if e.id in stored:
                    continue
                seq += 1
                record = canonical_record(e, seq, received_at)
                h = _hash(prev, record)
                rows.append((seq, e.id, e.time_text, received_at, e.actor, e.action, e.outcome, e.project,
                             e.dataset, e.session, e.source, record, prev, h))
                prev = h
                new.add(e.id)
            if rows:
                self._insert_rows(cur, rows)
                if seq // every > cp_seq // every:  # at every multiple of checkpoint_every
                    file_lines.append(self._insert_checkpoint(cur, seq, prev))
                    cp_seq, cp_time = seq, received_at
        if seq > cp_seq and (first or self._age(cp_time) >= self.checkpoint_seconds):
            file_lines.append(self._insert_checkpoint(cur, seq, prev))
        return new, file_lines

    @staticmethod
    def _age(time_text: str) -> float:
        try:
            return (utcnow() - parse_time(time_text)).total_seconds()
        except AuditError:
            return float("inf")

    def _insert_rows(self, cur, rows: list[tuple]) -> None:
        """SQLite: executemany (in-process, already cheap). PostgreSQL: up to ``_PG_PIPELINED``
        rows are deferred and sent with the COMMIT (one round trip); more go by COPY, about three
        times faster than multi-row INSERTs and far faster than one execution per row."""
        if self._sqlite:
            if len(rows) == 1:
                cur.execute(self._sql("insert"), rows[0])
            else:
                cur.executemany(self._sql("insert"), rows)
            return
        if len(rows) <= _PG_PIPELINED:
            self._deferred.append((self._sql("insert"), rows, True))
            return
        self._send_deferred(cur)
        with cur.copy(_SQL["copy"]) as copy:
            for row in rows:
                copy.write_row(row)

    def _insert_checkpoint(self, cur, seq: int, hash_: str) -> str:
        now = format_time(utcnow())
        signature = keys.sign(self._key, checkpoint_payload(seq, hash_, now, self._key_id))
        if self._sqlite:
            cur.execute(self._sql("checkpoint"), (seq, hash_, now, self._key_id, signature))
        else:
            self._deferred.append((self._sql("checkpoint"), (seq, hash_, now, self._key_id, signature), False))
        return canonical_json({"seq": seq, "hash": hash_, "time": now, "key_id": self._key_id,
                               "signature": signature, "db": self._db_id})

    def _append_file(self, line: str) -> None:
        try:
            self.checkpoint_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.checkpoint_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:  # the event is committed; the database copy of the checkpoint stands
            log.error("could not append the audit checkpoint to %s: %s", self.checkpoint_file, e)

    def checkpoint(self) -> dict | None:
        """Sign the current head now; None if there is nothing new since the last checkpoint.
        Cheap; the hub may call it on a timer so a quiet chain is sealed too."""
        with self._lock:
            line = None
            with self._transaction() as cur:
                (head_seq, head_hash, cp_seq, _), _ = self._open(cur, None)
                if head_seq is not None and head_seq > (cp_seq or 0):
                    line = self._insert_checkpoint(cur, head_seq, head_hash)
            if line is None:
                return None
            self._append_file(line)
            cp = json.loads(line)
            cp.pop("db", None)
            return cp

    # --- verification --------------------------------------------------------------------------
    def verify(self, *, public_key: Path | None = None, extra_checkpoints: Iterable[Path] = (),
               workers: int | None = None) -> VerifyReport:
        """Walk the whole chain and check every checkpoint (see :mod:`vre.audit.verify`).

        ``public_key``: check signatures with this key file instead of ``key_dir``'s (a copy kept
        off the host); ``extra_checkpoints``: more checkpoint files to trust (e.g. a SIEM's copy);
        ``workers``: processes for long chains (default: one per CPU, at most 4)."""
        return verify_chain(self._reader, public_key=keys.load_public(public_key or self.public_key_path),
                            checkpoint_files=[self.checkpoint_file, *extra_checkpoints], workers=workers,
                            db_id=self._db_id)

    # --- reading -------------------------------------------------------------------------------
    def _where(self, user=None, project=None, dataset=None, action=None, outcome=None, session=None,
               source=None, since=None, until=None, text=None) -> list:
        c = audit_events.c
        clauses = []
        for col, value, name in ((c.actor, user, "user"), (c.project, project, "project"),
                                 (c.dataset, dataset, "dataset"), (c.session, session, "session")):
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise AuditError(f"filter {name} must be a non-empty string")
                clauses.append(col == value)
        if action is not None:
            if not isinstance(action, str) or not action:
                raise AuditError("filter action must be a non-empty string")
            if action.endswith("."):
                if not any(a.startswith(action) for a in ACTIONS):
                    raise AuditError(f"no action starts with {action!r}; prefixes: "
                                     f"{', '.join(sorted({a.split('.')[0] + '.' for a in ACTIONS}))}")
                clauses.append(c.action.startswith(action, autoescape=True))
            elif action not in ACTIONS:
                raise AuditError(f"unknown action {action!r}; use a name from ACTIONS or a prefix like 'session.'")
            else:
                clauses.append(c.action == action)
        if outcome is not None:
            if outcome not in OUTCOMES:
                raise AuditError(f"outcome {outcome!r} must be one of {', '.join(OUTCOMES)}")
            clauses.append(c.outcome == outcome)
        if source is not None:  # v1 records (NULL) match no source
            if source not in SOURCES:
                raise AuditError(f"source {source!r} must be one of {', '.join(SOURCES)}")
            clauses.append(c.source == source)
        if since is not None:
            clauses.append(c.time >= format_time(_as_time(since, "since")))
        if until is not None:
            clauses.append(c.time < format_time(_as_time(until, "until")))
        if text is not None:
            if not isinstance(text, str) or not text:
                raise AuditError("filter text must be a non-empty string")
            # The record is JSON: search for the text as JSON spells it inside a string.
            needle = json.dumps(text, ensure_ascii=False)[1:-1]
            clauses.append(c.record.icontains(needle, autoescape=True))
        return clauses

    def _select(self, filters: dict, *, newest_first=False):
        c = audit_events.c
        return (select(c.seq, c.record).where(*self._where(**filters))
                .order_by(c.seq.desc() if newest_first else c.seq))

    def query(self, *, user=None, project=None, dataset=None, action=None, outcome=None, session=None,
              source=None, since: dt.datetime | None = None, until: dt.datetime | None = None,
              text: str | None = None, limit: int = 1000, offset: int = 0,
              newest_first: bool = False) -> list[dict]:
        """Matching records (oldest first unless ``newest_first``): each the event's ``to_dict()``
        plus ``seq`` and ``received_at`` (v1 records get ``"source": None``: unknown, sealed before
        provenance). ``action`` may be a prefix ending in "." ("session."); ``user`` matches the
        actor; ``source`` is one of SOURCES; ``since`` is inclusive, ``until`` exclusive; ``text``
        is a case-insensitive substring of any field or detail."""
        if not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise AuditError(f"limit must be between 1 and {_MAX_LIMIT}")
        if not isinstance(offset, int) or offset < 0:
            raise AuditError("offset must be >= 0")
        filters = dict(user=user, project=project, dataset=dataset, action=action, outcome=outcome,
                       session=session, source=source, since=since, until=until, text=text)
        stmt = self._select(filters, newest_first=newest_first).limit(limit).offset(offset)
        with self._reader.connect() as conn:
            rows = [json.loads(r.record) for r in conn.execute(stmt)]
        for row in rows:
            row.setdefault("source", None)
        return rows

    def count(self, **filters) -> int:
        """How many records match (same filters as :meth:`query`; paging arguments are ignored)."""
        for paging in ("limit", "offset", "newest_first"):
            filters.pop(paging, None)
        with self._reader.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit_events)
                                .where(*self._where(**filters))).scalar_one()

    def export(self, fmt: str, out: TextIO, **filters) -> int:
        """Write matching records, oldest first, to ``out`` for a SIEM; returns rows written.

        ``fmt`` is ``jsonl`` or ``csv`` (see :mod:`vre.audit.export`). Filters as in :meth:`query`;
        ``limit``/``offset``/``newest_first`` are accepted too (default: every matching row).
        """
        if fmt not in export_formats.FORMATS:
            raise AuditError(f"export format {fmt!r} must be 'jsonl' or 'csv'")
        limit, offset = filters.pop("limit", None), filters.pop("offset", 0)
        newest_first = filters.pop("newest_first", False)
        c = audit_events.c
        stmt = (select(c.record, c.hash, c.prev_hash).where(*self._where(**filters))
                .order_by(c.seq.desc() if newest_first else c.seq))
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        with self._reader.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(stmt)
            return export_formats.write(fmt, (tuple(r) for r in result), out)

    def timeline(self, *, bucket: str = "day", **filters) -> list[dict]:
        """Events per dataset per hour/day/month: ``[{"bucket": "2026-11-22", "dataset": "x",
        "count": n}]``, oldest first; only events with a dataset; same filters as :meth:`query`."""
        if bucket not in _BUCKETS:
            raise AuditError(f"bucket {bucket!r} must be one of {', '.join(_BUCKETS)}")
        c = audit_events.c
        b = func.substr(c.time, 1, _BUCKETS[bucket]).label("bucket")
        stmt = (select(b, c.dataset, func.count().label("n"))
                .where(c.dataset.is_not(None), *self._where(**filters))
                .group_by(b, c.dataset).order_by(b, c.dataset))
        with self._reader.connect() as conn:
            return [{"bucket": r.bucket + (":00" if bucket == "hour" else ""), "dataset": r.dataset,
                     "count": r.n} for r in conn.execute(stmt)]

    def length(self) -> int:
        with self._reader.connect() as conn:
            return conn.execute(select(func.coalesce(func.max(audit_events.c.seq), 0))).scalar_one()


def _as_time(value, what: str) -> dt.datetime:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)  # filters: naive means UTC
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if isinstance(value, str) and "T" not in value and " " not in value.strip():
        try:
            d = dt.date.fromisoformat(value.strip())
            return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise AuditError(f"{what} {value!r} is not an ISO date or time") from None
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return parse_time(value, what)


__all__ = ["AuditStore", "VerifyReport", "audit_events", "audit_checkpoints", "GENESIS",
           "checkpoint_payload"]
