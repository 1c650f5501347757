"""The admission rule, free of I/O: which queued jobs of a project may start now.

Fair order: the next job is always one of the member who has the fewest jobs running (counting
those admitted in this round), the earliest submitted among theirs first. A job that does not fit
what is left of the quota (slots, CPUs, memory, GPUs) or of the host's free GPUs is passed over,
not waited for: CPU jobs pass GPU jobs that wait for a GPU. Nothing is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def fair_order(queued: list[Ask], running: list[Ask]) -> list[Ask]:
    """The queue as it will be served (positions shown to users come from this order)."""
    load: dict[int, int] = {}
    for job in running:
        load[job.owner] = load.get(job.owner, 0) + 1
    waiting = sorted(queued, key=lambda j: j.id)
    order = []
    while waiting:
        nxt = min(waiting, key=lambda j: (load.get(j.owner, 0), j.id))
        order.append(nxt)
        waiting.remove(nxt)
        load[nxt.owner] = load.get(nxt.owner, 0) + 1
    return order


def admit(queued: list[Ask], running: list[Ask], quota: Quota, free_gpus: int) -> list[Ask]:
    """Jobs to start now, in order."""
    slots = quota.slots - len(running)
    cpu = quota.cpu - sum(j.cpu for j in running)
    mem = quota.mem_mb - sum(j.mem_mb for j in running)
    gpus = min(quota.gpus - sum(j.gpus for j in running), free_gpus)
    chosen: list[Ask] = []
    for job in fair_order(queued, running):
        if slots <= 0:
            break
        if job.cpu <= cpu + 1e-9 and job.mem_mb <= mem and job.gpus <= gpus:
            chosen.append(job)
            slots, cpu, mem, gpus = slots - 1, cpu - job.cpu, mem - job.mem_mb, gpus - job.gpus
    return chosen
