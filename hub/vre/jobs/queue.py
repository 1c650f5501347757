"""The admission rule, free of I/O: which queued jobs of a project may start now.

Fair order: the next job is always one of the member who has the fewest jobs running (counting
those admitted in this round), the earliest submitted among theirs first. A job that does not fit
what is left of the quota (slots, CPUs, memory, GPUs) or of the host's free GPUs is passed over,
not waited for: CPU jobs pass GPU jobs that wait for a GPU. Nothing is ever dropped.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Quota:
    slots: int
    cpu: float
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Ask:
    """What one job holds while it runs."""
    id: int
    owner: int
    cpu: float
    mem_mb: int
    gpus: int

    @classmethod
    def of(cls, job) -> "Ask":
        """What a job record (``vre.db.Job``) holds while it runs; its owner is its account."""
        return cls(job.id, job.account_id, job.cpu, job.mem_mb, job.gpus)


def _served(queued: list[Ask], running: list[Ask]) -> Iterator[Ask]:
    """The queue in the order it is served, lazily: O(n log n) for the whole queue, and only
    O(n + k log m) for the first k of m members' jobs (admission stops once the slots are full).

    At each step the next job is the member's with the fewest jobs running or already served,
    earliest id first; a member's candidate is always their own earliest job, so a heap of one
    (load, earliest id) entry per member gives the same order as comparing every job."""
    load: dict[int, int] = {}
    for job in running:
        load[job.owner] = load.get(job.owner, 0) + 1
    mine: dict[int, list[Ask]] = {}
    for job in sorted(queued, key=lambda j: j.id, reverse=True):  # each member's list: latest first
        mine.setdefault(job.owner, []).append(job)
    heap = [(load.get(owner, 0), jobs[-1].id, owner) for owner, jobs in mine.items()]
    heapq.heapify(heap)
    while heap:
        n, _, owner = heapq.heappop(heap)
        jobs = mine[owner]
        yield jobs.pop()
        if jobs:
            heapq.heappush(heap, (n + 1, jobs[-1].id, owner))


def fair_order(queued: list[Ask], running: list[Ask]) -> list[Ask]:
    """The queue as it will be served (positions shown to users come from this order)."""
    return list(_served(queued, running))


def admit(queued: list[Ask], running: list[Ask], quota: Quota, free_gpus: int) -> list[Ask]:
    """Jobs to start now, in order."""
    slots = quota.slots - len(running)
    cpu = quota.cpu - sum(j.cpu for j in running)
    mem = quota.mem_mb - sum(j.mem_mb for j in running)
    gpus = min(quota.gpus - sum(j.gpus for j in running), free_gpus)
    chosen: list[Ask] = []
    if slots <= 0:
        return chosen
    for job in _served(queued, running):
        if job.cpu <= cpu + 1e-9 and job.mem_mb <= mem and job.gpus <= gpus:
            chosen.append(job)
            slots, cpu, mem, gpus = slots - 1, cpu - job.cpu, mem - job.mem_mb, gpus - job.gpus
            if slots <= 0:
                break
    return chosen
