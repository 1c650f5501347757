"""Processes a batch job leaves running on its worker, ended when the job ends.

A worker serves one job after another, perhaps of other members of the project, and the host
records a worker's dataset reads under the job it serves at the time. A process the job left
behind (a shell's ``cmd &``, a daemon that forked twice into a session of its own) would go on
reading under the next job's name. Killing the job's process group catches the first kind; the
second escapes any group, so the worker makes itself its children's subreaper
(``PR_SET_CHILD_SUBREAPER``): whatever a job starts stays below the worker however it forks,
and is found there once the job ended.

This runs with the researcher's privileges, so it stops accidents, not a member bent on it: a
job can reach its pool's other workers through the pool's scheduler anyway. That limit is in
docs/architecture.md.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_CHILD_SUBREAPER = 36
#: sweeps at most: a leftover forking as fast as it is killed is killed again, within reason
ROUNDS = 20
_adopting = False


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants (once); False where the kernel refused."""
    global _adopting
    if not _adopting:
        libc = ctypes.CDLL(None, use_errno=True)
        _adopting = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return _adopting


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


def present() -> set[tuple[int, int]]:
    """(pid, start) of every process below this one now: what is not a job's, taken as it starts
    (the start tells a pid used again from the process that had it)."""
    table = _table()
    return {(pid, table[pid][1]) for pid in _below(os.getpid(), table)}


def end_leftovers(before: set[tuple[int, int]]) -> list[str]:
    """SIGKILL every process below this one that was not there ``before`` (``present``), and reap the ones
    that became ours; only while no other job runs here (below this process, a job's orphan
    cannot be told from another's). Returns ``"pid name"`` of each process ended."""
    me, ended = os.getpid(), []
    for _ in range(ROUNDS):
        table = _table()
        victims = [p for p in _below(me, table) if (p, table[p][1]) not in before]
        alive = [p for p in victims if table[p][2] != "Z"]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(f"{pid} {table[pid][3]}")
            except ProcessLookupError:
                pass
        for pid in victims:
            if table[pid][0] == me:
                try:
                    os.waitpid(pid, 0)   # ours now (orphaned, or killed here): never left a zombie
                except ChildProcessError:
                    pass
        if not alive:
            break
    return ended
