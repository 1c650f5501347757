"""Kernel launcher of the VRE kernelspecs: thread pools sized to the session's CPU grant, then ipykernel.

``kernels/python3-imaging/kernel.json`` runs ``python -m vre_session.kernel_launch -f {connection_file}``.
Before anything numerical is imported it sets OMP, MKL, OpenBLAS, NumExpr, vecLib and torch thread
counts to the grant, so a 2-CPU session does not start 64 BLAS threads on a 64-core host and thrash
in its CPU quota. The grant is read from, in order:

1. the session manifest (``$VRE_SESSION``, default ``/etc/vre/session.json``), key ``cpu``;
2. the cgroup CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``);
3. the CPUs this process may run on (``sched_getaffinity``).

Thread counts are ``ceil(cpu)``, at least 1 and at most the CPUs available. A thread variable
already in the environment (the plan sets them) is kept when it is lower, and lowered to the grant
when it is higher. PyTorch does not read ``TORCH_NUM_THREADS`` itself: when the kernel imports
``torch``, a post-import hook calls ``torch.set_num_threads`` (and the inter-op pool) with it.

``python -m vre_session.kernel_launch --print`` prints the grant and the variables as JSON and exits
(for tests and for checking an image). The launcher only uses the standard library; it then runs
ipykernel in this same process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import math
import os
import sys
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "NUMEXPR_MAX_THREADS", "VECLIB_MAXIMUM_THREADS", "TORCH_NUM_THREADS")
DEFAULT_MANIFEST = "/etc/vre/session.json"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def manifest_cpu(path: str | None = None) -> float | None:
    """The ``cpu`` of the session manifest, or None when there is none (or it is unusable)."""
    path = path or os.environ.get("VRE_SESSION") or DEFAULT_MANIFEST
    try:
        cpu = float(json.loads(Path(path).read_text())["cpu"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cpu if math.isfinite(cpu) and cpu > 0 else None


def _own_cgroup_dirs(controller: str) -> list[Path]:
    """Where this process's cgroup (v1 ``controller``) may be mounted: its own path, then the root
    (inside a container with a private cgroup namespace the own cgroup is the root)."""
    dirs = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                dirs.append(CGROUP_ROOT / controller / path.lstrip("/"))
    except (OSError, ValueError):
        pass
    dirs.append(CGROUP_ROOT / controller)
    return dirs


def cgroup_cpu() -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for d in _own_cgroup_dirs("cpu"):  # cgroup v1: quota -1 means unlimited
        try:
            quota = int((d / "cpu.cfs_quota_us").read_text())
            period = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
        return None
    return None


def cpu_grant() -> tuple[float, str]:
    """(CPUs granted to this session, where that came from)."""
    cpu = manifest_cpu()
    if cpu is not None:
        return cpu, "manifest"
    cpu = cgroup_cpu()
    if cpu is not None:
        return cpu, "cgroup"
    return float(_available_cpus()), "affinity"


def thread_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The thread variables for this session: the grant, or a lower value already set."""
    environ = os.environ if environ is None else environ
    cpu, _ = cpu_grant()
    threads = max(1, min(math.ceil(cpu), _available_cpus()))
    out = {}
    for var in THREAD_VARS:
        try:
            current = int(environ.get(var, ""))
        except ValueError:
            current = 0
        out[var] = str(current if 0 < current < threads else threads)
    return out


class _TorchThreads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Calls torch.set_num_threads(TORCH_NUM_THREADS) right after ``import torch`` (torch is too
    slow to import eagerly in every kernel)."""

    def __init__(self) -> None:
        self._loader = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch" or self._loader is not None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            n = int(os.environ.get("TORCH_NUM_THREADS", "0"))
            if n > 0:
                module.set_num_threads(n)
                module.set_num_interop_threads(n)
        except Exception:  # never break `import torch` over a thread count
            pass


def configure(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the thread variables in ``environ`` (default: this process) and install the torch hook."""
    target = os.environ if environ is None else environ
    values = thread_env(target)
    target.update(values)
    if environ is None and not any(isinstance(f, _TorchThreads) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchThreads())
    return values


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    values = configure()
    if argv[:1] == ["--print"]:
        cpu, source = cpu_grant()
        print(json.dumps({"cpu": cpu, "source": source, "env": values}, sort_keys=True))
        return
    # As ipykernel_launcher: the working directory leaves sys.path while ipykernel loads (a user's
    # file named like a module must not shadow it); IPython puts it back for the user's code.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    from ipykernel import kernelapp  # after the variables: numpy & co. read them when loaded

    kernelapp.launch_new_instance(argv=argv)


if __name__ == "__main__":
    main()
