"""Processes a batch job leaves running on its worker, ended when the job ends.

A worker serves one job after another, perhaps of other members of the project, and the host
records a worker's dataset reads under the job it serves at the time. A process the job left
behind (a shell's ``cmd &``, a daemon that forked twice into a session of its own) would go on
reading under the next job's name. Killing the job's process group catches the first kind; the
second escapes any group, so the worker makes itself its children's subreaper
(``PR_SET_CHILD_SUBREAPER``): whatever a job starts stays below the worker however it forks,
and is found there once the job ended. A Dask worker started without a nanny has no process
of its own below it: everything there is some job's (or a task's sent through the scheduler).

This runs with the researcher's privileges, so it stops accidents, not a member bent on it: a
job can reach its pool's other workers through the pool's scheduler anyway. That limit is in
docs/architecture.md.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36
#: Seconds the processes a job left may take to end once killed (one in uninterruptible sleep on
#: a hung mount may take longer: then the worker is spent, ``end_leftovers``).
GRACE_S = 5.0
_adopted = False


def adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (once). Refused (a seccomp profile
    without ``prctl``): OSError, and the job fails saying so rather than run unswept."""
    global _adopted
    if not _adopted:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "the worker cannot adopt what its jobs leave (prctl)")
        _adopted = True


def _table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, start in clock ticks since boot, state, command name) of every process
    this one can see."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue   # gone meanwhile
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(rest[1]), int(rest[19]), rest[0], name)
    return out


def _below(root: int, table: dict[int, tuple[int, int, str, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def end_leftovers(grace: float = GRACE_S, *, unreaped: frozenset[int] = frozenset()) -> tuple[list[str], list[str]]:
    """SIGKILL every process below this one and reap those that became ours, never blocking on
    one (a process stuck in the kernel, or a zombie leader whose threads run on, must not hang
    the worker); only while no job runs here. ``unreaped``: children the caller reaps itself (a
    ``Popen`` it still waits for; dead, they count as gone). Returns (``"pid name"`` of each
    process killed while it ran, of each still there after ``grace``)."""
    me, killed, signalled, deadline = os.getpid(), {}, set(), time.monotonic() + grace
    while True:
        table = _table()
        left = [p for p in _below(me, table) if not (p in unreaped and table[p][2] == "Z")]
        for pid in left:
            zombie = table[pid][2] == "Z"
            if pid not in signalled or not zombie:   # once even a zombie: a leader's threads may run on
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                except PermissionError:   # not ours to kill (never so in a sandbox): it stays, and says so
                    continue
                signalled.add(pid)
                if not zombie:   # what was still running
                    killed.setdefault(pid, f"{pid} {table[pid][3]}")
        for pid in left:
            if table[pid][0] == me and pid not in unreaped:   # ours now (orphaned, or killed here): reaped
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if not left:
            return list(killed.values()), []
        if time.monotonic() > deadline:
            return list(killed.values()), [f"{p} {table[p][3]}" for p in left]
        time.sleep(0.01)
