"""Verification of the audit chain, and what it can and cannot prove.

``verify_chain`` reads every checkpoint (the checkpoint file first, then the database, so a
checkpoint committed meanwhile is never seen in the file only), checks each Ed25519 signature,
then streams the records in ``seq`` order (server-side cursor on PostgreSQL, batched fetch on
SQLite; it can run while the hub appends: it checks the records up to the head it saw at the
start) and for each record checks:

1. ``seq`` follows its predecessor (a gap: records were **deleted**);
2. ``hash == sha256(prev_hash + record)`` (the stored text or hash was **modified**);
3. ``prev_hash`` is the predecessor's hash; if not, the break is classified by looking for where
   the predecessor's real successor and the record's real predecessor are now: **reordered**
   (rows swapped or moved), **inserted** (an extra row sits in the chain), **deleted** (rows
   removed and the rest renumbered) or **modified** (the predecessor was rewritten and re-hashed);
4. every indexed column equals the value at its place in the record text, so an edited column
   is **modified** too (see ``_walk`` for how this is exact without parsing JSON); records of
   schema v1 and v2 (which added ``source``) are checked alike, each against its own text;
5. where a checkpoint was signed, the record's hash is the signed one.

After the walk: a signed checkpoint beyond the last record means the tail was **truncated**; a
checkpoint whose signature does not verify is **bad-signature**; a checkpoint that is in the file
but missing from the database was **deleted**. The first problem (in chain order) is reported
with its ``seq``; otherwise "intact" with the length and the last checkpoint.

Long chains are split into ranges walked by helper processes at once (one per CPU, at most 4);
each range also checks the link from the record before it, so the ranges together check exactly
what one walk does. Cost: a few microseconds per record (see ``bench/audit.py``).

Threat model, honestly. The attacker has write access to the database (say, a stolen database
password or a DBA account) but not the private key (``secrets_dir``, root-only, not in the
database). Hashes need no secret, so such an attacker *can* rewrite any suffix of the chain and
recompute every hash after it; what they cannot do is sign. Hence:

* Detected: any edit, deletion, insertion, reordering or truncation that touches a record at or
  before the last checkpoint, including re-hashed rewrites (the signed hash no longer matches);
  deleting checkpoints from the database while the checkpoint file keeps its copy; forged or
  altered checkpoints (bad signature); naive edits anywhere (a column, the text, a missing row)
  even after the last checkpoint, since they break the hash chain itself.
* Not detected: a careful rewrite of the records *after the last checkpoint* (the unsealed tail,
  at most ``checkpoint_every`` records or ``checkpoint_seconds`` of activity; the report states
  how many records are unsealed), e.g. dropping the last few events. Appending forged events at
  the tail is indistinguishable from the hub appending them: the store authenticates the chain,
  not who wrote to the database. An attacker who can also write the checkpoint file (root on the
  host) can remove the newest checkpoints from both copies and then truncate back to an older
  checkpoint; only a copy of checkpoints kept elsewhere (shipped to a SIEM, or given to
  ``vre audit verify --checkpoints FILE``) catches that. Root on the host can also read the
  private key, after which nothing stored on that host is evidence; keep a copy of the public
  key off the host (``--public-key``) so a swapped key pair is at least noticed.
* Times are evidence of order, not of the hour: ``time`` is what the caller said, ``received_at``
  the host clock when the record was sealed; neither comes from a trusted time source.
* The window of the unsealed tail is shortest when checkpoints are frequent: time-based
  checkpoints are only considered on append, so a hub should also call ``checkpoint()`` on a timer
  (a no-op when nothing is new) and ship the checkpoint file to a SIEM as it grows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sqlalchemy.engine import Engine

from . import keys
from .schema import CHECKPOINT_VERSION, canonical_json

log = logging.getLogger("vre.audit")

GENESIS = "0" * 64
_FETCH = 20_000
#: Chains at least this long are verified by several processes.
PARALLEL_MIN = 200_000
_COLUMNS = ('"seq", "prev_hash", "hash", "record", "action", "actor", "dataset", "event_id", "outcome", "project", '
            '"received_at", "session", "time", "source"')


@dataclass
class VerifyReport:
    ok: bool
    length: int
    last_checkpoint: dict | None
    problem: str | None
    seq: int | None
    detail: str
    unsealed: int = 0
    checkpoints: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "length": self.length, "last_checkpoint": self.last_checkpoint,
                "problem": self.problem, "seq": self.seq, "detail": self.detail, "unsealed": self.unsealed,
                "checkpoints": self.checkpoints, "notes": self.notes}


class _Found(Exception):
    def __init__(self, problem: str, seq: int, detail: str, **context):  # context: see _classify
        super().__init__(detail)
        self.problem, self.seq, self.detail, self.context = problem, seq, detail, context


def _read_file_checkpoints(path: Path, notes: list[str], db_id: str | None = None) -> list[dict]:
    """Checkpoints in a JSON Lines file; lines marked for another database (``"db"``) are skipped."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return out
    except OSError as e:
        notes.append(f"checkpoint file {path} unreadable: {e}")
        return out
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            cp = json.loads(line)
            if db_id and cp.get("db", db_id) != db_id:
                continue
            cp = {"seq": int(cp["seq"]), "hash": str(cp["hash"]), "time": str(cp["time"]),
                  "key_id": str(cp["key_id"]), "signature": str(cp["signature"])}
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
            continue
        out.append(cp)
    if bad:
        notes.append(f"{bad} unreadable line(s) in {path} ignored")
    return out


def _payload(cp: dict) -> str:
    return canonical_json({"v": CHECKPOINT_VERSION, "seq": cp["seq"], "hash": cp["hash"], "time": cp["time"],
                           "key": cp["key_id"]})


def verify_chain(engine: Engine, *, public_key, checkpoint_files: Iterable[Path] = (),
                 workers: int | None = None, db_id: str | None = None) -> VerifyReport:
    """Verify the chain in ``engine``'s database against ``public_key`` (see the module docstring).

    ``workers``: processes for chains of more than :data:`PARALLEL_MIN` records (default: up to
    4, one per CPU); 1 walks in this process only."""
    notes: list[str] = []
    # 1. checkpoints: files first, then the database (see module docstring for why this order)
    from_files: dict[tuple[int, str], dict] = {}
    for path in checkpoint_files:
        for cp in _read_file_checkpoints(Path(path), notes, db_id):
            cp["source"] = str(path)
            from_files.setdefault((cp["seq"], cp["signature"]), cp)
    with engine.connect() as conn:
        db_rows = conn.exec_driver_sql(
            'SELECT "seq", "hash", "time", "key_id", "signature" FROM audit_checkpoints ORDER BY "seq"').all()
    from_db = {(r[0], r[4]): {"seq": r[0], "hash": r[1], "time": r[2], "key_id": r[3], "signature": r[4],
                              "source": "db"} for r in db_rows}
    kid = keys.key_id(public_key)
    valid: dict[int, dict] = {}           # seq -> a genuine checkpoint there
    expected: dict[int, set[str]] = {}    # seq -> every hash genuinely signed for it
    bad_sig: dict | None = None
    missing_in_db: list[int] = []
    for ident, cp in [*from_db.items(), *((k, v) for k, v in from_files.items() if k not in from_db)]:
        if cp["key_id"] == kid and keys.signature_ok(public_key, _payload(cp), cp["signature"]):
            valid.setdefault(cp["seq"], cp)
            expected.setdefault(cp["seq"], set()).add(cp["hash"])
            if cp["source"] != "db":
                missing_in_db.append(cp["seq"])
        elif bad_sig is None or cp["seq"] < bad_sig["seq"]:
            bad_sig = cp
    missing_in_db.sort()

    # 2. the chain: one range, or several walked in parallel (each checks its first link against
    #    the stored hash just before it, so together they check exactly what one walk would)
    with engine.connect() as conn:
        top = conn.exec_driver_sql('SELECT max("seq") FROM audit_events').scalar() or 0
    found = _walk_ranges(engine, top, expected, workers)
    length = top
    if found is not None and found.problem == "link":
        found = _classify(engine, found)

    last = max((s for s in valid if s <= length), default=None) if found is None else None
    last_cp = _public(valid[last]) if last is not None else None
    report = VerifyReport(ok=False, length=length, last_checkpoint=last_cp, problem=None, seq=None, detail="",
                          checkpoints=len(valid), notes=notes,
                          unsealed=length - (last or 0))
    if found is not None:
        report.problem, report.seq, report.detail = found.problem, found.seq, found.detail
        with engine.connect() as conn:  # the walk stopped early: say how many rows there are
            report.length = conn.exec_driver_sql("SELECT count(*) FROM audit_events").scalar()
        return report
    beyond = [s for s in valid if s > length]
    if beyond:
        s = max(beyond)
        report.problem, report.seq = "truncated", length + 1
        report.detail = (f"truncated: the chain ends at seq {length} but a checkpoint signed at "
                         f"{valid[s]['time']} covers seq {s}; records from seq {length + 1} on were removed")
        return report
    if bad_sig is not None:
        report.problem, report.seq = "bad-signature", bad_sig["seq"]
        where = "the database" if bad_sig["source"] == "db" else f"checkpoint file {bad_sig['source']}"
        why = (f"signed by key {bad_sig['key_id']}, not this store's key {kid}" if bad_sig["key_id"] != kid
               else "its signature does not verify")
        report.detail = f"bad-signature: the checkpoint at seq {bad_sig['seq']} in {where} is forged or altered ({why})"
        return report
    if missing_in_db:
        s = missing_in_db[0]
        report.problem, report.seq = "deleted", s
        report.detail = (f"deleted: the checkpoint at seq {s} (signed {valid[s]['time']}) is in the checkpoint "
                         f"file but was deleted from the database"
                         + (f" ({len(missing_in_db)} checkpoints missing)" if len(missing_in_db) > 1 else ""))
        return report
    report.ok = True
    if last_cp:
        report.detail = f"intact: {length} records, last checkpoint at seq {last_cp['seq']} ({last_cp['time']})"
    else:
        report.detail = f"intact: {length} records, no checkpoint yet"
    if report.unsealed and length:
        report.detail += f"; {report.unsealed} record(s) after it not yet sealed by a checkpoint"
    return report


def _public(cp: dict) -> dict:
    return {k: cp[k] for k in ("seq", "hash", "time", "key_id", "signature")}


def _walk_ranges(engine: Engine, top: int, expected: dict[int, set[str]], workers: int | None) -> "_Found | None":
    """Walk seq 1..top, split over processes when the chain is long; the first problem found.

    Helpers are ``python -m vre.audit.verify`` subprocesses (not multiprocessing, which would
    re-import the caller's main module), given the URL and their range on stdin (never argv: the
    URL may hold a password). If a helper fails, its range is walked here instead."""
    minimum = PARALLEL_MIN if workers is None else 2  # asked for explicitly: split any chain
    workers = workers or _default_workers(engine)
    if workers <= 1 or top < minimum:
        return _walk_range(engine, 1, top, expected)
    step = -(-top // workers)
    bounds = [(lo, min(top, lo + step - 1)) for lo in range(1, top + 1, step)]
    url = engine.url.render_as_string(hide_password=False)
    helpers = []
    for lo, hi in bounds[1:]:
        job = json.dumps({"url": url, "lo": lo, "hi": hi,
                          "expected": {str(s): sorted(h) for s, h in expected.items() if lo <= s <= hi}})
        errors = tempfile.TemporaryFile("w+")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "vre.audit.verify"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors, text=True,
                                    env={**os.environ, "PYTHONPATH": _package_root()})
            proc.stdin.write(job)
            proc.stdin.close()
        except OSError:
            proc = None
        helpers.append((lo, hi, proc, errors))
    lo, hi = bounds[0]
    results = [_walk_range(engine, lo, hi, {s: h for s, h in expected.items() if s <= hi})]
    for lo, hi, proc, errors in helpers:
        result = None
        if proc is not None:
            out = proc.stdout.read()
            proc.wait()
            if proc.returncode == 0:
                data = json.loads(out)
                result = _Found(**data) if data else None
            else:
                errors.seek(0)
                log.warning("audit verify helper for seq %s..%s failed (%s); walking it here", lo, hi,
                            errors.read().strip()[-500:])
                proc = None
        errors.close()
        if proc is None:
            result = _walk_range(engine, lo, hi, {s: h for s, h in expected.items() if lo <= s <= hi})
        results.append(result)
    problems = [r for r in results if r is not None]
    return min(problems, key=lambda f: f.seq) if problems else None


def _default_workers(engine: Engine) -> int:
    """One process per CPU (at most 4), also when the PostgreSQL server runs on this host: each
    helper then keeps a server process busy too, but with COPY streaming both sides work at once
    and the ranges still overlap (2 CPUs, local server, 1,000,000 records: 6.0 s with 2 helpers
    against 11.6 s with one, see bench/README.md)."""
    return min(4, os.cpu_count() or 1)


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def _helper_main() -> int:
    """``python -m vre.audit.verify``: walk one range for a parallel verification (job on stdin)."""
    from .. import db as vdb

    job = json.loads(sys.stdin.read())
    found = _walk_range(vdb.engine_for(job["url"]), job["lo"], job["hi"],
                        {int(s): set(h) for s, h in job["expected"].items()})
    print(json.dumps(None if found is None else {"problem": found.problem, "seq": found.seq,
                                                 "detail": found.detail, **found.context}))
    return 0


def _walk_range(engine: Engine, lo: int, hi: int, expected: dict[int, set[str]]) -> "_Found | None":
    """Check records lo..hi (linked to the stored hash of lo-1); the first problem, or None."""
    if hi < lo:
        return None
    prev_hash = GENESIS
    raw = engine.raw_connection()
    pg = engine.dialect.name == "postgresql"
    try:
        cur = raw.cursor()
        if lo > 1:
            cur.execute(f'SELECT "hash" FROM audit_events WHERE "seq" = {int(lo) - 1}')
            anchor = cur.fetchone()
            # a missing anchor is a gap the range below reports; this range cannot check its first link
            prev_hash = anchor[0] if anchor else "(missing)"
        cur.close()
        query = f'SELECT {_COLUMNS} FROM audit_events WHERE "seq" >= {int(lo)} AND "seq" <= {int(hi)} ORDER BY "seq"'
        if pg:  # COPY streams: the server sends while this process hashes (a cursor's FETCHes
            # alternate: each side waits for the other); rows are parsed by psycopg's C code
            cur = raw.driver_connection.cursor()
            try:
                with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
                    copy.set_types(["int8"] + ["text"] * 13)
                    last = _walk(_CopyRows(copy.rows()), expected, lo - 1, prev_hash)
            except _Found as f:
                return f
            finally:
                cur.close()
        else:
            cur = raw.cursor()
            cur.execute(query)
            try:
                last = _walk(cur, expected, lo - 1, prev_hash)
            except _Found as f:
                return f
            finally:
                cur.close()
        if last < hi:
            return _Found("deleted", last + 1, f"deleted: record(s) seq {last + 1}..{hi} are missing "
                          f"(the chain jumps from seq {last} to {hi + 1})")
        return None
    finally:
        try:
            raw.rollback()
        finally:
            raw.close()


class _CopyRows:
    """``fetchmany`` over the rows of a COPY, for ``_walk``."""

    def __init__(self, rows):
        self._rows = rows

    def fetchmany(self, n: int) -> list[tuple]:
        return list(itertools.islice(self._rows, n))


def _walk(cur, expected: dict[int, set[str]], prev_seq: int, prev_hash: str) -> int:
    """The hot loop: returns the last seq, or raises _Found at the first bad record.

    A few microseconds per record: one sha256, and for the columns a handful of anchored string
    comparisons against the record text, with the column values inserted verbatim (no JSON
    escaping, no parsing). That is exact when the record holds no backslash (then no sealed value
    contains a character JSON escapes, and every double quote in the record is structure) and no
    column value holds a double quote (so values cannot be shifted across fields): then a
    verbatim match and a match of the JSON-escaped value are the same thing. Anything else takes
    the exact path, which parses the record. Times need no parsing: they are stored canonical.
    ``source`` is NULL exactly for v1 records, whose text has no ``"source"`` key: a source put on
    a v1 row, or taken off a v2 row, is a mismatch like any other.
    """
    sha256 = hashlib.sha256
    fetch = cur.fetchmany
    while True:
        rows = fetch(_FETCH)
        if not rows:
            return prev_seq
        for seq, ph, h, rec, action, actor, dataset, eid, outcome, project, received_at, session, time, source in rows:
            if seq != prev_seq + 1:
                raise _Found("deleted", prev_seq + 1,
                             f"deleted: record(s) seq {prev_seq + 1}..{seq - 1} are missing "
                             f"(the chain jumps from seq {prev_seq} to {seq})")
            if sha256((ph + rec).encode("utf-8")).hexdigest() != h:
                raise _Found("modified", seq, f"modified: the stored text or hash of record seq {seq} was changed "
                             f"(its hash does not match its content)")
            if ph != prev_hash:
                raise _Found("link", seq, "", prev_seq=prev_seq, prev_hash=prev_hash, ph=ph, rec=rec)
            same = False
            if "\\" in rec or '"' in f"{action}{actor}{dataset}{eid}{outcome}{project}{received_at}{session}{time}" \
                    f"{source}" or None in (action, actor, eid, outcome, received_at, time):
                same = _columns_match(rec, seq, action, actor, dataset, eid, outcome, project, received_at,
                                      session, time, source)
            elif rec.startswith(h1 := f'{{"action":"{action}","actor":"{actor}","actor_role":"'):
                # skip the role and client values (quote-free here), then check dataset
                i = rec.find('"', len(h1))
                if rec.startswith('","client":', i):
                    j = i + 11
                    j = rec.find('"', j + 1) + 1 if rec.startswith('"', j) else j + 4
                    d = "null" if dataset is None else f'"{dataset}"'
                    if rec.startswith(f',"dataset":{d},"details":', j):
                        k = rec.rfind(',"target":"')
                        p = "null" if project is None else f'"{project}"'
                        s = "null" if session is None else f'"{session}"'
                        src = "" if source is None else f',"source":"{source}"'
                        same = k > 0 and rec.endswith(
                            f',"id":"{eid}","outcome":"{outcome}","project":{p},"received_at":"{received_at}",'
                            f'"seq":{seq},"session":{s}{src}', 0, k) and rec.startswith(
                            f'","time":"{time}","v":', rec.find('"', k + 11))
            if not same:
                which = _which_column(rec, seq, action, actor, dataset, eid, outcome, project, received_at,
                                      session, time, source)
                raise _Found("modified", seq, f"modified: a column of record seq {seq} ({which}) no longer "
                             f"matches the sealed record")
            if seq in expected and expected[seq] != {h}:
                raise _Found("modified", seq, f"modified: records at or before seq {seq} were rewritten and "
                             f"re-hashed: a checkpoint signed for seq {seq} does not match the chain"
                             + (" (the chain was rolled back and re-grown: two signed heads at this seq)"
                                if len(expected[seq]) > 1 else ""))
            prev_hash, prev_seq = h, seq


def _column_values(seq, action, actor, dataset, eid, outcome, project, received_at, session, time, source) -> dict:
    return {"action": action, "actor": actor, "dataset": dataset, "id": eid, "outcome": outcome,
            "project": project, "received_at": received_at, "seq": seq, "session": session, "time": time,
            "source": source}


def _columns_match(rec, *columns) -> bool:
    """Exact check: parse the record and compare every column (records with escapes, odd values)."""
    try:
        data = json.loads(rec)
    except ValueError:
        return False
    if type(data) is not dict:
        return False
    return all(type(data.get(k)) is type(v) and data.get(k) == v for k, v in _column_values(*columns).items())


def _which_column(rec, *columns) -> str:
    try:
        data = json.loads(rec)
        if type(data) is not dict:
            raise ValueError
    except ValueError:
        return "record text unreadable"
    diff = [(k, data.get(k), v) for k, v in _column_values(*columns).items()
            if type(data.get(k)) is not type(v) or data.get(k) != v]
    return ", ".join(f"{k}: sealed {old!r}, now {new!r}" for k, old, new in diff) or "layout"


def _classify(engine: Engine, found: _Found) -> _Found:
    """Name a broken link at record ``found.seq`` (only runs on tampering; may scan the table)."""
    ctx = found.context
    prev_seq, prev_hash, ph, rec, seq = ctx["prev_seq"], ctx["prev_hash"], ctx["ph"], ctx["rec"], found.seq
    try:
        own = int(json.loads(rec).get("seq"))
    except (ValueError, TypeError, AttributeError):
        own = None
    with engine.connect() as conn:
        successor = conn.exec_driver_sql(
            'SELECT "seq" FROM audit_events WHERE "prev_hash" = %s AND "seq" <> %s ORDER BY "seq" LIMIT 1'
            if engine.dialect.name == "postgresql" else
            'SELECT "seq" FROM audit_events WHERE "prev_hash" = ? AND "seq" <> ? ORDER BY "seq" LIMIT 1',
            (prev_hash, seq)).scalar()
        predecessor = conn.exec_driver_sql(
            'SELECT "seq" FROM audit_events WHERE "hash" = %s ORDER BY "seq" LIMIT 1'
            if engine.dialect.name == "postgresql" else
            'SELECT "seq" FROM audit_events WHERE "hash" = ? ORDER BY "seq" LIMIT 1', (ph,)).scalar()
    if successor is not None and successor > seq:
        if own == seq:
            return _Found("inserted", seq, f"inserted: record seq {seq} does not belong to the chain "
                          f"(the record that followed seq {prev_seq} is now at seq {successor})")
        return _Found("reordered", seq, f"reordered: record seq {seq} holds the record sealed as seq {own}, "
                      f"and the record sealed as seq {seq} is now at seq {successor}")
    if predecessor is not None and predecessor < prev_seq:
        first = predecessor + 1
        what = f"record seq {first} does" if first == prev_seq else f"records seq {first}..{prev_seq} do"
        return _Found("inserted", first, f"inserted: {what} not belong to the chain (the record now at seq {seq} "
                      f"was sealed right after seq {predecessor})")
    if predecessor is not None and predecessor > seq:
        return _Found("reordered", seq, f"reordered: record seq {seq} was sealed after the record now at "
                      f"seq {predecessor}")
    if own is not None and own > seq:
        return _Found("deleted", prev_seq + 1, f"deleted: {own - seq} record(s) after seq {prev_seq} were removed "
                      f"and later records renumbered (seq {seq} was sealed as seq {own})")
    if own is not None and own < seq:
        return _Found("inserted", own, f"inserted: {seq - own} record(s) were inserted before seq {seq} "
                      f"(it was sealed as seq {own})")
    return _Found("modified", prev_seq, f"modified: record seq {prev_seq} was rewritten and re-hashed "
                  f"(seq {seq} was sealed after a different record)")


if __name__ == "__main__":
    sys.exit(_helper_main())
