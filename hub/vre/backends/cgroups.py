"""Per-session control groups: memory, CPU and process limits, and a handle on every process.

A sandbox's processes re-parent away from the hub (bubblewrap forks a pid-1 inside), so the
cgroup, not a pid, is what the hub uses to find, limit and stop a session. Supports cgroup v1
(separate controller hierarchies, as on these hosts) and the v2 unified hierarchy.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")
#: cgroup v1's freezer, joined where it is mounted: vre-hostview freezes a run whose dataset reads
#: outpace their recording (``vre.hostview.pause``); on v2 every cgroup has ``cgroup.freeze``
FREEZER = "freezer"
CFS_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    pass


def _v1_mounts() -> dict[str, Path]:
    """controller -> mount point of its v1 hierarchy (from /proc/self/mounts)."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mnt, fstype, opts, *_ = line.split()
        if fstype == "cgroup":
            for opt in opts.split(","):
                if opt in CONTROLLERS or opt == FREEZER:
                    found[opt] = Path(mnt)
    return found


@dataclass(frozen=True)
class Usage:
    """What a cgroup uses now, and its limits (None: unlimited)."""

    cpu_seconds: float  # CPU time so far: the cgroup's, or its live processes' (v1 without cpuacct beside cpu)
    mem_bytes: int
    cpu_limit: float | None  # CPUs
    mem_limit: int | None


class SessionCgroup:
    """The cgroup(s) of one session, named ``<parent>/<name>`` under each controller (the parent
    is the installation's ``instance`` name)."""

    def __init__(self, name: str, parent: str = "vre"):
        self.name = name
        mounts = _v1_mounts()
        if all(c in mounts for c in CONTROLLERS):
            self.version = 1
            self.dirs = {c: mounts[c] / parent / name for c in (*CONTROLLERS, FREEZER) if c in mounts}
        elif (CGROUP_ROOT / "cgroup.controllers").exists():
            self.version = 2
            self._parent = CGROUP_ROOT / parent
            self.dirs = {c: self._parent / name for c in CONTROLLERS}
        else:
            raise CgroupError(
                "no usable cgroup hierarchy: need v1 memory, cpu and pids controllers or cgroup v2 "
                "at /sys/fs/cgroup (the hub must run as root)"
            )

    @property
    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def create(self, *, cpu: float, mem_mb: int, pids_max: int) -> None:
        if self.version == 2:
            self._enable_v2_controllers()
        for d in self._unique_dirs:
            d.mkdir(parents=True, exist_ok=True)
        mem = mem_mb * 1024 * 1024
        quota = max(1000, int(cpu * CFS_PERIOD_US))
        if self.version == 1:
            self._write("memory", "memory.limit_in_bytes", mem)
            memsw = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no escaping the limit into swap
                memsw.write_text(str(mem))
            self._write("cpu", "cpu.cfs_period_us", CFS_PERIOD_US)
            self._write("cpu", "cpu.cfs_quota_us", quota)
            self._write("pids", "pids.max", pids_max)
        else:
            self._write("memory", "memory.max", mem)
            swap = self.dirs["memory"] / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            self._write("cpu", "cpu.max", f"{quota} {CFS_PERIOD_US}")
            self._write("pids", "pids.max", pids_max)

    def _enable_v2_controllers(self) -> None:
        self._parent.mkdir(exist_ok=True)
        for d in (CGROUP_ROOT, self._parent):
            (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))

    def _write(self, controller: str, file: str, value) -> None:
        try:
            (self.dirs[controller] / file).write_text(str(value))
        except OSError as e:
            raise CgroupError(f"cannot set {file} for session {self.name}: {e}") from e

    def join(self) -> None:
        """Move the calling process into this cgroup (run in the child before exec)."""
        pid = str(os.getpid())
        for d in self._unique_dirs:
            (d / "cgroup.procs").write_text(pid)

    def exists(self) -> bool:
        return self.dirs["pids"].is_dir()

    def pids(self) -> list[int]:
        try:
            text = (self.dirs["pids"] / "cgroup.procs").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return []
        return [int(p) for p in text.split()]

    def signal_all(self, sig: int) -> int:
        sent = 0
        for pid in self.pids():
            try:
                os.kill(pid, sig)
                sent += 1
            except ProcessLookupError:
                pass
        return sent

    def thaw(self) -> None:
        """Undo a freeze by vre-hostview: a frozen task on cgroup v1 dies only once thawed."""
        state = (self.dirs[FREEZER] / "freezer.state") if self.version == 1 and FREEZER in self.dirs \
            else self.dirs["pids"] / "cgroup.freeze"
        try:
            freeze(state, False)
        except OSError:   # no such cgroup (any more), or no freezer on this host
            pass

    def kill_all(self, grace: float = 5.0) -> None:
        """SIGTERM everything, wait up to ``grace`` seconds, then SIGKILL what remains."""
        self.thaw()
        if self.signal_all(signal.SIGTERM):
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        for _ in range(100):
            if not self.signal_all(signal.SIGKILL):
                break
            self.thaw()   # in case vre-hostview froze it meanwhile
            time.sleep(0.02)

    def remove(self) -> None:
        """Remove the (empty) cgroup directories. Retries briefly: exiting tasks linger."""
        for d in self._unique_dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        return _oom_kills(self.dirs["memory"], self.version)

    def usage(self) -> Usage | None:
        """CPU time, memory in use and the limits; None when the cgroup does not exist (any more)."""
        try:
            if self.version == 2:
                cpu_s = _keyed(self._read("cpu", "cpu.stat"))["usage_usec"] / 1e6
                mem = int(self._read("memory", "memory.current"))
                mem_max = self._read("memory", "memory.max")
                quota, period = self._read("cpu", "cpu.max").split()
                cpu_max = None if quota == "max" else int(quota) / int(period)
            else:
                acct = self.dirs["cpu"] / "cpuacct.usage"  # only where cpuacct shares cpu's hierarchy
                cpu_s = int(acct.read_text()) / 1e9 if acct.exists() else _process_cpu_seconds(self.pids())
                mem = int(self._read("memory", "memory.usage_in_bytes"))
                mem_max = self._read("memory", "memory.limit_in_bytes")
                quota = int(self._read("cpu", "cpu.cfs_quota_us"))
                cpu_max = None if quota < 0 else quota / int(self._read("cpu", "cpu.cfs_period_us"))
        except (FileNotFoundError, ProcessLookupError, KeyError):
            return None
        # v1 says "no limit" with a huge number (page-rounded LONG_MAX)
        mem_limit = None if mem_max == "max" or int(mem_max) >= 1 << 60 else int(mem_max)
        return Usage(cpu_s, mem, cpu_max, mem_limit)

    def _read(self, controller: str, file: str) -> str:
        return (self.dirs[controller] / file).read_text().strip()


def freeze(state: Path, frozen: bool) -> None:
    """Freeze or thaw a cgroup through its v1 ``freezer.state`` or v2 ``cgroup.freeze`` (raises
    OSError when the cgroup went away)."""
    if state.name == "freezer.state":
        state.write_text("FROZEN" if frozen else "THAWED")
    else:
        state.write_text("1" if frozen else "0")


def _oom_kills(memory_dir: Path, version: int) -> int:
    try:
        text = (memory_dir / ("memory.oom_control" if version == 1 else "memory.events")).read_text()
    except OSError:
        return 0
    return _keyed(text).get("oom_kill", 0)


def cgroup_paths(pid: int | str) -> dict[str, str]:
    """controller (``""`` for the v2 hierarchy) -> the cgroup path of process ``pid`` (or
    ``"self"``) in it, from ``/proc/<pid>/cgroup``."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def process_oom_kills(pid: int) -> int:
    """The OOM kills of the memory cgroup process ``pid`` is in (a container's, whose cgroup the
    engine names): v1's memory controller where it has one (hybrid hosts), else v2's; 0 when the
    process is gone."""
    try:
        paths = cgroup_paths(pid) if pid > 0 else {}
    except (OSError, ValueError):
        return 0
    if "memory" in paths:
        mount = _v1_mounts().get("memory")
        return _oom_kills(mount / paths["memory"].lstrip("/"), 1) if mount else 0
    if "" in paths:
        return _oom_kills(CGROUP_ROOT / paths[""].lstrip("/"), 2)
    return 0


def _keyed(text: str) -> dict[str, int]:
    return {k: int(v) for k, _, v in (line.partition(" ") for line in text.splitlines()) if v}


def _process_cpu_seconds(pids: list[int]) -> float:
    """User and system time of the live processes ``pids`` (from /proc/<pid>/stat)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / ticks
