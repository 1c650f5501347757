"""The hub's managed services (the audit sealer, the job engine): one per instance, and none that
outlives its hub.

JupyterHub starts, stops and restarts its managed services, but a hub killed with SIGKILL stops
nothing: its services would run on beside the next hub's. So each service

- asks the kernel for SIGTERM when its hub dies (``die_with_hub``), and
- holds its instance's lock (``take_over``), stopping an older holder that still runs (one that
  was started before this protection, or by hand).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_hub() -> None:
    """SIGTERM to this process when the hub that started it dies, if a hub started it (as a managed
    service, the hub names itself in ``VRE_HUB_PID``); run by hand, it stays.

    The check after ``prctl`` compares with the hub's pid, not with 1: a hub that died before we
    asked leaves us with the nearest subreaper as parent, which need not be init."""
    hub = hub_pid()
    if hub is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != hub:  # the hub died before we asked: no signal will come
        raise SystemExit("the hub that started this service is gone")


def hub_pid() -> int | None:
    """The pid of the hub that runs this process as a managed service, or None when run by hand."""
    value = os.environ.get("VRE_HUB_PID", "")
    return int(value) if value.isdigit() and os.environ.get("JUPYTERHUB_SERVICE_NAME") else None


def hub_gone() -> bool:
    """Whether the hub that started this managed service has died (a second check beside the
    death signal, for loops that wake anyway)."""
    hub = hub_pid()
    return hub is not None and os.getppid() != hub


def take_over(path: Path, name: str, log: logging.Logger, *, patience: float = 10.0) -> IO:
    """Hold the lock at ``path`` (one ``name`` per instance), stopping an older holder first.
    Returns the open lock file: keep it open for as long as the lock must be held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a+")
    deadline = time.monotonic() + patience
    signalled = set()
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip()
            if pid.isdigit() and int(pid) != os.getpid() and pid not in signalled:
                log.warning("stopping an older %s (pid %s) of this instance", name, pid)
                signalled.add(pid)
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit(f"another {name} holds {path} and does not stop")
            time.sleep(0.1)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock
