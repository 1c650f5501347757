"""Grant modes and grant expiry from inside real sessions and batch jobs (issue 14).

One hub (SQLite) for the module. alice's project ``lung-screening`` is granted ``prostate-mri``
(the other demo project's cohort) batch-only: her sessions must not see its files, nor the
project's shared workers (which her session drives through Dask); a held job reads them, and what
it writes stays out of her reach until it leaves through the airlock. Made interactive it appears
in her next session; expired it is gone from both, also for a job that comes after a warm worker
(started before the expiry) waits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

PROJECT = "lung-screening"
OWN = "lung-ct-screening"
EXTRA = "prostate-mri"

PROBE = f"""
import glob, json, os
r = {{'data': sorted(os.listdir('/data')), 'catalog': sorted(os.listdir('/opt/vre/catalog'))}}
try:
    os.stat('/data/{EXTRA}'); r['stat'] = 'ok'
except OSError as e:
    r['stat'] = e.errno
files = sorted(glob.glob('/data/{EXTRA}/**/*.dcm', recursive=True))
r['dicm'] = open(files[0], 'rb').read(132)[128:].decode() if files else None
r['catalogue_only'] = [d['slug'] for d in json.load(open('/etc/vre/session.json')).get('catalogue_only', [])]
"""


@pytest.fixture(scope="module")
def hub(make_hub):
    # workers stay warm longer than the expiry test waits: a warm worker must not carry an expired grant
    h = make_hub("sqlite-grant-modes", VRE_JOBS_WORKER_IDLE="600")
    h.vre("project", "grant", PROJECT, EXTRA, "--mode", "batch-only")
    return h


@pytest.fixture(scope="module")
def alice(hub):
    return hub.client("alice")


@pytest.fixture(scope="module")
def workspace(hub) -> Path:
    ws = hub.state / "projects" / PROJECT / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "probe.py").write_text(PROBE + "json.dump(r, open('probe.json', 'w'))\n")
    return ws


def in_session(alice) -> dict:
    """The probe run in a kernel of a fresh session."""
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        return json.loads(k.check(PROBE + "print(json.dumps(r))").strip().splitlines()[-1])
    finally:
        k.close()


def run_job(alice, lane: str = "open", target: str = "project/probe.py") -> dict:
    """Submit a script job, wait for its end; the job as the API shows it to alice."""
    r = alice.vre_api("POST", "/jobs", json={"project": PROJECT, "kind": "script", "target": target, "lane": lane})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 180
    while (j := alice.vre_api("GET", f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, j
        time.sleep(0.3)
    return j


def in_job(alice, workspace) -> dict:
    j = run_job(alice)
    assert j["state"] == "succeeded", (j, alice.vre_api("GET", f"/jobs/{j['id']}/log").json()["text"])
    return json.loads((workspace / "jobs" / str(j["id"]) / "probe.json").read_text())


def home(hub, alice) -> str:
    return requests.get(f"{hub.url}/hub/home", cookies=alice.http.cookies, timeout=10).text


def audit(hub, action: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--action", action, "--json", "--limit", "500").stdout)


HELD_PROBE = PROBE + """
try:
    open('/home/jovyan/project/leak.txt', 'w').write(r['dicm'] or '')
    r['workspace_write'] = 'ok'
except OSError as e:
    r['workspace_write'] = e.errno
try:  # a FIFO a member left in the workspace: a read-only mount would still let it open for writing
    os.close(os.open('/home/jovyan/project/pipe', os.O_WRONLY | os.O_NONBLOCK))
    r['fifo'] = 'opened'
except OSError as e:
    r['fifo'] = e.errno
r['argv0'] = __import__('sys').argv[0]
out = os.environ['VRE_JOB_OUTPUT']
json.dump(r, open(os.path.join(out, 'probe.json'), 'w'))
print('LOGGED', r['dicm'])
"""

#: From a session, the project's Dask scheduler (shared with its batch workers): every worker it
#: knows, and what each has under /data.
DASK_PROBE = """
import json, os
from distributed import Client
c = Client('tcp://127.0.0.1:8786', timeout=20)
names = sorted(str(w['name']) for w in c.scheduler_info()['workers'].values())
data = c.run(lambda: sorted(__import__('os').listdir('/data')))
c.close()
print(json.dumps({'workers': names, 'data': sorted({d for v in data.values() for d in v})}))
"""


def test_batch_only_is_absent_from_sessions_and_shared_workers_and_read_by_a_held_job(hub, alice, workspace):
    s = in_session(alice)
    assert s["data"] == [OWN] and s["stat"] == 2 and s["dicm"] is None  # ENOENT: no file, no mount point
    assert s["catalog"] == [OWN] and s["catalogue_only"] == [EXTRA]
    r = requests.get(f"{alice.server_url(PROJECT)}/vre/api/datasets",
                     headers={"Authorization": f"token {alice.token}"}, timeout=30)
    listed = {d["slug"]: d for d in r.json()["datasets"]}
    assert listed[EXTRA]["mode"] == "batch-only" and listed[EXTRA]["path"] is None
    assert listed[EXTRA]["note"] == "batch-only: available to batch jobs" and listed[EXTRA]["record"]["title"]
    assert listed[OWN]["mode"] == "interactive"
    assert "batch-only: available to batch jobs" in home(hub, alice)
    alice.stop(PROJECT)
    assert audit(hub, "session.start")[-1]["details"]["datasets"] == [OWN]

    # an open job runs on the shared workers: no batch-only files there
    j = in_job(alice, workspace)
    assert j["data"] == [OWN] and j["stat"] == 2 and j["dicm"] is None

    # a held job reads them; it does not see the workspace (it runs a copy of its script) and
    # cannot reach a FIFO a member left there (with a reader waiting, as a session would);
    # its folder is not in the workspace
    (workspace / "held_probe.py").write_text(HELD_PROBE)
    os.mkfifo(workspace / "pipe", 0o666)
    reader = os.open(workspace / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    held = run_job(alice, "held", "project/held_probe.py")
    assert held["state"] == "succeeded", held
    assert held["lane"] == "held" and held["outdir"] == f"/held/jobs/{held['id']}"
    folder = hub.state / "projects" / PROJECT / "held" / "jobs" / str(held["id"])
    h = json.loads((folder / "probe.json").read_text())
    assert h["data"] == sorted([OWN, EXTRA]) and h["stat"] == "ok" and h["dicm"] == "DICM"
    os.close(reader)
    assert h["workspace_write"] == 2 and h["fifo"] == 2  # ENOENT: no workspace at all
    assert h["argv0"] == f"/held/jobs/{held['id']}/input/held_probe.py"
    assert not (workspace / "leak.txt").exists() and not (workspace / "jobs" / str(held["id"])).exists()
    start = audit(hub, "job.start")[-1]
    assert start["target"] == f"job/{held['id']}" and start["details"]["lane"] == "held"
    assert EXTRA in start["details"]["datasets"]
    # members see that it ran and how it ended, never what it wrote
    assert held["outputs"] == [] and held["progress"] is None and "airlock" in held["held"]
    log = alice.vre_api("GET", f"/jobs/{held['id']}/log").json()["text"]
    assert "LOGGED" not in log and "airlock" in log
    assert "LOGGED DICM" in (folder / "log.txt").read_text()  # the log exists: it is held, not lost

    # from a session: no /held, and the shared scheduler knows no held worker, whose data is absent
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        assert k.check("import os; print(os.path.exists('/held'))").strip() == "False"
        seen = json.loads(k.check(DASK_PROBE).strip().splitlines()[-1])
    finally:
        k.close()
    assert seen["workers"] and not any(".held" in w for w in seen["workers"]), seen
    assert seen["data"] == [OWN], seen

    # the airlock is the way out: the held folder can be put in an export request, whose held files
    # stay withheld from their author (name, size, hash) until the output checkers release them
    r = alice.vre_api("POST", "/airlock/requests", json={
        "project": PROJECT, "title": "held results", "justification": "aggregate counts",
        "files": [{"path": f"/held/jobs/{held['id']}/probe.json", "description": "the probe"}]})
    assert r.status_code == 201, r.text
    assert [(f["held"], f["withheld"], f["name"], f["path"], f["size"]) for f in r.json()["files"]] == \
        [(True, True, None, f"/held/jobs/{held['id']}", None)]
    assert "probe.json" not in r.text and r.json()["withheld_files"] == 1
    # climbing out of a held job's folder is judged where it lands: a dataset file that exists (the
    # demo cohort's clinical table, mounted in her session) is refused as one
    r = alice.vre_api("POST", "/airlock/requests", json={
        "project": PROJECT, "title": "a dataset file",
        "files": [f"/held/jobs/{held['id']}/../../../data/{OWN}/clinical.csv"]})
    assert r.status_code == 400 and "inside a dataset" in r.json()["message"], r.text
    assert r.json()["files"][0]["problems"] == [
        f"leads to /data/{OWN}/clinical.csv, inside a dataset: dataset files never leave through the airlock"]
    alice.stop(PROJECT)


def test_a_sessions_catalogue_view_is_its_own_projects(hub, alice):
    """The Lab's Datasets panel asks the VRE service with its server's token, which the hub scopes
    to that one server: code in alice's lung-screening session learns nothing of her other project."""
    hub.vre("project", "add-member", "prostate-ai", "alice")
    try:
        alice.start(PROJECT)
        r = requests.get(f"{alice.server_url(PROJECT)}/vre/api/catalogue",
                         headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert [p["slug"] for p in r.json()["projects"]] == [PROJECT]
        assert all(set(d["access"]) == {PROJECT} for d in r.json()["datasets"])
        alice.stop(PROJECT)
    finally:
        hub.vre("project", "remove-member", "prostate-ai", "alice")


def test_made_interactive_it_appears_in_the_next_session(hub, alice):
    hub.vre("project", "update-grant", PROJECT, EXTRA, "--mode", "interactive")
    s = in_session(alice)
    assert s["data"] == sorted([OWN, EXTRA]) and s["stat"] == "ok" and s["dicm"] == "DICM"
    assert s["catalogue_only"] == []
    alice.stop(PROJECT)
    assert [e["details"]["mode"] for e in audit(hub, "project.grant_update")] == ["interactive"]


def test_an_expired_grant_is_absent_from_sessions_and_jobs(hub, alice, workspace):
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=45)
    hub.vre("project", "update-grant", PROJECT, EXTRA, "--expires", expires.isoformat())
    before = in_job(alice, workspace)  # leaves a warm worker with it mounted, and a cached plan
    assert before["stat"] == "ok", "the job did not start before the grant expired (slow host?)"
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1)
    row = next(line for line in hub.vre("project", "list").stdout.splitlines() if line.startswith(PROJECT))
    assert re.search(rf"{EXTRA} \((batch-only, )?expired\)", row), row
    assert "grant expired" in home(hub, alice)
    after = in_job(alice, workspace)
    assert after["data"] == [OWN] and after["stat"] == 2 and after["dicm"] is None
    s = in_session(alice)
    assert s["data"] == [OWN] and s["stat"] == 2 and s["catalogue_only"] == []
    alice.stop(PROJECT)
