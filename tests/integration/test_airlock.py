"""The airlock end to end on a real hub (SQLite and PostgreSQL): a researcher asks from a real
session, through the VRE service's unix socket with the session's token, to export a CSV, a PNG
and a notebook; two output checkers review (blinded, then consolidated) through the API as their
browser would, with a hub restart in the middle; a checker releases; the author downloads the zip
and the checksums and the signed record hold; the audit trail shows every step in order.

Also: the author cannot review, preview or download before release (403); a user who is neither a
member nor a checker cannot see the request (404); a file changed after submission is not what is
released; a copy of a dataset file and a symlink to /data are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile

import pytest

pytestmark = pytest.mark.integration

PROJECT = "prostate-ai"
CHECKERS = ("checker1", "checker2")
TABLE = "case,psa\n1,4.2\n2,7.9\n"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000000000200010d0a2db40000000049454e44ae426082")
NOTEBOOK = {"cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "print('AUC 0.91')",
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": "AUC 0.91\n"}]}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}

#: Code run in bob's kernel: the airlock API over the VRE service's socket, with the session's token.
API = """
import json, os
from vre_session.jobs import _hub
from vre_session.relay import _UnixHTTPConnection
def api(method, path, body=None):
    sock, prefix = _hub()
    c = _UnixHTTPConnection(sock, timeout=120)
    c.request(method, prefix + '/airlock' + path, body=None if body is None else json.dumps(body),
              headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN'],
                       'Content-Type': 'application/json'})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, json.loads(data or b'{}')
def show(*a, **kw):
    status, body = api(*a, **kw)
    print(json.dumps({'status': status, 'body': body}))
"""


@pytest.fixture(scope="module")
def people(hub):
    passwords = {}
    for name in CHECKERS:
        if name not in hub.passwords:
            pw = secrets.token_urlsafe(16)
            hub.vre("user", "add", name, "--password-stdin", input=pw + "\n")
            hub.vre("user", "set-checker", name, "on")
            hub.passwords[name] = pw
        passwords[name] = hub.passwords[name]
    hub.vre("project", "set-airlock-rules", PROJECT, "--reviews", "2", "--max-csv-rows", "1000")
    return {name: hub.client(name) for name in ("bob", "alice", *CHECKERS)}


def call(kernel, method, path, body=None) -> tuple[int, dict]:
    out = kernel.check(f"show({method!r}, {path!r}, {json.dumps(body) if body is not None else None})")
    data = json.loads(out.strip().splitlines()[-1])
    return data["status"], data["body"]


def audit(hub, rid: int) -> list[dict]:
    events = json.loads(hub.vre("audit", "query", "--action", "airlock.", "--json", "--limit", "1000").stdout)
    return [e for e in events if e["target"] == f"airlock/{rid}"]


def in_order(actions: list[str], expected: list[str]) -> bool:
    it = iter(actions)
    return all(any(a == e for a in it) for e in expected)


def test_export_reviewed_blinded_then_consolidated_released_and_downloaded(hub, people):
    bob, alice, c1, c2 = (people[n] for n in ("bob", "alice", *CHECKERS))
    bob.start(PROJECT)
    k = bob.kernel(PROJECT)
    try:
        k.check(API)
        k.check(f"""
import glob, os, shutil
os.makedirs('/home/jovyan/project/results', exist_ok=True)
open('/home/jovyan/project/results/table.csv', 'w').write({TABLE!r})
open('/home/jovyan/project/results/roc.png', 'wb').write(bytes.fromhex({PNG.hex()!r}))
open('/home/jovyan/analysis.ipynb', 'w').write({json.dumps(NOTEBOOK)!r})
src = sorted(glob.glob('/data/prostate-mri/**/*.csv', recursive=True) +
             glob.glob('/data/prostate-mri/**/*.dcm', recursive=True))[0]
shutil.copy(src, '/home/jovyan/project/results/copy.csv')
if os.path.lexists('/home/jovyan/link.csv'): os.remove('/home/jovyan/link.csv')
os.symlink(src, '/home/jovyan/link.csv')
print(src)
""")
        # a symlink to /data is refused when named
        status, body = call(k, "POST", "/requests", {"project": PROJECT, "title": "link", "files": ["link.csv"]})
        assert status == 400 and "inside a dataset" in body["message"], body
        assert body["files"][0]["path"] == "/home/jovyan/link.csv"
        # a copy of a dataset file is refused at submission, with the reason per file
        status, body = call(k, "POST", "/requests", {"project": PROJECT, "title": "copy",
                                                     "files": ["project/results/copy.csv"]})
        assert status == 201, body
        status, body = call(k, "POST", f"/requests/{body['id']}/submit")
        assert status == 400 and "dataset file prostate-mri/" in json.dumps(body["files"]), body
        # the real request: a CSV, a PNG and a notebook, checked, then submitted
        status, req = call(k, "POST", "/requests", {
            "project": PROJECT, "title": "Lesion detection results", "justification": "for the paper",
            "files": [{"path": "project/results/table.csv", "description": "per-case PSA"},
                      {"path": "/home/jovyan/project/results/roc.png", "description": "ROC"},
                      {"path": "analysis.ipynb"}]})
        assert status == 201 and req["state"] == "draft", req
        rid = req["id"]
        status, report = call(k, "POST", f"/requests/{rid}/check")
        assert status == 200 and report["ok"], report
        status, req = call(k, "POST", f"/requests/{rid}/submit")
        assert status == 200 and req["state"] == "submitted", req
        # the original changes after submission: what is frozen does not
        k.check("open('/home/jovyan/project/results/table.csv', 'w').write('case,psa\\n1,999\\n')")
        status, mine = call(k, "GET", "/requests?role=author")
        assert status == 200 and rid in [r["id"] for r in mine["requests"]]
    finally:
        k.close()
    bob.stop(PROJECT)
    files = {f["name"]: f for f in req["files"]}
    assert files["table.csv"]["sha256"] == hashlib.sha256(TABLE.encode()).hexdigest()

    # the author cannot review, preview or download; a stranger sees nothing
    fid = files["table.csv"]["id"]
    r = bob.vre_api("POST", f"/airlock/requests/{rid}/reviews", json={"file": fid, "decision": "approve"})
    assert r.status_code == 403 and "author" in r.json()["message"]
    assert bob.vre_api("GET", f"/airlock/requests/{rid}/files/{fid}/preview").status_code == 403
    assert bob.vre_api("GET", f"/airlock/requests/{rid}/download").status_code == 403
    assert alice.vre_api("GET", f"/airlock/requests/{rid}").status_code == 404
    assert alice.vre_api("GET", f"/airlock/requests/{rid}/download").status_code == 404
    assert rid not in [x["id"] for x in alice.vre_api("GET", "/airlock/requests").json()["requests"]]

    # checker 1 previews every file (recorded), then decides: approve all
    for name, ctype in (("table.csv", "text/csv"), ("roc.png", "image/png"), ("analysis.ipynb", "text/html")):
        r = c1.vre_api("GET", f"/airlock/requests/{rid}/files/{files[name]['id']}/preview")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), (name, r.status_code, r.text[:300])
        assert "sandbox" in r.headers["Content-Security-Policy"]
    assert c1.vre_api("GET", f"/airlock/requests/{rid}/files/{fid}/preview").text == TABLE
    assert "AUC 0.91" in c1.vre_api("GET", f"/airlock/requests/{rid}/files/{files['analysis.ipynb']['id']}"
                                           "/preview").text
    assert rid in [x["id"] for x in c1.vre_api("GET", "/airlock/requests?role=review").json()["requests"]]
    r = c1.vre_api("POST", f"/airlock/requests/{rid}/reviews", json={"decisions": [
        {"file": f["id"], "decision": "approve", "comment": "ok"} for f in files.values()]})
    assert r.status_code == 201, r.text
    # blinded: checker 2 and the author see none of it, checker 1 only their own
    assert c2.vre_api("GET", f"/airlock/requests/{rid}").json()["reviews"] == []
    assert bob.vre_api("GET", f"/airlock/requests/{rid}").json()["reviews"] == []
    assert {x["reviewer"] for x in c1.vre_api("GET", f"/airlock/requests/{rid}").json()["reviews"]} == {"checker1"}
    assert c1.vre_api("POST", f"/airlock/requests/{rid}/release", json={}).status_code == 409

    hub.restart()  # killed mid-review: the request and the decisions so far survive

    seen = c1.vre_api("GET", f"/airlock/requests/{rid}").json()
    assert seen["state"] == "in_review" and seen["phase"] == "independent" and len(seen["reviews"]) == 3
    r = c2.vre_api("POST", f"/airlock/requests/{rid}/reviews", json={"decisions": [
        {"file": f["id"], "decision": "approve"} for f in files.values()]})
    assert r.status_code == 201, r.text
    both = bob.vre_api("GET", f"/airlock/requests/{rid}").json()
    assert both["phase"] == "consolidation" and {x["reviewer"] for x in both["reviews"]} == set(CHECKERS)
    r = c2.vre_api("POST", f"/airlock/requests/{rid}/release", json={"comment": "safe to release"})
    assert r.status_code == 200 and r.json()["state"] == "released", r.text

    # the author downloads the zip: checksums, the frozen (not the edited) table, the signed record
    r = bob.vre_api("GET", f"/airlock/requests/{rid}/download")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    sums = dict(line.split("  ", 1)[::-1] for line in z.read("SHA256SUMS").decode().splitlines())
    assert set(sums) == {"table.csv", "roc.png", "analysis.ipynb"}
    for name, digest in sums.items():
        assert hashlib.sha256(z.read(name)).hexdigest() == digest == files[name]["sha256"]
    assert z.read("table.csv").decode() == TABLE
    record = bob.vre_api("GET", f"/airlock/requests/{rid}/record").json()
    assert record["verified"] and record["text"] == z.read("release-record.json").decode()
    hub.vre("airlock", "verify", str(rid))
    one = bob.vre_api("GET", f"/airlock/requests/{rid}/files/{files['roc.png']['id']}/download")
    assert one.content == PNG and one.headers["X-VRE-SHA256"] == files["roc.png"]["sha256"]
    assert alice.vre_api("GET", f"/airlock/requests/{rid}/download").status_code == 404

    # the audit trail has every step, in order, with files and hashes
    events = audit(hub, rid)
    actions = [e["action"] for e in events if e["outcome"] == "ok"]
    assert in_order(actions, ["airlock.create", "airlock.check", "airlock.submit", "airlock.file_view",
                              "airlock.review_start", "airlock.review", "airlock.consolidate", "airlock.approve",
                              "airlock.release", "airlock.download"]), actions
    assert actions.count("airlock.review") == 6 and actions.count("airlock.file_view") >= 3
    denied = {(e["actor"], e["action"]) for e in events if e["outcome"] == "denied"}
    assert {("bob", "airlock.review"), ("bob", "airlock.file_view"), ("bob", "airlock.download")} <= denied
    submit = next(e for e in events if e["action"] == "airlock.submit" and e["outcome"] == "ok")
    assert {f["sha256"] for f in submit["details"]["files"]} == {f["sha256"] for f in files.values()}
    view = next(e for e in events if e["action"] == "airlock.file_view" and e["outcome"] == "ok")
    assert view["actor"] == "checker1" and view["project"] == PROJECT and view["details"]["sha256"]


def test_cli_drives_the_same_rules(hub, people):
    """The CLI acts --as an account with that account's rights; the admin's view shows everything."""
    home = hub.state / "projects" / PROJECT / "homes" / "bob"
    home.mkdir(parents=True, exist_ok=True)
    (home / "summary.txt").write_text("n=42\n")
    out = json.loads(hub.vre("airlock", "create", "--as", "bob", "--project", PROJECT, "--title", "summary",
                             "summary.txt").stdout)
    rid = str(out["id"])
    hub.vre("airlock", "submit", rid, "--as", "bob")
    r = hub.vre("airlock", "review", rid, "--as", "bob", "--decision", "approve", check=False)
    assert r.returncode == 2 and "author" in r.stderr
    r = hub.vre("airlock", "show", rid, "--as", "alice", check=False)
    assert r.returncode == 2 and "no airlock request" in r.stderr
    hub.vre("airlock", "review", rid, "--as", "checker1", "--decision", "reject", "--comment", "no")
    hub.vre("airlock", "review", rid, "--as", "checker2", "--decision", "reject", "--comment", "no")
    shown = json.loads(hub.vre("airlock", "show", rid).stdout)
    assert shown["phase"] == "consolidation" and len(shown["reviews"]) == 2
    hub.vre("airlock", "reject", rid, "--as", "checker1", "--comment", "not aggregate")
    assert json.loads(hub.vre("airlock", "show", rid).stdout)["state"] == "rejected"


def test_bad_input_is_answered_clearly(hub, people):
    bob, alice = people["bob"], people["alice"]
    r = bob.vre_api("POST", "/airlock/requests", data=b"not json")
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = bob.vre_api("POST", "/airlock/requests", json={"title": "x"})
    assert r.status_code == 400 and "project" in r.json()["message"]
    r = bob.vre_api("POST", "/airlock/requests", json={"project": "lung-screening", "title": "x"})
    assert r.status_code == 403 and "not a member" in r.json()["message"]
    r = bob.vre_api("POST", "/airlock/requests", json={"project": PROJECT, "title": "x", "files": ["nope.csv"]})
    assert r.status_code == 400 and "no such file" in r.json()["files"][0]["problems"][0]
    r = bob.vre_api("POST", "/airlock/requests", json={"project": PROJECT, "title": ""})
    assert r.status_code == 400 and "title" in r.json()["message"]
    draft = bob.vre_api("POST", "/airlock/requests", json={"project": PROJECT, "title": "empty"}).json()
    r = bob.vre_api("POST", f"/airlock/requests/{draft['id']}/submit")
    assert r.status_code == 400 and "no files" in r.json()["message"]
    assert alice.vre_api("GET", f"/airlock/requests/{draft['id']}").status_code == 404
    assert bob.vre_api("GET", "/airlock/requests/999999").status_code == 404
    r = bob.vre_api("POST", f"/airlock/requests/{draft['id']}/release", json={})
    assert r.status_code == 403 and "author" in r.json()["message"]
    assert bob.vre_api("POST", f"/airlock/requests/{draft['id']}/withdraw", json={}).json()["state"] == "withdrawn"
    r = bob.vre_api("POST", f"/airlock/requests/{draft['id']}/withdraw", json={})
    assert r.status_code == 409 and "withdrawn" in r.json()["message"]
    r = requests_get_anonymous(hub, f"/airlock/requests/{draft['id']}")
    assert r.status_code == 403


def requests_get_anonymous(hub, path):
    import requests

    return requests.get(f"{hub.url}/services/vre/api{path}", timeout=10)
