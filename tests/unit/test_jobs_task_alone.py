"""The batch task run alone, as a Kubernetes Job's container runs it (``k8s_job_runner = "jobs"``):
``python -m vre_session.jobs.task SPEC`` runs the job and leaves how it ended as the container's
termination message, which the job engine reads; a SIGTERM (the Job deleted) stops the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vre_session.jobs import task


def spec_file(tmp_path, script: str, **kw) -> str:
    target = tmp_path / "job.py"
    target.write_text(script)
    spec = {"id": 9, "outdir": str(tmp_path / "out"), "max_runtime_s": 60, "kind": "script", "target": str(target),
            "project": "lung", "user": "ann", "params": {"args": []}, **kw}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    return str(path)


def run_alone(tmp_path, spec: str, **popen):
    """The task as a process of its own, its termination message in a file of the test's."""
    log = tmp_path / "termination-log"
    code = ("import sys; from vre_session.jobs import task; "
            f"task.TERMINATION_LOG = {str(log)!r}; sys.exit(task.main([{spec!r}]))")
    return subprocess.Popen([sys.executable, "-c", code], **popen), log


def test_the_report_of_a_job_is_its_termination_message(tmp_path):
    proc, log = run_alone(tmp_path, spec_file(tmp_path, "print('hello from the job')\nraise SystemExit(3)\n"))
    assert proc.wait(60) == 0   # the task did its part: the job's own exit code is in the report
    report = json.loads(log.read_text())
    assert report["returncode"] == 3 and report["timed_out"] is False and report["cancelled"] is False
    assert set(report["usage"]) == {"wall_s", "cpu_s", "max_rss_mb"}
    assert "hello from the job" in (tmp_path / "out" / "log.txt").read_text()
    assert len(log.read_text()) < 4096   # what the kubelet keeps of it


def test_a_task_that_cannot_run_reports_why(tmp_path):
    (tmp_path / "jobs").symlink_to("/tmp")   # a link in place of the workspace's jobs folder, on claims
    spec = spec_file(tmp_path, "print('never')\n", outdir=str(tmp_path / "jobs" / "9"), outdir_mode=0o2770,
                     attempt=1)
    proc, log = run_alone(tmp_path, spec)
    assert proc.wait(60) == 1
    report = json.loads(log.read_text())
    assert set(report) == {"error"} and "FolderInTheWay" in report["error"], report
    proc, log = run_alone(tmp_path, str(tmp_path / "missing.json"))
    assert proc.wait(60) == 1 and "No such file" in json.loads(log.read_text())["error"]


def test_sigterm_stops_the_job_and_the_report_says_cancelled(tmp_path):
    started = tmp_path / "started"
    script = f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(600)\n"
    proc, log = run_alone(tmp_path, spec_file(tmp_path, script))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the job never started"
        time.sleep(0.05)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0 and time.monotonic() - t0 < task.KILL_GRACE + 5
    report = json.loads(log.read_text())
    assert report["cancelled"] is True and report["returncode"] == -signal.SIGTERM


def test_usage_is_refused_with_what_to_give(capsys):
    assert task.main([]) == 2
    assert "usage: python -m vre_session.jobs.task SPEC_FILE" in capsys.readouterr().err


def test_a_long_error_is_cut_to_what_the_kubelet_keeps(tmp_path, monkeypatch):
    """An error text of characters JSON escapes (six bytes each) still gives a whole report."""
    log = tmp_path / "termination-log"
    monkeypatch.setattr(task, "TERMINATION_LOG", str(log))
    monkeypatch.setattr(task, "run_job", lambda spec: (_ for _ in ()).throw(RuntimeError("\u2603" * 2000)))
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    assert task.main([str(spec)]) == 1
    data = log.read_bytes()
    assert len(data) <= task.REPORT_MAX and json.loads(data)["error"].startswith("RuntimeError: \u2603")


LEAVES = """
import os, subprocess, sys
here = sys.argv[0].rsplit('/', 1)[0]
subprocess.Popen(['sleep', '600'])                       # in the job's group
if os.fork() == 0:                                       # a daemon: a session of its own, its parent gone
    os.setsid()
    if os.fork() == 0:
        open(os.path.join(here, 'daemon.pid'), 'w').write(str(os.getpid()))
        os.execvp('sleep', ['sleep', '601'])
    os._exit(0)
os.wait()
while not os.path.exists(os.path.join(here, 'daemon.pid')):
    pass
print('leaving', flush=True)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_what_a_job_leaves_running_is_ended_with_it(tmp_path):
    """A worker serves the next job at once, and the host records its reads under that job: a
    job's background child and a daemon that left its session end with the job, and the log
    says so."""
    spec = spec_file(tmp_path, LEAVES)
    proc, log = run_alone(tmp_path, spec)
    assert proc.wait(60) == 0
    assert json.loads(log.read_text())["returncode"] == 0 and json.loads(log.read_text())["spent"] is False
    daemon = int((tmp_path / "daemon.pid").read_text())
    try:
        assert not _running(daemon), "the daemon the job left is still running"
    finally:
        if _running(daemon):
            os.kill(daemon, signal.SIGKILL)
    text = (tmp_path / "out" / "log.txt").read_text()
    assert "leaving" in text and "the job left 2 process(es) running, ended:" in text, text
    assert text.count(" sleep") >= 2


@pytest.mark.skipif(os.geteuid() != 0, reason="a process the sweep may not kill: root's, swept as another uid")
def test_what_would_not_end_is_reported_without_holding_up_the_worker(tmp_path):
    """A leftover that does not go within the grace (stuck in the kernel; here one the sweep may
    not kill) is reported, and the sweep returns: the engine then stops the worker."""
    code = """
import json, os, subprocess, time
from vre_session.jobs import leftovers
leftovers.adopt_orphans()
stuck = subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.setresuid(65534, 65534, 65534)
began = time.monotonic()
ended, left = leftovers.end_leftovers(0.3)
print(json.dumps({"ended": ended, "left": left, "took": time.monotonic() - began, "pid": stuck.pid}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    try:
        assert report["ended"] == [] and report["left"] == [f"{report['pid']} sleep"]
        assert 0.3 <= report["took"] < 2
    finally:
        os.kill(report["pid"], signal.SIGKILL)
