"""`verify` against an attacker with write access to the database (raw SQL, no private key):
each kind of tampering is detected and located by seq, on SQLite and real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, text, update

from vre import db as vdb
from vre.audit import AuditStore, Event, keys
from vre.audit.schema import canonical_record
from vre.audit.store import audit_checkpoints, audit_events, checkpoint_payload

N = 30


def ev(i: int) -> Event:
    return Event("dicom.instance_view", actor=f"user{i % 3}", actor_role="researcher", project="p1",
                 dataset="lung1", session="s1", target=f"instance/{i}", details={"i": i})


@pytest.fixture
def chain(audit_url, tmp_path):
    """30 records, checkpoints every 10 (at 10, 20, 30) plus the first append's."""
    store = AuditStore(audit_url, tmp_path / "secrets", checkpoint_every=10)
    for i in range(1, N + 1):
        store.append(ev(i))
    return store


def sql(store, statement, params=None):
    with vdb.engine_for(store.db_url).begin() as conn:
        if isinstance(statement, str):
            return conn.execute(text(statement), params or {})
        return conn.execute(statement)


def row(store, seq) -> dict:
    with vdb.engine_for(store.db_url).connect() as conn:
        return dict(conn.execute(select(audit_events).where(audit_events.c.seq == seq)).mappings().one())


def shift(store, first: int, by: int) -> None:
    """Renumber records seq >= first by ``by`` (one row at a time so the primary key never clashes)."""
    with vdb.engine_for(store.db_url).begin() as conn:
        seqs = conn.execute(select(audit_events.c.seq).where(audit_events.c.seq >= first)
                            .order_by(audit_events.c.seq.desc() if by > 0 else audit_events.c.seq)).scalars().all()
        for s in seqs:
            conn.execute(update(audit_events).where(audit_events.c.seq == s).values(seq=s + by))


def assert_found(store, problem: str, seq: int, words: str = ""):
    report = store.verify()
    assert not report.ok, report.detail
    assert (report.problem, report.seq) == (problem, seq), report.detail
    assert report.detail.startswith(problem)
    assert words in report.detail
    return report


def test_intact_chain_reports_length_and_last_checkpoint(chain):
    report = chain.verify()
    assert report.ok and report.problem is None and report.seq is None
    assert report.length == N and report.unsealed == 0
    assert report.last_checkpoint["seq"] == 30 and len(report.last_checkpoint["hash"]) == 64
    assert report.detail == f"intact: 30 records, last checkpoint at seq 30 ({report.last_checkpoint['time']})"
    chain.append(ev(99))
    report = chain.verify()
    assert report.ok and report.unsealed == 1 and "1 record(s) after it not yet sealed" in report.detail


def test_empty_chain_is_intact(audit_url, tmp_path):
    report = AuditStore(audit_url, tmp_path / "secrets").verify()
    assert report.ok and report.length == 0 and report.last_checkpoint is None
    assert report.detail == "intact: 0 records, no checkpoint yet"


def test_edited_column_is_found(chain):
    sql(chain, "UPDATE audit_events SET actor = 'someone_else' WHERE seq = 7")
    assert_found(chain, "modified", 7, "actor: sealed 'user1', now 'someone_else'")


def test_edited_indexed_time_and_dataset_are_found(chain):
    sql(chain, "UPDATE audit_events SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 12")
    assert_found(chain, "modified", 12, "time")
    sql(chain, "UPDATE audit_events SET dataset = NULL WHERE seq = 4")
    assert_found(chain, "modified", 4, "dataset")


def test_edited_record_text_is_found(chain):
    sql(chain, "UPDATE audit_events SET record = REPLACE(record, 'instance/9', 'instance/8') WHERE seq = 9")
    assert_found(chain, "modified", 9, "hash does not match")


def test_edited_text_with_recomputed_hash_is_found(chain):
    r = row(chain, 9)
    forged = r["record"].replace('"i":9', '"i":90')
    sql(chain, update(audit_events).where(audit_events.c.seq == 9)
        .values(record=forged, hash=hashlib.sha256((r["prev_hash"] + forged).encode()).hexdigest()))
    assert_found(chain, "modified", 9, "rewritten and re-hashed")


def test_deleted_middle_record_is_found(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq = 15")
    assert_found(chain, "deleted", 15, "seq 15..15 are missing")


def test_deleted_record_with_renumbering_is_found(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq = 15")
    shift(chain, 16, -1)
    assert_found(chain, "deleted", 15, "renumbered")


def test_inserted_forged_record_is_found(chain):
    """A careful forgery: renumber to make room, link to the predecessor, hash correctly."""
    shift(chain, 11, +1)
    before = row(chain, 10)
    fake = ev(1000)
    received = json.loads(before["record"])["received_at"]
    record = canonical_record(fake, 11, received)
    sql(chain, insert(audit_events).values(
        seq=11, event_id=fake.id, time=fake.time_text, received_at=received, actor=fake.actor,
        action=fake.action, outcome=fake.outcome, project=fake.project, dataset=fake.dataset, session=fake.session,
        source=fake.source, record=record, prev_hash=before["hash"],
        hash=hashlib.sha256((before["hash"] + record).encode()).hexdigest()))
    assert_found(chain, "inserted", 11, "does not belong")


def test_swapped_records_are_found(chain):
    a, b = row(chain, 5), row(chain, 9)
    with vdb.engine_for(chain.db_url).begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq.in_([5, 9])))
        conn.execute(insert(audit_events).values({**a, "seq": 9}))
        conn.execute(insert(audit_events).values({**b, "seq": 5}))
    assert_found(chain, "reordered", 5, "sealed as seq 9")


def test_truncated_tail_is_found(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq > 26")
    report = assert_found(chain, "truncated", 27, "chain ends at seq 26")
    assert report.length == 26


def test_truncation_hidden_by_deleting_db_checkpoints_is_found_through_the_file(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq > 21")
    sql(chain, "DELETE FROM audit_checkpoints WHERE seq > 20")
    assert_found(chain, "truncated", 22, "covers seq 30")


def test_deleted_checkpoints_are_found(chain):
    sql(chain, "DELETE FROM audit_checkpoints")
    assert_found(chain, "deleted", 1, "deleted from the database")


def test_checkpoint_with_bad_signature_is_found(chain):
    sql(chain, "UPDATE audit_checkpoints SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 20")
    assert_found(chain, "bad-signature", 20, "signature does not verify")


def test_checkpoint_signed_with_another_key_is_found(chain):
    """An attacker rewrites the tail and signs a new checkpoint with their own key."""
    other = Ed25519PrivateKey.generate()
    head = row(chain, 30)
    import base64

    payload = checkpoint_payload(31, head["hash"], "2026-01-01T00:00:00.000000Z", "0123456789abcdef")
    sql(chain, insert(audit_checkpoints).values(
        seq=31, hash=head["hash"], time="2026-01-01T00:00:00.000000Z", key_id="0123456789abcdef",
        signature=base64.b64encode(other.sign(payload.encode())).decode()))
    assert_found(chain, "bad-signature", 31, "signed by key 0123456789abcdef")


def test_rewritten_and_rehashed_history_is_caught_by_checkpoints(chain):
    """Rewrite record 14 and recompute every later hash: internally consistent, but signed
    checkpoint 20 no longer matches."""
    with vdb.engine_for(chain.db_url).begin() as conn:
        rows = conn.execute(select(audit_events).where(audit_events.c.seq >= 14)
                            .order_by(audit_events.c.seq)).mappings().all()
        prev = rows[0]["prev_hash"]
        for r in rows:
            rec = r["record"].replace('"i":14', '"i":41') if r["seq"] == 14 else r["record"]
            h = hashlib.sha256((prev + rec).encode()).hexdigest()
            conn.execute(update(audit_events).where(audit_events.c.seq == r["seq"])
                         .values(record=rec, prev_hash=prev, hash=h))
            prev = h
    assert_found(chain, "modified", 20, "checkpoint signed for seq 20 does not match")


def test_unsealed_tail_rewrite_is_a_documented_limit(chain):
    """Records after the last checkpoint can be dropped by an attacker without a trace;
    verify says how many records are exposed that way."""
    for i in range(3):
        chain.append(ev(100 + i))
    assert chain.verify().unsealed == 3
    sql(chain, "DELETE FROM audit_events WHERE seq > 31")
    report = chain.verify()
    assert report.ok and report.length == 31 and report.unsealed == 1


def test_public_key_kept_off_host(chain, tmp_path):
    copy = tmp_path / "auditor.pub"
    copy.write_bytes((tmp_path / "secrets" / "audit_ed25519.pub").read_bytes())
    assert chain.verify(public_key=copy).ok
    other = tmp_path / "other" / "k"
    AuditStore(chain.db_url, other.parent)  # creates a different key
    report = chain.verify(public_key=other.parent / "audit_ed25519.pub")
    assert report.problem == "bad-signature"


def test_parallel_verification_finds_the_same_problems(chain):
    """Split over helper processes (seq 1..15 here, 16..30 in a helper), problems at and near the
    boundary are found and located as by one walk."""
    assert chain.verify(workers=2).ok
    r = row(chain, 16)
    sql(chain, "UPDATE audit_events SET outcome = 'denied' WHERE seq = 20")
    assert_found(chain, "modified", 20)
    report = chain.verify(workers=2)
    assert (report.problem, report.seq) == ("modified", 20)
    sql(chain, "DELETE FROM audit_events WHERE seq = 16")
    report = chain.verify(workers=2)
    assert (report.problem, report.seq) == ("deleted", 16), report.detail
    sql(chain, insert(audit_events).values(**r))
    sql(chain, "DELETE FROM audit_events WHERE seq = 15")
    report = chain.verify(workers=2)
    assert (report.problem, report.seq) == ("deleted", 15), report.detail


# --- two processes appending at once ---------------------------------------------------------
def _append_from_process(url: str, key_dir: str, tag: str, n: int) -> None:
    store = AuditStore(url, key_dir, checkpoint_every=7)
    for i in range(n):
        if i % 4 == 0:
            store.append_many([Event("job.start", actor=tag, actor_role="service", details={"i": i, "b": j})
                               for j in range(3)])
        else:
            store.append(Event("job.finish", actor=tag, actor_role="service", details={"i": i}))


def test_two_processes_appending_keep_one_valid_chain(db_url, tmp_path):
    AuditStore(db_url, tmp_path / "secrets")  # key exists before the children start
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process, args=(db_url, str(tmp_path / "secrets"), f"w{k}", 40))
             for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = AuditStore(db_url, tmp_path / "secrets")
    report = store.verify()
    assert report.ok, report.detail
    assert report.length == 2 * (30 + 10 * 3)
    actors = [r["actor"] for r in store.query(limit=1000)]
    assert actors.count("w0") == actors.count("w1") == 60
    assert os.path.exists(tmp_path / "audit" / "checkpoints.jsonl")


# --- the verifier's fast column check is exact (pure Python, no database) ---------------------
class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchmany(self, _n):
        rows, self.rows = self.rows, []
        return rows


def _rows_for(events):
    from vre.audit.store import GENESIS

    rows, prev = [], GENESIS
    for seq, e in enumerate(events, 1):
        received = "2026-11-22T10:00:00.000000Z"
        rec = canonical_record(e, seq, received)
        h = hashlib.sha256((prev + rec).encode()).hexdigest()
        rows.append([seq, prev, h, rec, e.action, e.actor, e.dataset, e.id, e.outcome, e.project, received,
                     e.session, e.time_text, e.source])
        prev = h
    return rows


def test_column_check_is_exact_for_tricky_values():
    """Every single-column change is caught, whether the record takes the verbatim fast path or
    the parsing exact path, including a value crafted to shift text across fields."""
    import random

    from vre.audit.verify import _Found, _walk

    rnd = random.Random(7)
    alphabet = ['a', 'b', '"', '\\', ',', ':', '{', '}', 'é', ' ', '/', 'n', 'u', 'l']

    def word():
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6))).replace("\\", "/") if rnd.random() < .5 \
            else "".join(rnd.choice("abcdef-") for _ in range(rnd.randint(1, 6)))

    events = [Event("dicom.series_view", actor="bob", actor_role="researcher", dataset="ds", project="p",
                    details={"a": "b", "details": 1})]  # the decoy: ',"details":' inside details
    for _ in range(200):
        events.append(Event(rnd.choice(["auth.login", "job.start", "contents.save"]), actor=word(),
                            actor_role=rnd.choice(["researcher", "service"]),
                            outcome=rnd.choice(["ok", "denied", "error"]), target=word(),
                            project=rnd.choice([None, word()]), dataset=rnd.choice([None, word()]),
                            session=rnd.choice([None, word()]), client=rnd.choice([None, "10.0.0.1", word()]),
                            details=rnd.choice([{}, {"x": word()}, {"details": {"dataset": word()}}]),
                            source=rnd.choice(["hub", "session", "host", "access-layer"])))
    rows = _rows_for(events)
    assert _walk(_Rows([list(r) for r in rows]), {}, 0, rows[0][1]) == len(rows)

    decoy = [list(r) for r in rows]
    decoy[0][6] = 'ds","details":{"a":"b'  # verbatim, this would still match the record text
    with pytest.raises(_Found) as found:
        _walk(_Rows(decoy), {}, 0, rows[0][1])
    assert (found.value.problem, found.value.seq) == ("modified", 1)

    for _ in range(800):
        tampered = [list(r) for r in rows]
        n = rnd.randrange(len(rows))
        col = rnd.choice([4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
        old = tampered[n][col]
        new = rnd.choice([None, word(), f'"{old}"', f"{old}x", json.dumps(old)[1:-1] if old else "x"])
        if new == old:
            continue
        tampered[n][col] = new
        with pytest.raises(_Found) as found:
            _walk(_Rows(tampered), {}, 0, rows[0][1])
        assert (found.value.problem, found.value.seq) == ("modified", n + 1), (col, old, new)


# --- provenance (schema v2 `source`) over a chain begun before it ------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def mixed_chain(request, tmp_path):
    """Records 1-5 sealed as schema v1 by a database at revision 0004 (no source column) and a
    checkpoint signed then, the upgrade, then records 6-10 appended by today's store (v2), two of
    them session-reported."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0004")
    prev, received = "0" * 64, "2026-11-22T10:00:00.000000Z"
    with vdb.engine_for(url).begin() as conn:
        for seq in range(1, 6):
            e = ev(seq)
            data = {k: v for k, v in e.to_dict().items() if k != "source"} | {"v": 1, "seq": seq,
                                                                               "received_at": received}
            record = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            h = hashlib.sha256((prev + record).encode()).hexdigest()
            conn.execute(text(
                "INSERT INTO audit_events (seq, event_id, time, received_at, actor, action, outcome, project, "
                "dataset, session, record, prev_hash, hash) VALUES (:seq, :id, :time, :received, :actor, "
                ":action, :outcome, :project, :dataset, :session, :record, :prev, :hash)"),
                dict(seq=seq, id=e.id, time=e.time_text, received=received, actor=e.actor, action=e.action,
                     outcome=e.outcome, project=e.project, dataset=e.dataset, session=e.session, record=record,
                     prev=prev, hash=h))
            prev = h
        # the checkpoint the old store signed at seq 5 (its payload spelled literally, as it was)
        key = keys.load_or_create(tmp_path / "secrets")
        kid = keys.key_id(key.public_key())
        payload = f'{{"hash":"{prev}","key":"{kid}","seq":5,"time":"{received}","v":1}}'
        conn.execute(insert(audit_checkpoints).values(seq=5, hash=prev, time=received, key_id=kid,
                                                      signature=keys.sign(key, payload)))
    vdb.upgrade(url)
    store = AuditStore(url, tmp_path / "secrets", checkpoint_every=10)
    for i in range(6, 11):
        store.append(Event("dicom.instance_view", actor="user1", actor_role="researcher", project="p1",
                           dataset="lung1", session="s1", target=f"instance/{i}",
                           source="session" if i % 2 else "hub"))
    return store


def test_mixed_v1_v2_chain_verifies(mixed_chain):
    report = mixed_chain.verify()
    assert report.ok and report.length == 10 and report.checkpoints >= 2, report.detail
    rows = mixed_chain.query()
    assert [r["v"] for r in rows] == [1] * 5 + [2] * 5
    assert [r["source"] for r in rows] == [None] * 5 + ["hub", "session", "hub", "session", "hub"]
    assert row(mixed_chain, 3)["source"] is None and '"source"' not in row(mixed_chain, 3)["record"]
    assert mixed_chain.count(source="session") == 2 and mixed_chain.count(source="hub") == 3


def test_session_source_relabelled_as_hub_is_found(mixed_chain):
    sql(mixed_chain, "UPDATE audit_events SET source = 'hub' WHERE seq = 7")
    assert_found(mixed_chain, "modified", 7, "source: sealed 'session', now 'hub'")


def test_source_taken_off_a_v2_record_or_put_on_a_v1_record_is_found(mixed_chain):
    sql(mixed_chain, "UPDATE audit_events SET source = NULL WHERE seq = 9")
    assert_found(mixed_chain, "modified", 9, "source: sealed 'session', now None")
    sql(mixed_chain, "UPDATE audit_events SET source = 'hub' WHERE seq = 2")
    assert_found(mixed_chain, "modified", 2, "source: sealed None, now 'hub'")


def test_source_rewritten_in_the_sealed_text_is_found(mixed_chain):
    r = row(mixed_chain, 7)
    forged = r["record"].replace('"source":"session"', '"source":"hub"')
    sql(mixed_chain, update(audit_events).where(audit_events.c.seq == 7).values(record=forged, source="hub"))
    assert_found(mixed_chain, "modified", 7, "hash does not match")
    sql(mixed_chain, update(audit_events).where(audit_events.c.seq == 7)
        .values(hash=hashlib.sha256((r["prev_hash"] + forged).encode()).hexdigest()))
    assert_found(mixed_chain, "modified", 7, "rewritten and re-hashed")
