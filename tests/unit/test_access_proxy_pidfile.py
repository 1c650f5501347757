"""The proxy's pid file outlives the processes it names (it is on the state volume): a new hub pod,
or a host after a reboot, must not take whatever process now has that pid for the old proxy and
signal it (a new hub pod would kill a process of its own at each start)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vre.access.proxy import VREAccessProxy, is_proxy


_READY_THEN_SLEEP = "import time; print('ready', flush=True); time.sleep(60)"


def _started(argv):
    """A child that has printed its first line. Popen returns once the child's exec is past its point
    of no return, before the kernel has set up its new argument area: until then its
    /proc/<pid>/cmdline reads empty, and a loaded machine showed that window (CI, stop 30)."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    return child


def test_only_a_configurable_http_proxy_counts_as_the_previous_proxy(tmp_path, caplog):
    proxy = VREAccessProxy(auth_token="t", pid_file=str(tmp_path / "proxy.pid"), api_url="http://127.0.0.1:1")
    bystander = _started([sys.executable, "-c", _READY_THEN_SLEEP])
    chp = _started([sys.executable, "-c", _READY_THEN_SLEEP, "configurable-http-proxy"])
    try:
        with pytest.raises(ProcessLookupError):
            proxy._check_pid(bystander.pid)
        assert "is not a configurable-http-proxy: the file is stale" in caplog.text
        proxy._check_pid(chp.pid)   # the proxy itself: still running, as JupyterHub asks
        # the whole check: a stale file naming a bystander is removed, and the bystander lives on
        (tmp_path / "proxy.pid").write_text(str(bystander.pid))
        proxy._check_previous_process()
        assert not (tmp_path / "proxy.pid").exists() and bystander.poll() is None
    finally:
        for p in (bystander, chp):
            p.kill()
            p.wait()
    with pytest.raises(ProcessLookupError):
        proxy._check_pid(bystander.pid)   # gone
    assert not is_proxy(bystander.pid) and not is_proxy(os.getpid())   # what `vre down` asks too
