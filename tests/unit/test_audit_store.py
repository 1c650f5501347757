"""The audit store: event schema, append/query/filters, idempotency, batches, export, timeline,
concurrency, the migration and the `vre audit` commands. Runs on SQLite and real PostgreSQL."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import os
import stat
import threading

import pytest
from sqlalchemy import inspect

from vre import db as vdb
from vre.audit import ACTIONS, AuditError, AuditStore, Event, open_store
from vre.audit.schema import canonical_json, canonical_record, record_head, record_tail, storable
from vre.audit import store as store_module
from vre.audit.store import audit_checkpoints, audit_events

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)


def ev(action="dicom.series_view", actor="alice", **kw) -> Event:
    kw.setdefault("actor_role", "researcher")
    return Event(action=action, actor=actor, **kw)


@pytest.fixture
def store(audit_url, tmp_path) -> AuditStore:
    return AuditStore(audit_url, tmp_path / "secrets", checkpoint_every=50)


# --- the schema ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(action="nope"), "unknown action 'nope'"),
    (dict(actor_role="boss"), "actor_role 'boss' must be one of"),
    (dict(outcome="maybe"), "outcome 'maybe' must be one of ok, denied, error"),
    (dict(actor=""), "actor must not be empty"),
    (dict(time=dt.datetime(2026, 1, 1)), "timezone-aware"),
    (dict(details={"x": object()}), "not JSON-serialisable"),
    (dict(details={"x": float("nan")}), "not JSON-serialisable"),
    (dict(details=[1]), "details must be a dict"),
    (dict(id="has space"), "id 'has space' must be"),
    (dict(project=""), "project must not be empty (use None)"),
    (dict(dataset="a\nb"), "control characters"),
    (dict(target="\ud800"), "target contains invalid Unicode"),
    (dict(project="lung\udc80"), "project contains invalid Unicode"),
    (dict(client="\ud800"), "client contains invalid Unicode"),
    (dict(source="kernel"), "source 'kernel' must be one of hub, access-layer, host, session"),
    (dict(source=None), "source None must be one of"),
])
def test_bad_events_say_what_to_fix(kw, message):
    args = dict(action="auth.login", actor="alice", actor_role="researcher") | kw
    with pytest.raises(AuditError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Event(**args)


def test_storable_says_whether_text_could_be_a_field():
    assert storable("project", "lung-ct")
    for bad in (None, "", "p" * 256, "a\nb", "lung\ud800", 5):
        assert not storable("project", bad), bad


def test_catalogue_has_the_documented_actions():
    for name in ("auth.login", "auth.lockout", "token.revoke", "session.cull", "admin.server_access", "api.request",
                 "project.expiry_set", "dicom.instance_view", "download.refused", "cell.execute", "job.fail",
                 "airlock.review", "audit.export", "audit.verify"):
        assert name in ACTIONS and ACTIONS[name]


def test_to_dict_from_dict_round_trip():
    e = Event("session.start", actor="bob", actor_role="researcher", project="p1", dataset="lung", session="s-1",
              client="10.0.0.1", target="bob/p1", details={"cpu": 2, "mounts": ["/data/lung"]},
              time=dt.datetime(2026, 11, 22, 11, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    d = e.to_dict()
    assert d["v"] == 2 and d["time"] == "2026-11-22T09:00:00.000000Z" and d["source"] == "hub"
    assert Event.from_dict(json.loads(json.dumps(d))) == e
    reported = Event.from_dict({**d, "source": "session"})
    assert reported.source == "session" and reported.to_dict()["source"] == "session"
    assert Event.from_dict({**d, "seq": 4, "received_at": d["time"]}) == e  # a stored record reads back
    with pytest.raises(AuditError, match="unknown event field"):
        Event.from_dict({**d, "colour": "red"})
    with pytest.raises(AuditError, match="schema version"):
        Event.from_dict({**d, "v": 99})
    with pytest.raises(AuditError, match="no timezone"):
        Event.from_dict({**d, "time": "2026-11-22T09:00:00"})
    # a v1 record (sealed before provenance) has no source; read back, it is an Event to write now
    v1 = {k: v for k, v in d.items() if k != "source"} | {"v": 1}
    assert Event.from_dict(v1) == e
    with pytest.raises(AuditError, match="v=1 has no source"):
        Event.from_dict({**v1, "source": "host"})


def test_canonical_record_is_canonical_json():
    """The verifier's fast text rebuild and json.dumps must agree byte for byte."""
    for e in (ev(), ev(target='quote " back\\slash \t tab', details={"b": [1, 2.5, None, True], "a": {"ü": "€"}},
                       project="p", dataset="d", session="s", client="::1"),
              ev(actor="service:culler", actor_role="service", details={"n": "\u2028\x01"}),
              ev(source="session", session="s"), ev(source="access-layer"), ev(source="host", dataset="d")):
        rec = canonical_record(e, 17, "2026-11-22T10:00:00.000000Z")
        expected = canonical_json({**e.to_dict(), "seq": 17, "received_at": "2026-11-22T10:00:00.000000Z"})
        assert rec == expected
        assert json.loads(rec)["details"] == e.details and json.loads(rec)["source"] == e.source
        # the v1 layout (source None: no key), which the verifier still reads
        head = record_head(e.action, e.actor, e.actor_role, e.client, e.dataset)
        v1 = head + e.details_json + record_tail(e.id, e.outcome, e.project, "2026-11-22T10:00:00.000000Z", 17,
                                                 e.session, None, e.target, e.time_text, 1)
        expected = {k: v for k, v in json.loads(expected).items() if k != "source"} | {"v": 1}
        assert v1 == canonical_json(expected)


# --- append and query ------------------------------------------------------------------------
def _sample(store: AuditStore) -> None:
    events = [
        ev("auth.login", "alice", time=T0, client="10.0.0.5"),
        ev("auth.login_failed", "mallory", actor_role="anonymous", outcome="denied", time=T0 + dt.timedelta(minutes=1),
           details={"reason": "bad password"}),
        ev("session.start", "alice", project="lung-ai", session="s1", time=T0 + dt.timedelta(hours=1)),
        ev("dicom.series_view", "alice", project="lung-ai", dataset="lung1", session="s1",
           target="1.2.840.113619.2.55", time=T0 + dt.timedelta(hours=2), source="session"),
        ev("dicom.series_view", "bob", project="brain", dataset="glioma", session="s2",
           time=T0 + dt.timedelta(days=1), source="session"),
        ev("session.stop", "alice", project="lung-ai", session="s1", time=T0 + dt.timedelta(days=1, hours=1)),
        ev("project.grant", "root", actor_role="admin", project="lung-ai", dataset="lung1", outcome="error",
           time=T0 + dt.timedelta(days=2), details={"note": "Müller's grant"}),
    ]
    for e in events[:3]:
        assert store.append(e) is True
    assert store.append_many(events[3:]) == 4


def test_append_and_query_with_filters(store):
    _sample(store)
    rows = store.query()
    assert [r["seq"] for r in rows] == list(range(1, 8))
    first = rows[0]
    assert set(first) == {"v", "id", "time", "actor", "actor_role", "action", "outcome", "target", "project",
                          "dataset", "session", "client", "source", "details", "seq", "received_at"}
    assert first["client"] == "10.0.0.5" and first["time"] == "2026-11-20T09:00:00.000000Z"
    assert first["received_at"].endswith("Z")

    def actions(**f):
        return [r["action"] for r in store.query(**f)]

    assert actions(user="bob") == ["dicom.series_view"]
    assert actions(project="lung-ai") == ["session.start", "dicom.series_view", "session.stop", "project.grant"]
    assert actions(dataset="lung1") == ["dicom.series_view", "project.grant"]
    assert actions(action="session.") == ["session.start", "session.stop"]
    assert actions(action="auth.login") == ["auth.login"]
    assert actions(outcome="denied") == ["auth.login_failed"]
    assert actions(session="s2") == ["dicom.series_view"]
    assert actions(since=T0 + dt.timedelta(days=1)) == ["dicom.series_view", "session.stop", "project.grant"]
    assert actions(until=T0 + dt.timedelta(hours=1)) == ["auth.login", "auth.login_failed"]
    assert actions(since="2026-11-21", until="2026-11-22") == ["dicom.series_view", "session.stop"]
    assert actions(text="BAD PASSWORD") == ["auth.login_failed"]
    assert actions(text="müller's") == ["project.grant"]
    assert actions(text="113619") == ["dicom.series_view"]
    assert actions(user="alice", project="lung-ai", action="dicom.") == ["dicom.series_view"]
    assert [r["actor"] for r in store.query(source="session")] == ["alice", "bob"]
    assert len(store.query(source="hub")) == 5 and store.query(source="host") == []
    assert [r["seq"] for r in store.query(limit=2, offset=1)] == [2, 3]
    assert [r["seq"] for r in store.query(newest_first=True, limit=2)] == [7, 6]
    assert store.count() == 7 and store.count(project="lung-ai") == 4 and store.count(user="nobody") == 0
    for bad, message in ((dict(action="nope"), "unknown action"), (dict(action="zz."), "no action starts with"),
                         (dict(outcome="meh"), "outcome 'meh'"), (dict(source="me"), "source 'me'"),
                         (dict(since="yesterday"), "not an ISO"),
                         (dict(limit=0), "limit must be")):
        with pytest.raises(AuditError, match=message):
            store.query(**bad)


def test_replays_are_idempotent(store):
    e = ev("kernel.start", id="evt-1")
    assert store.append(e) is True
    assert store.append(e) is False
    assert store.append(ev("kernel.stop", id="evt-1")) is False  # the id decides, not the content
    batch = [ev(id="evt-1"), ev(id="evt-2"), ev(id="evt-2"), ev(id="evt-3")]
    assert store.append_many(batch) == 2
    assert store.append_many(batch) == 0
    assert store.count() == 3
    assert [r["id"] for r in store.query()] == ["evt-1", "evt-2", "evt-3"]
    assert store.verify().ok


def test_batched_appends_are_one_linear_chain_with_interval_checkpoints(store):
    assert store.append_many(ev(details={"i": i}) for i in range(230)) == 230
    assert store.append_many([]) == 0
    rows = store.query(limit=1000)
    assert [r["seq"] for r in rows] == list(range(1, 231))
    assert [r["details"]["i"] for r in rows] == list(range(230))
    with vdb.engine_for(store.db_url).connect() as conn:
        cps = [r.seq for r in conn.execute(audit_checkpoints.select().order_by(audit_checkpoints.c.seq))]
    assert cps[:4] == [50, 100, 150, 200] and cps[-1] == 230  # every 50, plus the first batch's head
    report = store.verify()
    assert report.ok and report.length == 230 and report.last_checkpoint["seq"] == 230


def test_time_based_checkpoint_and_explicit_checkpoint(audit_url, tmp_path, monkeypatch):
    db_url = audit_url
    store = AuditStore(db_url, tmp_path / "secrets", checkpoint_every=10_000, checkpoint_seconds=3600)
    store.append(ev())                      # the first append seals the chain's start
    store.append(ev())
    assert store.verify().unsealed == 1
    cp = store.checkpoint()
    assert cp["seq"] == 2 and store.checkpoint() is None
    timed = AuditStore(db_url, tmp_path / "secrets", checkpoint_every=10_000, checkpoint_seconds=60)
    timed.append(ev())                      # within the interval of the last checkpoint: not sealed
    assert timed.verify().last_checkpoint["seq"] == 2
    # a minute later (the clock is the store's, not the machine's: no race with a real clock)
    later = store_module.utcnow() + dt.timedelta(seconds=61)
    monkeypatch.setattr(store_module, "utcnow", lambda: later)
    timed.append(ev())
    assert timed.verify().last_checkpoint["seq"] == 4


def test_threads_group_commit_into_one_chain(store):
    def work(n):
        for i in range(40):
            assert store.append(ev(details={"t": n, "i": i}))
    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = store.verify()
    assert report.ok and report.length == 240


def test_key_and_checkpoint_file_are_private(store, tmp_path):
    store.append(ev())
    key = tmp_path / "secrets" / "audit_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "secrets" / "audit_ed25519.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    cp_file = tmp_path / "audit" / "checkpoints.jsonl"
    assert stat.S_IMODE(cp_file.stat().st_mode) == 0o600
    assert json.loads(cp_file.read_text().splitlines()[0])["seq"] == 1
    again = AuditStore(store.db_url, tmp_path / "secrets")  # reuses the key
    assert again._key_id == store._key_id


# --- export and timeline ---------------------------------------------------------------------
def test_export_jsonl_and_csv(store):
    _sample(store)
    out = io.StringIO()
    assert store.export("jsonl", out, project="lung-ai") == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["action"] for r in lines] == ["session.start", "dicom.series_view", "session.stop", "project.grant"]
    assert lines[3]["details"] == {"note": "Müller's grant"} and lines[3]["outcome"] == "error"
    assert [r["source"] for r in lines] == ["hub", "session", "hub", "hub"]
    for r in lines:  # a SIEM can re-check each record's hash on its own
        h, prev = r.pop("hash"), r.pop("prev_hash")
        assert hashlib.sha256((prev + canonical_json(r)).encode()).hexdigest() == h

    out = io.StringIO()
    assert store.export("csv", out, outcome="denied") == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 1
    assert rows[0]["actor"] == "mallory" and rows[0]["action"] == "auth.login_failed"
    assert rows[0]["project"] == "" and json.loads(rows[0]["details"]) == {"reason": "bad password"}
    assert rows[0]["seq"] == "2" and rows[0]["time"] == "2026-11-20T09:01:00.000000Z" and len(rows[0]["hash"]) == 64
    assert rows[0]["source"] == "hub" and rows[0]["v"] == "2"

    out = io.StringIO()
    assert store.export("csv", out) == 7
    assert out.getvalue().splitlines()[0].startswith("seq,time,received_at,id,actor,actor_role,action,outcome")
    with pytest.raises(AuditError, match="'xml' must be"):
        store.export("xml", io.StringIO())


def test_timeline_counts_dataset_access_per_bucket(store):
    _sample(store)
    assert store.timeline() == [
        {"bucket": "2026-11-20", "dataset": "lung1", "count": 1},
        {"bucket": "2026-11-21", "dataset": "glioma", "count": 1},
        {"bucket": "2026-11-22", "dataset": "lung1", "count": 1},
    ]
    assert store.timeline(bucket="month", action="dicom.") == [
        {"bucket": "2026-11", "dataset": "glioma", "count": 1}, {"bucket": "2026-11", "dataset": "lung1", "count": 1}]
    assert store.timeline(bucket="hour", user="alice") == [{"bucket": "2026-11-20T11:00", "dataset": "lung1", "count": 1}]
    with pytest.raises(AuditError, match="bucket"):
        store.timeline(bucket="week")


# --- schema in sync --------------------------------------------------------------------------
def test_migration_matches_the_table_definitions(db_url):
    from vre import db as vdb

    insp = inspect(vdb.engine_for(db_url))
    for table in (audit_events, audit_checkpoints):
        cols = {c["name"]: c for c in insp.get_columns(table.name)}
        assert set(cols) == set(table.c.keys())
        for c in table.c:
            assert cols[c.name]["nullable"] == c.nullable, c.name
        assert insp.get_pk_constraint(table.name)["constrained_columns"] == ["seq"]
    assert {i["name"] for i in insp.get_indexes("audit_events")} >= {ix.name for ix in audit_events.indexes}
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("audit_events")}
    assert ("event_id",) in uniques


# --- the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def vre_audit(tmp_path, monkeypatch, capsys):
    from vre.audit.cli import add_parser

    monkeypatch.setenv("VRE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("VRE_CONFIG", raising=False)
    monkeypatch.delenv("VRE_DB_URL", raising=False)
    parser = argparse.ArgumentParser(prog="vre")
    parser.add_argument("--config")
    add_parser(parser.add_subparsers(dest="cmd", required=True))

    def run(*argv):
        args = parser.parse_args(list(argv))
        code = args.func(args)
        return code, capsys.readouterr().out
    return run


def test_cli_query_export_verify(vre_audit, tmp_path):
    from vre import db as vdb
    from vre.errors import VREError
    from vre.settings import load

    settings = load(environ={"VRE_STATE_DIR": str(tmp_path / "state")})
    vdb.upgrade(settings.vre_db_url)
    store = open_store(settings)
    _sample(store)

    code, out = vre_audit("audit", "query", "--project", "lung-ai", "--action", "session.")
    assert code == 0 and "session.start" in out and "session.stop" in out and "dicom" not in out
    code, out = vre_audit("audit", "query", "--since", "2026-11-21", "--until", "2026-11-21", "--json")
    assert [r["action"] for r in json.loads(out)] == ["dicom.series_view", "session.stop"]
    code, out = vre_audit("audit", "query", "--limit", "2")
    assert "(5 more" in out
    code, out = vre_audit("audit", "query", "--source", "session", "--json")
    assert [(r["actor"], r["source"]) for r in json.loads(out)] == [("alice", "session"), ("bob", "session")]
    with pytest.raises(VREError, match="--since 'soon' is not an ISO date"):
        vre_audit("audit", "query", "--since", "soon")

    target = tmp_path / "export.csv"
    code, out = vre_audit("audit", "export", "--format", "csv", "--output", str(target), "--user", "alice")
    assert code == 0 and "exported 4 event(s)" in out
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert len(list(csv.DictReader(target.open()))) == 4
    exported = store.query(action="audit.export")
    assert exported[0]["details"]["rows"] == 4 and exported[0]["actor_role"] == "admin"
    assert exported[0]["source"] == "hub"

    code, out = vre_audit("audit", "verify")
    assert code == 0 and out.startswith("intact: 8 records, last checkpoint at seq")
    code, out = vre_audit("audit", "checkpoint")
    assert code == 0 and "signed checkpoint at seq 9" in out

    with vdb.engine_for(settings.vre_db_url).begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'nobody' WHERE seq = 3")
    code, out = vre_audit("audit", "verify")
    assert code == 1 and out.startswith("modified: a column of record seq 3 (actor: sealed 'alice', now 'nobody')")


# --- provenance: who reported an event ---------------------------------------------------------
def test_writers_keep_the_source_and_the_ingest_forces_session(tmp_path):
    """emit passes ``source`` through, emit_many keeps each event's, and the session ingest stores
    everything as session-reported whatever the payload claims."""
    from vre import db as vdb
    from vre.audit.events import emit, emit_many
    from vre.audit.relay import Identity, store_events, to_events
    from vre.settings import load

    settings = load(environ={"VRE_STATE_DIR": str(tmp_path / "state")})
    vdb.upgrade(settings.vre_db_url)
    emit(settings, "auth.login", actor="alice", actor_role="researcher")
    emit(settings, "download.refused", actor="alice", actor_role="researcher", source="access-layer",
         outcome="denied")
    assert emit_many(settings, [ev(source="host", id="h1"), ev(id="s1", source="session")]) == 2
    claimed = [{"id": "x1", "action": "contents.save", "source": "hub"}, {"id": "x2", "action": "kernel.start"}]
    assert {e.source for e in to_events(settings, Identity("alice", "p", "alice-p-1"), claimed)} == {"session"}
    assert store_events(settings, Identity("alice", "p", "alice-p-1"), claimed) == 2
    rows = open_store(settings).query()
    assert [(r["action"], r["source"]) for r in rows] == [
        ("auth.login", "hub"), ("download.refused", "access-layer"), ("dicom.series_view", "host"),
        ("dicom.series_view", "session"), ("contents.save", "session"), ("kernel.start", "session")]
    with pytest.raises(AuditError, match="source 'kernel'"):
        emit(settings, "auth.login", actor="alice", actor_role="researcher", source="kernel")
