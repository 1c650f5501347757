"""What sessions and batch jobs use now, for the Users admin page: CPU and memory from their
cgroups on this host (``backends.cgroups.SessionCgroup.usage``), GPUs from the allocator's leases
(``vre.gpus``). Where the backend runs them elsewhere (docker, kubernetes) CPU and memory are
None, shown as "unknown": no figure is made up."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import db as vdb
from . import gpus
from .backends.cgroups import CgroupError, SessionCgroup
from .settings import Settings

#: CPU use is CPU time over this many seconds (one wait for all cgroups sampled together).
WINDOW = 0.5


@dataclass(frozen=True)
class Use:
    cpu: float | None        # CPUs busy now (over WINDOW)
    cpu_limit: float | None
    mem_mb: float | None
    mem_limit_mb: float | None


UNKNOWN = Use(None, None, None, None)


def session_id(user: str, server: str) -> str:
    """The session's id (names its cgroup and its GPU lease): ``vre.plan.build_plan``'s rule."""
    return f"{user}-{server}"


def sample(settings: Settings, cgroups: dict[str, list[str]]) -> dict[str, Use]:
    """``key -> cgroup names`` (a cluster job has several workers) to what they use together now.
    A key none of whose cgroups exists is ``UNKNOWN``."""
    try:
        groups = {key: [SessionCgroup(n, settings.instance) for n in names] for key, names in cgroups.items()}
    except CgroupError:  # no cgroup hierarchy here at all
        return {key: UNKNOWN for key in cgroups}
    first = {key: [cg.usage() for cg in cgs] for key, cgs in groups.items()}
    if not any(u for us in first.values() for u in us):
        return {key: UNKNOWN for key in cgroups}
    start = time.monotonic()
    time.sleep(WINDOW)
    second = {key: [cg.usage() for cg in cgs] for key, cgs in groups.items()}
    elapsed = time.monotonic() - start
    result = {}
    for key in cgroups:
        pairs = [(a, b) for a, b in zip(first[key], second[key]) if a and b]
        if not pairs:
            result[key] = UNKNOWN
            continue
        limits = [b.cpu_limit for _, b in pairs]
        mem_limits = [b.mem_limit for _, b in pairs]
        result[key] = Use(
            cpu=max(0.0, sum(b.cpu_seconds - a.cpu_seconds for a, b in pairs) / elapsed),
            cpu_limit=None if None in limits else sum(limits),
            mem_mb=sum(b.mem_bytes for _, b in pairs) / 2**20,
            mem_limit_mb=None if None in mem_limits else sum(mem_limits) / 2**20)
    return result


def sessions_use(settings: Settings, running: dict[str, list[str]]) -> dict[tuple[str, str], Use]:
    """``user -> server names`` to ``(user, server) -> Use``; CPU and memory on the sandbox backend
    only (a docker or kubernetes session's cgroup is not at the sandbox's path)."""
    keys = [(user, server) for user, servers in running.items() for server in servers]
    if settings.backend != "sandbox":
        return {key: UNKNOWN for key in keys}
    used = sample(settings, {key: [session_id(*key)] for key in keys})
    return {key: used[key] for key in keys}


def session_gpus(settings: Settings, keys) -> dict[tuple[str, str], tuple[int, ...]]:
    """``(user, server) -> the GPU devices leased to that session`` (every backend)."""
    with vdb.session_scope(settings.vre_db_url) as db:
        held = gpus.leases(db)
    return {key: held.get(f"session:{session_id(*key)}", ()) for key in keys}
