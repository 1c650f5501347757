"""Where a benchmark's CPU went: the whole machine's, and each long-lived process's by role."""

from __future__ import annotations

import collections
import os
import re
import resource
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat (idle, iowait and a
    VM's steal are not this machine's work)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4] - fields[7]) / TICKS, sum(fields) / TICKS


def own_cpu() -> float:
    """CPU seconds of this process (the benchmark's own clients) so far."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def process_use(pid: int, *, children: bool = False) -> tuple[float, int]:
    """(CPU seconds so far, resident bytes now) of process ``pid`` (``children``: with its
    waited-for children's CPU); OSError once it has gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = sum(int(v) for v in fields[11:15 if children else 13])
    return cpu / TICKS, int(fields[21]) * PAGE


def role(argv: list[bytes]) -> str:
    """A process's role from its command line: the module it runs (``-m x``), else its program."""
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    for word in words[:3]:   # an interpreter's script: the script's name
        if not word.startswith("-") and not os.path.basename(word).startswith("python"):
            return os.path.basename(word)
    return os.path.basename(words[0]) if words else "?"


def cpu_by_role(needle: bytes, instance: str = "") -> dict[tuple[str, int], float]:
    """(role, pid) -> CPU seconds so far, its waited-for children included, of every process
    whose command line or environment holds ``needle`` (a hub's directory), and of those in a
    sandbox cgroup of ``instance`` (role: the sandbox's name, its number dropped)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            groups = dict(line.split(":", 2)[1:] for line in (proc / "cgroup").read_text().splitlines())
            group = groups.get("pids", groups.get(""))   # cgroup v1's pids hierarchy, or v2's one
            if instance and group and group.startswith(f"/{instance}/"):
                who = "sandbox " + re.sub(r"-\d+$", "", group.rsplit("/", 1)[1])
            else:
                argv = (proc / "cmdline").read_bytes()
                if needle not in argv + (proc / "environ").read_bytes():
                    continue
                who = role(argv.split(b"\0"))
            out[(who, int(proc.name))] = process_use(int(proc.name), children=True)[0]
        except (OSError, IndexError):
            continue
    return out


def spent(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two ``cpu_by_role`` snapshots (a process that was not yet
    running at the first counts from its start). A counted process that ended between them is
    in its parent's count, with its whole life's CPU if it started before the first: the
    figures hold for long-lived processes (the hub's services, a pool's warm workers)."""
    out: dict[str, float] = collections.Counter()
    for key, secs in after.items():
        out[key[0]] += secs - before.get(key, 0.0)
    return out
