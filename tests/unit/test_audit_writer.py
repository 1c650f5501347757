"""The audit writer's fast paths: appends inside a caller's transaction (all or nothing with the
caller's own change), PostgreSQL's kept connection (a server that closed it is reconnected to,
without storing an event twice), and verification of records whose text needs escaping in
PostgreSQL's COPY stream. On SQLite and PostgreSQL."""

import pytest
from sqlalchemy import text

from vre import db as vdb
from vre.audit import AuditStore, Event


@pytest.fixture
def store(audit_url, tmp_path):
    return AuditStore(audit_url, tmp_path / "secrets", checkpoint_every=3)


def ev(i: int, **kw) -> Event:
    kw.setdefault("target", f"job/{i}")
    return Event("job.finish", actor="ann", actor_role="researcher", project="lung", **kw)


def count(url: str) -> int:
    with vdb.engine_for(url).connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_events")).scalar()


class Crash(RuntimeError):
    pass


def test_appends_within_a_transaction_commit_or_vanish_with_it(store, audit_url):
    e = [ev(i) for i in range(6)]
    store.append(e[0])
    lines = store.checkpoint_file.read_text().count("\n")
    engine = vdb.engine_for(audit_url)

    def crash():
        raise Crash("the caller's commit failed")
    for commit in (crash, None):
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            # the caller's own change first (on SQLite this begins the transaction)
            cur.execute("DELETE FROM audit_checkpoints WHERE seq < 0")
            if commit is crash:
                with pytest.raises(Crash):
                    # 4 records cross checkpoint_every=3: a checkpoint is due, and rolled back
                    store.append_within(raw.dbapi_connection, e[1:5], crash)
                raw.rollback()
                assert count(audit_url) == 1
                # no line in the checkpoint file for a checkpoint that was never committed
                assert store.checkpoint_file.read_text().count("\n") == lines
                assert store.verify().ok
            else:
                new = store.append_within(raw.dbapi_connection, [*e[1:5], e[0]], raw.commit)
                assert new == {x.id for x in e[1:5]}  # e[0] was stored before
        finally:
            raw.close()
    assert count(audit_url) == 5
    assert store.checkpoint_file.read_text().count("\n") == lines + 1
    report = store.verify()
    assert report.ok and report.length == 5, report.detail
    assert store.append(e[5]) and store.verify().ok  # the chain goes on from there


@pytest.mark.parametrize("text_", ["tab\there", "line\nbreak", "back\\slash", 'quote"d', "\\N", "é ünïcode"])
def test_records_that_need_escaping_verify_and_a_change_to_them_is_found(store, audit_url, text_):
    # columns take no control characters; the target and the details (only in the record) do
    store.append_many([ev(1, details={"note": text_}), ev(2, target=text_,
                                                          dataset=text_ if text_.isprintable() else None), ev(3)])
    assert store.verify().ok
    with vdb.engine_for(audit_url).begin() as conn:
        conn.execute(text("UPDATE audit_events SET record = replace(record, '\"job/1\"', '\"job/9\"') WHERE seq = 1"))
    report = store.verify()
    assert not report.ok and report.problem == "modified" and report.seq == 1


def test_a_closed_postgresql_connection_is_replaced_and_nothing_is_stored_twice(store, audit_url):
    if audit_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's kept connection")
    assert store.append(ev(1))
    pid = store._pg_conn.info.backend_pid
    with vdb.engine_for(audit_url).begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    second = ev(2)
    assert store.append(second)          # reconnected, written once
    assert not store.append(second)      # a replay is recognised
    assert store._pg_conn.info.backend_pid != pid
    report = store.verify()
    assert report.ok and report.length == 2, report.detail
