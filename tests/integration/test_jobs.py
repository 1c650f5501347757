"""The batch queue end to end: a real hub, its vre-jobs engine, and sandboxed Dask schedulers and
workers in the project's island.

One hub (SQLite) for the module with a fake GPU list (``VRE_GPU_DEVICES=0``: the allocator and the
queue are real; no GPU is touched) and a 1-GPU profile on alice's project ``lung-screening``.
Jobs are small scripts and notebooks written into the project workspace.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest
import requests

pytestmark = pytest.mark.integration

PROJECT = "lung-screening"
SLUG = "lung-ct-screening"


@pytest.fixture(scope="module")
def hub(make_hub):
    h = make_hub("sqlite-jobs", VRE_GPU_DEVICES="0", VRE_JOBS_WORKER_IDLE="30")
    h.vre("project", "set-profile", PROJECT, "gpu", "--cpu", "0.5", "--memory", "1G", "--gpus", "1")
    h.vre("project", "set-quota", PROJECT, "--jobs", "4", "--cpu", "2", "--memory", "8G", "--gpus", "1")
    return h


@pytest.fixture(scope="module")
def alice(hub):
    return hub.client("alice")


@pytest.fixture(scope="module")
def workspace(hub) -> Path:
    ws = hub.state / "projects" / PROJECT / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    return ws


def put(workspace: Path, name: str, text: str) -> str:
    path = workspace / name
    path.write_text(textwrap.dedent(text))
    return f"project/{name}"


def submit(client, **body):
    r = client.vre_api("POST", "/jobs", json={"project": PROJECT, **body})
    assert r.status_code == 201, r.text
    return r.json()


def job(client, job_id: int) -> dict:
    r = client.vre_api("GET", f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait(client, job_id: int, states=("succeeded", "failed", "cancelled", "timed_out"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = job(client, job_id)
        if j["state"] in states:
            return j
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {j['state']} after {timeout} s: {j}")


def log(client, job_id: int) -> str:
    return client.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]


def audit(hub, action: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--action", action, "--json", "--limit", "500",
                              "--newest-first").stdout)


NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "label = 'none'", "outputs": [],
         "execution_count": None},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": textwrap.dedent("""\
            import glob, json, os, pydicom
            files = sorted(glob.glob('/data/lung-ct-screening/**/*.dcm', recursive=True))
            ds = pydicom.dcmread(files[0])
            result = {'label': label, 'files': len(files), 'patient': str(ds.PatientID),
                      'shape': list(ds.pixel_array.shape), 'cwd': os.getcwd()}
            json.dump(result, open('result.json', 'w'))
            print('RESULT', result)
            """)},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_notebook_job_from_a_session_completes_after_the_session_stops(hub, alice, workspace):
    (workspace / "series.ipynb").write_text(json.dumps(NOTEBOOK))
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:  # submitted from a notebook, through the client library
        out = k.check("from vre_session import jobs\n"
                      "j = jobs.submit_notebook('~/project/series.ipynb', params={'label': 'cohort-a'}, name='nb')\n"
                      "print(j.id)")
        job_id = int(out.strip())
    finally:
        k.close()
    alice.stop(PROJECT)  # the job does not depend on the session
    done = wait(alice, job_id)
    assert done["state"] == "succeeded", (done, log(alice, job_id))
    result = json.loads((workspace / "jobs" / str(job_id) / "result.json").read_text())
    assert result["label"] == "cohort-a" and result["files"] > 0 and len(result["shape"]) == 2
    assert result["cwd"] == f"/home/jovyan/project/jobs/{job_id}"
    outputs = {o["path"] for o in done["outputs"]}
    assert f"/home/jovyan/project/jobs/{job_id}/series.ipynb" in outputs  # the executed notebook
    assert "RESULT" in log(alice, job_id)
    assert done["progress"] == {**done["progress"], "done": 2, "total": 2}
    assert done["usage"]["wall_s"] > 0
    for action in ("job.submit", "job.start", "job.finish"):
        assert any(e.get("target") == f"job/{job_id}" for e in audit(hub, action)), action


def test_isolation_inside_a_job(hub, alice, workspace):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        path = put(workspace, "probe.py", f"""
            import json, os, socket
            r = {{}}
            try:
                open('/data/lung-ct-screening/x', 'w'); r['data_write'] = 'allowed'
            except OSError as e:
                r['data_write'] = e.errno
            r['data'] = sorted(os.listdir('/data'))
            r['other_project'] = os.path.exists('/data/prostate-mri')
            r['devs'] = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
            r['routes'] = open('/proc/net/route').read().splitlines()[1:]
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(('127.0.0.1', {port})); r['host_listener'] = 'reached'
            except OSError as e:
                r['host_listener'] = type(e).__name__
            r['uid'] = os.getuid()
            r['homes'] = os.listdir('/home/jovyan')
            json.dump(r, open('probe.json', 'w'))
            """)
        j = wait(alice, submit(alice, kind="script", target=path)["id"])
        assert j["state"] == "succeeded", log(alice, j["id"])
        r = json.loads((workspace / "jobs" / str(j["id"]) / "probe.json").read_text())
    finally:
        listener.close()
    assert r["data_write"] == 30  # EROFS
    assert r["data"] == [SLUG] and r["other_project"] is False
    assert r["devs"] == ["lo"] and r["routes"] == []
    assert r["host_listener"] in ("ConnectionRefusedError", "TimeoutError", "timeout")
    assert "alice" not in " ".join(r["homes"])  # a worker has its own home, never a member's


def test_bad_submissions_are_refused_with_reasons(hub, alice, workspace):
    put(workspace, "ok.py", "print('ok')\n")
    cases = [
        ({"kind": "notebook", "target": "project/missing.ipynb"}, 400, "does not exist"),
        ({"kind": "script", "target": "/etc/passwd"}, 400, "not in the project workspace"),
        ({"kind": "script", "target": "project/ok.py", "profile": "huge"}, 403, "no profile 'huge'"),
        ({"kind": "script", "target": "project/ok.py", "gpus": 3, "profile": "gpu"}, 400, "between 0 and 1"),
        ({"kind": "script", "target": "project/ok.py", "gpus": 1, "profile": "small"}, 400, "between 0 and 0"),
        ({"kind": "notebook", "target": "project/ok.py"}, 400, "not a notebook"),
        ({"kind": "script", "target": "project/ok.py", "params": {"args": [{"x": 1}]}}, 400, "list of strings"),
        ({"kind": "script", "target": "project/ok.py", "max_runtime": "soon"}, 400, "must be a number"),
        ({"kind": "shell", "target": "project/ok.py"}, 400, "kind must be one of"),
        ({"kind": "script", "target": "project/ok.py", "project": "prostate-ai"}, 403, "not a member"),
    ]
    (workspace / "bad.ipynb").write_text("{not json")
    cases.append(({"kind": "notebook", "target": "project/bad.ipynb"}, 400, "not a readable notebook"))
    for body, status, words in cases:
        r = alice.vre_api("POST", "/jobs", json={"project": PROJECT, **body})
        assert r.status_code == status and words in r.json()["message"], (body, r.status_code, r.text)
    assert any(e["outcome"] != "ok" for e in audit(hub, "job.submit"))


def test_a_list_of_jobs_is_queued_all_or_none(hub, alice, workspace):
    """A sweep is one request: queued together in order, or (one refused) none of it, the answer
    (and the audit record) saying which."""
    target = put(workspace, "listed.py", "import sys; print('listed', *sys.argv[1:])\n")
    sweep = [{"project": PROJECT, "kind": "script", "target": target, "params": {"args": [str(i)]}, "cpu": 0.5}
             for i in range(3)]
    last = submit(alice, kind="script", target=target)["id"]   # job ids are given in turn: the list's are next
    for body, status, words in (
            ([], 400, "a list of 1 to 1000 jobs"), ([sweep[0]] * 1001, 400, "not 1001"),
            ([sweep[0], {**sweep[1], "max_runtime": "soon"}], 400, "job 2 of 2: max_runtime must be"),
            ([sweep[0], "script"], 400, "job 2 of 2: a job must be a JSON object"),
            ([sweep[0], {**sweep[1], "project": "prostate-ai"}], 403, "job 2 of 2: "),
            ([*sweep, {**sweep[0], "target": "project/missing.py"}], 400, "job 4 of 4: ")):
        r = alice.vre_api("POST", "/jobs", json=body)
        assert r.status_code == status and words in r.json()["message"], (words, r.status_code, r.text)
    r = alice.vre_api("POST", "/jobs", data="[" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "must be JSON" in r.json()["message"], r.text   # too deep for the parser
    # what a refusal's record keeps of a body is made storable: NaN, half a surrogate pair, a long name
    for raw in ('{"project": "lung-screening", "kind": "script", "cpu": NaN, "target": "project/listed.py"}',
                '{"project": "\\ud800", "kind": "x"}', '[{"project": "%s", "kind": "x"}]' % ("p" * 300)):
        r = alice.vre_api("POST", "/jobs", data=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
    recorded = [e for e in audit(hub, "job.submit") if e["outcome"] != "ok"][:3]   # newest first
    assert [e["project"] for e in recorded] == [None, None, PROJECT]
    assert recorded[0]["details"]["reason"].startswith("job 1 of 1: kind must be")
    assert recorded[0]["details"]["list"] == 1
    assert recorded[1]["details"]["reason"].startswith("kind must be") and recorded[2]["details"]["cpu"] == "nan"
    listed = alice.vre_api("GET", f"/jobs?project={PROJECT}&limit=20").json()["jobs"]
    assert max(j["id"] for j in listed) == last and not (workspace / "jobs" / str(last + 1)).exists()

    r = alice.vre_api("POST", "/jobs", json=sweep)
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    assert ids == [last + 1, last + 2, last + 3]
    for i, job_id in enumerate(ids):
        assert wait(alice, job_id)["state"] == "succeeded"
        assert f"listed {i}" in log(alice, job_id)
    # what the audit records of a job is what was queued (bounded): a huge name for a function is cut
    payload = base64.b64encode(cloudpickle.dumps((abs, (-3,), {}))).decode()
    r = alice.vre_api("POST", "/jobs", json=[{"project": PROJECT, "kind": "function", "payload": payload,
                                              "target": "f" * 100_000}])
    assert r.status_code == 201, r.text
    ids.append(r.json()["jobs"][0]["id"])
    events = {e["target"]: e for e in audit(hub, "job.submit") if e["outcome"] == "ok"}
    assert all(events[f"job/{i}"]["details"]["list"] == 3 and events[f"job/{i}"]["actor"] == "alice" for i in ids[:3])
    assert events[f"job/{ids[3]}"]["details"]["target"] == "f" * 200
    refusals = [e for e in audit(hub, "job.submit") if e["outcome"] != "ok" and "list" in e["details"]]
    assert any(e["details"]["reason"].startswith("job 4 of 4: ") and e["details"]["list"] == 4 for e in refusals)
    assert any(e["outcome"] == "denied" and e["project"] == "prostate-ai" for e in refusals)


def test_gpu_jobs_queue_one_at_a_time_and_cpu_jobs_pass(hub, alice, workspace):
    path = put(workspace, "gpu.py", """
        import os, sys, time
        print('START', time.time(), os.environ.get('VRE_GPU_DEVICES'), flush=True)
        time.sleep(float(sys.argv[1]))
        print('END', time.time(), flush=True)
        """)
    gpu = [submit(alice, kind="script", target=path, profile="gpu", params={"args": ["2"]}, name=f"g{i}")["id"]
           for i in range(3)]
    cpu = submit(alice, kind="script", target=path, profile="small", params={"args": ["0"]}, name="c")["id"]
    listing = {j["id"]: j for j in alice.vre_api("GET", f"/jobs?project={PROJECT}").json()["jobs"]}
    assert any(listing[i]["position"] for i in gpu)  # queued GPU jobs show their place
    done = {i: wait(alice, i, timeout=180) for i in [*gpu, cpu]}
    assert all(d["state"] == "succeeded" for d in done.values()), done
    spans = []
    for i in gpu:
        lines = log(alice, i).split()
        start, device, end = float(lines[lines.index("START") + 1]), lines[lines.index("START") + 2], \
            float(lines[lines.index("END") + 1])
        assert device == "0" and done[i]["devices"] == "0"
        spans.append((start, end))
    assert spans == sorted(spans)  # in order of submission
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one at a time
    cpu_start = float(log(alice, cpu).split()[log(alice, cpu).split().index("START") + 1])
    assert cpu_start < spans[-1][0]  # the CPU job did not wait behind the GPU jobs


def test_cancel_kills_the_job_process(hub, alice, workspace):
    path = put(workspace, "forever.py", """
        import subprocess, time
        subprocess.Popen(['sleep', '600'])
        print('STARTED', flush=True)
        time.sleep(600)
        """)
    j = submit(alice, kind="script", target=path)
    deadline = time.monotonic() + 90
    while "STARTED" not in log(alice, j["id"]):
        assert time.monotonic() < deadline, job(alice, j["id"])
        time.sleep(0.3)
    r = alice.vre_api("POST", f"/jobs/{j['id']}/cancel")
    assert r.status_code == 200, r.text
    done = wait(alice, j["id"])
    assert done["state"] == "cancelled"
    # nothing of the job is left in any of the project's worker cgroups (only the Dask workers)
    time.sleep(1)
    for needle in ("forever.py", "sleep 600", "jobs.runner"):
        assert not _in_worker_cgroups(hub, needle)


def _in_worker_cgroups(hub, needle: str) -> list[str]:
    """Command lines with ``needle`` of the processes in the project's worker cgroups."""
    found = []
    for cg in Path(f"/sys/fs/cgroup/pids/{hub.instance}").glob(f"{PROJECT}-worker-*"):
        for pid in (cg / "cgroup.procs").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            if needle in cmd:
                found.append(cmd)
    return found


def test_a_job_leaves_nothing_running_on_its_worker(hub, alice, workspace):
    """The worker's next job may be another member's, and the host records the worker's reads
    under the job it serves: a background child and a daemon in a session of its own end with
    the job that started them, and its log says so."""
    path = put(workspace, "leaves.py", """
        import os, subprocess
        subprocess.Popen('sleep 613 &', shell=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp('sleep', ['sleep', '614'])
            os._exit(0)
        os.wait()
        print('LEAVING', flush=True)
        """)
    j = submit(alice, kind="script", target=path)
    done = wait(alice, j["id"])
    text = log(alice, j["id"])
    assert done["state"] == "succeeded", (done, text)
    # (the shell that put 'sleep 613' in the background may not have exited yet: ended with them)
    ended = text.split("running, ended: ", 1)[-1].split("\n", 1)[0]
    assert "LEAVING" in text and "the job left" in text and ended.count(" sleep") == 2, text
    assert not _in_worker_cgroups(hub, "sleep 613") and not _in_worker_cgroups(hub, "sleep 614")


def test_run_time_and_memory_limits_say_so(hub, alice, workspace):
    slow = put(workspace, "slow.py", "import time\ntime.sleep(120)\n")
    hog = put(workspace, "hog.py", "b = bytearray(3 * 1024**3)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')\n")
    t = submit(alice, kind="script", target=slow, max_runtime=3)
    m = submit(alice, kind="script", target=hog, mem_mb=256)
    t, m = wait(alice, t["id"]), wait(alice, m["id"])
    assert t["state"] == "timed_out" and "run-time limit of 3 s" in t["reason"], t
    assert m["state"] == "failed" and "out of memory" in m["reason"], (m, log(alice, m["id"]))


def test_function_job_and_rerun(hub, alice):
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        out = k.check(textwrap.dedent("""\
            from vre_session import jobs
            import os
            def count(prefix):
                return prefix, len(os.listdir('/data/lung-ct-screening'))
            swept = jobs.map_function(count, ['a', 'b'], job_kwargs={'cpu': 0.5})
            j = jobs.submit_function(count, 'n', job_kwargs={'cpu': 0.5})
            print([s.result(timeout=120)[0] for s in swept], [s.id for s in swept])
            print(j.result(timeout=120), j.id)
            """), timeout=150)
        # the Lab's relay: each job of a list defaults to the session's project
        payload = base64.b64encode(cloudpickle.dumps((abs, (-1,), {}))).decode()
        r = requests.post(f"{alice.server_url(PROJECT)}/vre/api/jobs", json=[{"kind": "function", "payload": payload}],
                          headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert r.status_code == 201 and r.json()["jobs"][0]["project"] == PROJECT, r.text
    finally:
        k.close()
        alice.stop(PROJECT)
    swept, value = out.strip().split("\n")[-2:]
    assert swept.startswith("['a', 'b'] [")   # one job each, in order
    value, job_id = value.rsplit(" ", 1)
    assert value.startswith("('n', ") and not value.startswith("('n', 0)")
    r = alice.vre_api("POST", f"/jobs/{job_id}/rerun")
    assert r.status_code == 201 and r.json()["rerun_of"] == int(job_id)
    assert wait(alice, r.json()["id"])["state"] == "succeeded"


def test_interactive_dask_client_and_dashboard_through_the_proxy(hub, alice):
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        out = k.check(textwrap.dedent("""\
            from vre_session import jobs
            client = jobs.dask_client(workers=1, cpu=0.5, mem_mb=512, max_runtime=300)
            import os
            print(client.submit(lambda: sorted(os.listdir('/data'))).result(), client.vre_job.id)
            """), timeout=150)
        r = requests.get(f"{alice.server_url(PROJECT)}/proxy/8787/status",
                         headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert r.status_code == 200 and "Dask" in r.text, r.status_code
        job_id = int(out.split()[-1])
        assert f"['{SLUG}']" in out
        alice.vre_api("POST", f"/jobs/{job_id}/cancel")
        assert wait(alice, job_id)["state"] == "cancelled"
    finally:
        k.close()
        alice.stop(PROJECT)


def test_scheduler_kill_requeues_and_hub_restart_keeps_the_queue(hub, alice, workspace):
    path = put(workspace, "steady.py", "import sys, time\nprint('RUN', flush=True)\ntime.sleep(float(sys.argv[1]))\n")
    first = submit(alice, kind="script", target=path, params={"args": ["6"]})
    deadline = time.monotonic() + 90
    while "RUN" not in log(alice, first["id"]):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    sched = Path(f"/sys/fs/cgroup/pids/{hub.instance}/{PROJECT}-scheduler/cgroup.procs")
    for pid in sched.read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    # re-queued at once; it may already run (or have finished) its second attempt when we look
    deadline = time.monotonic() + 30
    while (j := job(alice, first["id"]))["attempts"] < 2 and j["state"] != "failed":
        assert time.monotonic() < deadline, f"the job was not re-queued after its scheduler was killed: {j}"
        time.sleep(0.3)
    assert j["state"] != "failed", j
    # the hub (and with it the engine) restarts while jobs are queued and running
    hub.vre("project", "set-quota", PROJECT, "--jobs", "1")
    later = [submit(alice, kind="script", target=path, params={"args": ["1"]})["id"] for _ in range(2)]
    hub.restart(signal.SIGKILL)
    alice = hub.client("alice")
    states = {i: job(alice, i)["state"] for i in [first["id"], *later]}
    assert all(s in ("queued", "running", "succeeded") for s in states.values()), states
    done = {i: wait(alice, i, timeout=150) for i in [first["id"], *later]}
    assert all(d["state"] == "succeeded" for d in done.values()), done
    assert done[first["id"]]["attempts"] == 2
    requeues = [e for e in audit(hub, "job.requeue") if e.get("target") == f"job/{first['id']}"]
    assert requeues and "scheduler was lost" in requeues[0]["details"]["reason"], requeues
    hub.vre("project", "set-quota", PROJECT, "--jobs", "4")


def test_a_jobs_dataset_reads_are_recorded_from_the_host_as_its_submitters(hub, alice, workspace):
    """vre-hostview marks the worker's dataset mount before it runs; the engine tells it which job
    the worker serves: the reads are the submitter's, with the job's id."""
    path = put(workspace, "reads.py", f"""\
        import glob
        files = sorted(glob.glob('/data/{SLUG}/**/*.dcm', recursive=True))
        for f in files:
            open(f, 'rb').read(1)
        print('READ', len(files))
        """)
    j = wait(alice, submit(alice, kind="script", target=path)["id"])
    assert j["state"] == "succeeded", log(alice, j["id"])
    n = int(log(alice, j["id"]).split("READ")[1].split()[0])
    deadline = time.monotonic() + 30  # hostview reads the kernel's queue every 50 ms, then stores
    while not (firsts := [e for e in audit(hub, "dataset.read") if e["details"].get("job") == j["id"]]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert firsts and all(e["actor"] == "alice" and e["actor_role"] == "researcher" and e["dataset"] == SLUG
                          and e["project"] == PROJECT and e["details"]["role"] == "worker" for e in firsts)
    deadline = time.monotonic() + 90  # a warm worker's counts are summarised when its minute ends
    while time.monotonic() < deadline:
        opens = sum(e["details"]["opens"] for e in audit(hub, "dataset.read_summary")
                    if e["details"].get("job") == j["id"])
        if opens >= n:
            break
        time.sleep(1)
    assert opens == n


def test_a_job_with_data_waits_while_hostview_is_away_and_then_runs_as_its_submitters(hub, alice, workspace):
    """A warm worker's next job is handed out only once hostview counts the worker's reads for
    it: with hostview away the job waits in the queue saying why (it was handed out anyway,
    its first reads recorded under the worker's previous job), and runs once it is back."""
    from vre.hostview import client as hostview
    from vre.settings import load

    path = put(workspace, "reads_one.py", f"""\
        import glob
        open(sorted(glob.glob('/data/{SLUG}/**/*.dcm', recursive=True))[0], 'rb').read(1)
        print('READ')
        """)
    first = wait(alice, submit(alice, kind="script", target=path)["id"])   # a warm worker with the data
    assert first["state"] == "succeeded", log(alice, first["id"])
    sock = hostview.socket_path(load(environ=hub.env))
    hidden = sock.with_name("hidden.sock")
    os.rename(sock, hidden)
    try:
        j = submit(alice, kind="script", target=path)
        deadline = time.monotonic() + 60
        while "vre-hostview" not in (now := job(alice, j["id"]))["reason"]:
            assert time.monotonic() < deadline and now["state"] == "queued", now
            time.sleep(0.3)
        time.sleep(2)   # looks go on meanwhile: it stays queued
        assert job(alice, j["id"])["state"] == "queued"
    finally:
        os.rename(hidden, sock)
    done = wait(alice, j["id"])
    assert done["state"] == "succeeded", log(alice, j["id"])
    deadline = time.monotonic() + 30
    while not (firsts := [e for e in audit(hub, "dataset.read") if e["details"].get("job") == j["id"]]):
        assert time.monotonic() < deadline, "no dataset.read names the job"
        time.sleep(0.5)
    assert {e["actor"] for e in firsts} == {"alice"}
