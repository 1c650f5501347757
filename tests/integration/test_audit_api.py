"""The auditors' REST API and page on a real hub (SQLite and PostgreSQL).

Events are seeded straight into the hub's audit store (as the hub and the ingest would write them),
each run under its own project/dataset/session names, so the assertions do not depend on what else
the hub recorded meanwhile.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
import requests
from hubclient import VRE_API, VRE_AUDIT_PAGE, HubClient

pytestmark = pytest.mark.integration

API = "/audit"  # below the VRE service's API, /services/vre/api
ROUTES = [("GET", f"{API}/events"), ("GET", f"{API}/export?format=jsonl"), ("GET", f"{API}/export?format=csv"),
          ("GET", f"{API}/timeline"), ("POST", f"{API}/verify")]

_SEEDED: dict[str, dict] = {}


def seed(hub) -> dict:
    """A small story, once per hub: alice's session S1 in project P1 reads dataset D1; bob in P2
    is refused a download from D2 and runs a cell whose details carry a searchable needle."""
    if hub.backend in _SEEDED:
        return _SEEDED[hub.backend]
    from vre.audit import Event, open_store
    from vre.settings import load

    tag = secrets.token_hex(3)
    p1, p2, d1, d2 = f"ap1-{tag}", f"ap2-{tag}", f"ad1-{tag}", f"ad2-{tag}"
    s1, s2 = f"s1-{tag}", f"s2-{tag}"
    needle = f"needle-{tag}"
    # two days ago at 09:00 UTC: the story's first day must not cross midnight, whenever the suite runs
    base = (datetime.now(timezone.utc) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    E = Event
    events = [
        E("session.start", "alice", "researcher", project=p1, session=s1, target=f"alice/{p1}",
          details={"datasets": [d1], "profile": "small"}, time=base),
        E("dicom.series_view", "alice", "researcher", project=p1, dataset=d1, session=s1,
          target=f"/data/{d1}/s1", time=base + timedelta(minutes=10), source="session"),
        E("dicom.instance_view", "alice", "researcher", project=p1, dataset=d1, session=s1,
          target=f"/data/{d1}/s1/i1.dcm", time=base + timedelta(minutes=20), source="session"),
        E("session.stop", "alice", "researcher", project=p1, session=s1, target=f"alice/{p1}",
          details={"reason": "stopped"}, time=base + timedelta(hours=2)),
        E("download.refused", "bob", "researcher", outcome="denied", project=p2, dataset=d2, session=s2,
          target=f"/data/{d2}/x.dcm", time=base + timedelta(days=1)),
        E("cell.execute", "bob", "researcher", project=p2, session=s2, target="notebook.ipynb",
          details={"code_sha256": needle}, time=base + timedelta(days=1, hours=1)),
    ]
    store = open_store(load(environ=hub.env))
    store.append_many(events)
    info = dict(tag=tag, p1=p1, p2=p2, d1=d1, d2=d2, s1=s1, s2=s2, needle=needle, base=base,
                ids={e.action: e.id for e in events})
    _SEEDED[hub.backend] = info
    return info


@pytest.fixture
def story(hub):
    return seed(hub)


@pytest.fixture
def auditor(hub):
    return hub.client("auditor")


def no_503(send):
    """Send again when the proxy answers 503: configurable-http-proxy now and then gets EPIPE from
    the hub's socket on quickly refused POSTs (seen on stock JupyterHub routes too)."""
    for _ in range(5):
        r = send()
        if r.status_code != 503:
            return r
    return r


def events(client, **params) -> dict:
    r = client.vre_api("GET", f"{API}/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- who may --------------------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["alice", "admin"])
def test_researchers_and_admins_are_refused(hub, user):
    """Reading the trail needs the auditor scope; the JupyterHub admin role does not carry it."""
    c = hub.client(user)
    if user == "admin":  # a real JupyterHub admin (all built-in scopes), still no audit scope
        assert c.api("GET", "/users").status_code == 200
    for method, path in ROUTES:
        r = no_503(lambda: c.vre_api(method, path))
        assert r.status_code == 403, f"{user} {method} {path}: {r.status_code} {r.text[:200]}"
        assert "custom:vre-audit:read" in r.json()["message"]
    page = c.http.get(f"{hub.url}{VRE_AUDIT_PAGE}", timeout=20)  # through the service's OAuth login
    assert page.status_code == 403, page.status_code
    assert "Audit trail" not in page.text and "custom:vre-audit:read" in page.text
    assert page.headers["Content-Type"].startswith("text/html")


def test_anonymous_is_refused(hub):
    for method, path in ROUTES:
        r = no_503(lambda: requests.request(method, f"{hub.url}{VRE_API}{path}", timeout=20))
        assert r.status_code == 403, f"{method} {path}: {r.status_code}"
        assert r.headers["Content-Type"].startswith("application/json") and r.json()["status"] == 403
    r = requests.get(f"{hub.url}{VRE_AUDIT_PAGE}", allow_redirects=False, timeout=20)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"], r.headers
    r = requests.get(f"{hub.url}{VRE_AUDIT_PAGE}", timeout=20)  # the hub's OAuth sends it on to the login
    assert r.url.startswith(f"{hub.url}/hub/login"), r.url


def test_auditor_gets_the_page_and_the_api(hub, auditor, story):
    page = auditor.http.get(f"{hub.url}{VRE_AUDIT_PAGE}", timeout=20)  # the hub's OAuth, then the page
    assert page.status_code == 200
    assert "Audit trail" in page.text and 'id="verify-btn"' in page.text
    assert '<option value="session.">' in page.text and '<option value="dicom.series_view"' in page.text
    assert 'id="f-source"' in page.text and '<option value="session">session (session-reported)' in page.text
    for method, path in ROUTES:
        r = auditor.vre_api(method, path)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text[:300]}"


def test_session_ingest_still_answers_on_the_shared_path(hub):
    """POST on api/audit/events is the sessions' ingest (relay credential), not the query API."""
    r = no_503(lambda: requests.post(f"{hub.url}{VRE_API}/audit/events", json={"events": []}, timeout=20))
    assert r.status_code == 403 and "relay credential" in r.json()["message"], r.text


# --- filters ------------------------------------------------------------------------------------
def test_filters_and_totals(auditor, story):
    s = story
    data = events(auditor, project=s["p1"])
    assert data["total"] == 4
    assert [e["action"] for e in data["events"]] == [  # newest first
        "session.stop", "dicom.instance_view", "dicom.series_view", "session.start"]
    assert all(set(e) >= {"v", "id", "time", "actor", "actor_role", "action", "target", "project", "dataset",
                          "session", "client", "source", "outcome", "details", "seq", "received_at"}
               for e in data["events"])
    assert [e["source"] for e in data["events"]] == ["hub", "session", "session", "hub"]
    assert events(auditor, project=s["p1"], source="session")["total"] == 2
    assert events(auditor, project=s["p1"], source="hub")["total"] == 2
    assert events(auditor, project=s["p1"], source="host")["total"] == 0

    assert events(auditor, dataset=s["d1"])["total"] == 2
    assert events(auditor, project=s["p1"], action="dicom.")["total"] == 2
    assert events(auditor, project=s["p1"], action="dicom.series_view")["total"] == 1
    assert events(auditor, session=s["s1"])["total"] == 4
    assert events(auditor, session=s["s2"], user="bob")["total"] == 2
    assert events(auditor, session=s["s2"], user="alice")["total"] == 0
    denied = events(auditor, project=s["p2"], outcome="denied")
    assert denied["total"] == 1 and denied["events"][0]["action"] == "download.refused"
    assert denied["events"][0]["dataset"] == s["d2"]
    assert events(auditor, text=s["needle"])["total"] == 1

    # time range: the day after alice's session holds only bob's two events
    day2 = s["base"] + timedelta(days=1)
    assert events(auditor, session=s["s2"], since=iso(day2 - timedelta(minutes=1)))["total"] == 2
    both = dict(since=iso(s["base"] - timedelta(minutes=1)), until=iso(s["base"] + timedelta(minutes=15)))
    ranged = events(auditor, project=s["p1"], **both)
    assert ranged["total"] == 2 and {e["action"] for e in ranged["events"]} == {"session.start", "dicom.series_view"}
    # "from"/"to" are accepted as aliases; a bare date means the whole day
    assert events(auditor, project=s["p1"], **{"from": both["since"], "to": both["until"]})["total"] == 2
    assert events(auditor, session=s["s1"], until=s["base"].date().isoformat())["total"] >= 1

    # paging: newest first, stable totals
    page1 = events(auditor, project=s["p1"], limit=3)
    page2 = events(auditor, project=s["p1"], limit=3, offset=3)
    assert page1["total"] == page2["total"] == 4
    assert len(page1["events"]) == 3 and len(page2["events"]) == 1
    assert page2["events"][0]["action"] == "session.start"
    oldest = events(auditor, project=s["p1"], limit=1, order="oldest")
    assert oldest["events"][0]["action"] == "session.start"


def test_timeline_counts_per_dataset(auditor, story):
    s = story
    r = auditor.vre_api("GET", f"{API}/timeline", params={"project": s["p1"], "bucket": "day"})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert isinstance(rows, list)
    d1 = [row for row in rows if row["dataset"] == s["d1"]]
    assert sum(row["count"] for row in d1) == 2
    assert {row["bucket"] for row in d1} == {s["base"].date().isoformat()}
    hourly = auditor.vre_api("GET", f"{API}/timeline", params={"dataset": s["d1"], "bucket": "hour"}).json()
    assert sum(row["count"] for row in hourly) == 2 and all(row["dataset"] == s["d1"] for row in hourly)
    bob = auditor.vre_api("GET", f"{API}/timeline", params={"session": s["s2"]}).json()
    assert sum(row["count"] for row in bob if row["dataset"] == s["d2"]) == 1
    assert not any(row["dataset"] == s["d1"] for row in bob)


# --- export ---------------------------------------------------------------------------------------
def test_export_jsonl_and_csv_match_the_query(auditor, story):
    s = story
    expected = events(auditor, project=s["p1"], order="oldest")["events"]
    ids = [e["id"] for e in expected]

    r = auditor.vre_api("GET", f"{API}/export", params={"format": "jsonl", "project": s["p1"]})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    disposition = r.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and ".jsonl" in disposition and s["p1"] in disposition
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert sorted(e["id"] for e in lines) == sorted(ids)
    by_id = {e["id"]: e for e in lines}
    for e in expected:
        got = by_id[e["id"]]
        for key in ("action", "actor", "actor_role", "project", "dataset", "session", "outcome", "target", "details",
                    "source"):
            assert got[key] == e[key], (key, got, e)

    r = auditor.vre_api("GET", f"{API}/export", params={"format": "csv", "project": s["p1"]})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/csv")
    assert ".csv" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["id"] for row in rows) == sorted(ids)
    row = next(row for row in rows if row["action"] == "dicom.series_view")
    assert row["dataset"] == s["d1"] and row["session"] == s["s1"] and row["actor"] == "alice"
    assert row["source"] == "session"
    start = next(row for row in rows if row["action"] == "session.start")
    assert json.loads(start["details"]) == {"datasets": [s["d1"]], "profile": "small"}

    empty = auditor.vre_api("GET", f"{API}/export", params={"format": "jsonl", "project": f"none-{s['tag']}"})
    assert empty.status_code == 200 and empty.text.strip() == ""


def test_large_export_streams_in_chunks(hub, auditor, story):
    """Thousands of events come out complete, in a chunked (streamed) response."""
    from vre.audit import Event, open_store
    from vre.settings import load

    project = f"bulk-{story['tag']}"
    n = 4000
    start = story["base"] - timedelta(days=1)
    open_store(load(environ=hub.env)).append_many(
        Event("contents.get", "alice", "researcher", project=project, session=f"bulk-{story['tag']}",
              target=f"/home/alice/file-{i:05d}.ipynb", details={"i": i, "pad": "x" * 200},
              time=start + timedelta(seconds=i)) for i in range(n))
    with auditor.vre_api("GET", f"{API}/export", params={"format": "jsonl", "project": project}, stream=True,
                     timeout=120) as r:
        assert r.status_code == 200
        assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
        assert r.headers["X-VRE-Audit-Events"] == str(n)
        seen = [json.loads(line)["details"]["i"] for line in r.iter_lines() if line]
    assert seen == list(range(n))  # complete and in order (oldest first)


def test_export_and_verify_are_recorded(auditor, story):
    s = story
    r = auditor.vre_api("GET", f"{API}/export", params={"format": "csv", "dataset": s["d2"]})
    assert r.status_code == 200
    r = auditor.vre_api("POST", f"{API}/verify")
    assert r.status_code == 200

    exports = events(auditor, action="audit.export", user="auditor", limit=20)["events"]
    mine = [e for e in exports if e["details"].get("filters", {}).get("dataset") == s["d2"]]
    assert mine, exports
    e = mine[0]
    assert e["actor"] == "auditor" and e["actor_role"] == "auditor" and e["outcome"] == "ok"
    assert e["details"]["format"] == "csv" and e["details"]["events"] == 1

    verifies = events(auditor, action="audit.verify", user="auditor", limit=1)["events"]
    assert verifies and verifies[0]["actor_role"] == "auditor" and verifies[0]["details"]["ok"] is True


# --- verify ---------------------------------------------------------------------------------------
def test_verify_reports_an_intact_trail(auditor, story):
    r = auditor.vre_api("POST", f"{API}/verify")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["ok"] is True, report
    assert report["length"] >= 6 and report["problem"] is None
    assert {"last_checkpoint", "seq", "detail", "unsealed"} <= set(report)
    assert report["recorded"] is True


def test_verify_needs_xsrf_from_a_browser_session(hub):
    """Cookie-authenticated POSTs without the XSRF token are refused (the page sends it)."""
    c = HubClient(hub.url, "auditor")
    c.login(hub.passwords["auditor"])
    assert c.http.get(f"{hub.url}{VRE_AUDIT_PAGE}", timeout=20).status_code == 200  # the service's login
    r = no_503(lambda: c.http.post(f"{hub.url}{VRE_API}/audit/verify", timeout=20,
                                   headers={"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}))
    assert r.status_code == 403
    r = c.http.post(f"{hub.url}{VRE_API}/audit/verify", timeout=60, headers=c.vre_xsrf())
    assert r.status_code == 200 and r.json()["ok"] is True


# --- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, params, words", [
    ("events", {"since": "yesterday"}, ["since", "ISO 8601"]),
    ("events", {"until": "2026-13-45"}, ["until"]),
    ("events", {"since": "2026-11-22T10:00:00Z", "until": "2026-11-21"}, ["since", "later"]),
    ("events", {"outcome": "maybe"}, ["outcome", "ok"]),
    ("events", {"source": "kernel"}, ["source", "session"]),
    ("events", {"limit": "ten"}, ["limit", "number"]),
    ("events", {"limit": "0"}, ["limit"]),
    ("events", {"limit": "100000"}, ["limit"]),
    ("events", {"offset": "-1"}, ["offset"]),
    ("events", {"order": "random"}, ["order"]),
    ("events", {"user": "x" * 300}, ["user"]),
    ("events", {"action": "nope"}, ["unknown action"]),
    ("timeline", {"action": "zzz."}, ["zzz."]),
    ("timeline", {"bucket": "week"}, ["bucket", "day"]),
    ("timeline", {"since": "2026-02-30"}, ["since"]),
    ("export", {"format": "xml"}, ["format", "jsonl"]),
    ("export", {"format": "csv", "outcome": "nope"}, ["outcome"]),
])
def test_bad_filters_are_400_with_a_message(auditor, path, params, words):
    r = auditor.vre_api("GET", f"{API}/{path}", params=params)
    assert r.status_code == 400, f"{path} {params}: {r.status_code} {r.text[:300]}"
    message = r.json()["message"]
    for word in words:
        assert word.lower() in message.lower(), message
