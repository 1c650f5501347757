"""A managed service never outlives its hub: not when the hub dies before the service asked for
the death signal and a subreaper (not init) adopts it; and the audit sealer stops on its stop
signals however they arrive, sealing the trail on its way out."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36

# A "hub" that starts one service and exits at once; the service takes a second to get to
# die_with_hub (a slow import), so the hub is gone before the service asks for the signal.
HUB = textwrap.dedent("""
    import os, subprocess, sys
    env = {**os.environ, "VRE_HUB_PID": str(os.getpid()), "JUPYTERHUB_SERVICE_NAME": "test"}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    print(child.pid, flush=True)
""")
SERVICE = textwrap.dedent("""
    import time
    time.sleep(1)
    from vre.services import die_with_hub
    die_with_hub()
    time.sleep(120)
""")


def test_a_service_whose_hub_died_before_it_asked_exits_under_a_subreaper():
    # This test process adopts orphans (as a container's init or a CI harness may), so an orphaned
    # service's parent is this process, not pid 1.
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        hub = subprocess.run([sys.executable, "-c", HUB, SERVICE], capture_output=True, text=True, timeout=30)
        service = int(hub.stdout.strip())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, status = os.waitpid(service, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        else:
            os.kill(service, signal.SIGKILL)
            os.waitpid(service, 0)
            raise AssertionError("the service outlived its hub")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1, status  # SystemExit with the reason
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_the_sealer_stops_on_its_stop_signals_however_they_arrive():
    tmp_path = Path(tempfile.mkdtemp(prefix="vres-"))  # short: the run directory holds sockets
    try:
        _sealer_stops(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _sealer_stops(tmp_path: Path) -> None:
    from vre import db as vdb
    from vre.audit import AuditStore, Event, checkpoint_file
    from vre.settings import load

    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": str(tmp_path / "run"),
           "VRE_DB_URL": f"sqlite:///{tmp_path / 'vre.sqlite'}",
           "VRE_HUB_PID": str(os.getpid()), "JUPYTERHUB_SERVICE_NAME": "vre-audit-sealer"}
    vdb.upgrade(env["VRE_DB_URL"])
    settings = load(environ=env)
    # this writer leaves all sealing to the sealer
    store = AuditStore(settings.vre_db_url, settings.secrets_dir, checkpoint_file=checkpoint_file(settings),
                       checkpoint_every=10**6, checkpoint_seconds=10**6)
    store.append(Event("job.submit", actor="ann", actor_role="researcher", project="lung", target="job/0"))  # sealed: a process's first
    for i, signals in enumerate(([signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGTERM, signal.SIGTERM])):
        proc = subprocess.Popen([sys.executable, "-m", "vre.audit.sealer"], env=env, stderr=subprocess.PIPE, text=True)
        lock = tmp_path / "run" / "audit-sealer.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):  # it holds its lock
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        store.append(Event("job.finish", actor="ann", actor_role="researcher", project="lung", target=f"job/{i}"))
        sealed = store.checkpoint_file.read_text().count("\n") if store.checkpoint_file.exists() else 0
        for sig in signals:
            proc.send_signal(sig)
        try:
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
        finally:
            proc.kill()
        # the event appended while it ran is sealed on its way out
        assert store.checkpoint_file.read_text().count("\n") == sealed + 1
    assert store.verify().ok
