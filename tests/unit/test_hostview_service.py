"""The hostview service's requests while a flood's backlog is read.

A batch worker's next job, or a run's end, waits until the kernel's queue was read empty (every
earlier read is counted for whom it was). A flood leaves millions of events queued, read for
seconds: meanwhile the service must answer the others (another project's session being marked at
its launch gate, whose patience is a few seconds). Here the kernel's queue is a stand-in whose
reads take as long as real batches, holding events of no marked mount.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from types import SimpleNamespace

from vre.hostview import service as service_module
from vre.hostview.fanotify import FAN_NOFD, READ_BYTES
from vre.hostview.registry import Marked, Registry, process_start
from vre.hostview.service import Service
from vre.hostview.watcher import Watcher


class Backlog:
    """A queue holding ``batches`` full reads, each taking ``read_s`` (as 2,700 events do)."""

    def __init__(self, batches: int, read_s: float = 0.005):
        self.batches, self.read_s, self.reads = batches, read_s, 0

    def read(self) -> list[tuple[int, int, int]]:
        time.sleep(self.read_s)
        self.reads += 1
        if not self.batches:
            return []
        self.batches -= 1
        return [(0, FAN_NOFD, 0)] * 100

    def queued(self) -> int:
        return self.batches * READ_BYTES

    def close(self) -> None:
        pass


def worker_service(tmp_path, backlog: Backlog) -> Service:
    watcher = Watcher(Registry(tmp_path / "reg"), backlog)
    watcher.marks["lung-worker-1"] = Marked(session="lung-worker-1", user="ann", project="lung", pid=os.getpid(),
                                            pid_start=process_start(os.getpid()), role="worker", job=1)
    return Service(SimpleNamespace(), watcher)


def test_a_workers_next_job_waits_for_a_backlog_while_others_are_answered(tmp_path, monkeypatch):
    """The assignment returns once the backlog (half a second of reading) is read, and a status
    asked meanwhile is answered before it: the backlog is read in steps, the loop free between."""
    monkeypatch.setattr(service_module, "ASSIGN_PATIENCE", 60)   # a loaded machine reads slower
    backlog = Backlog(100)
    service = worker_service(tmp_path, backlog)

    async def scenario():
        assigning = asyncio.create_task(service.answer({"op": "assign", "session": "lung-worker-1", "user": "bob",
                                                        "job": 2}))
        await asyncio.sleep(0.05)
        status = await service.answer({"op": "status"})
        answered_while_reading = not assigning.done()
        return status, answered_while_reading, await assigning

    status, answered_while_reading, assigned = asyncio.run(scenario())
    assert status["ok"] and status["marks"]["lung-worker-1"]["job"] == 1   # not yet the new job's
    assert answered_while_reading, "the status waited for the whole backlog"
    assert assigned == {"ok": True}
    assert backlog.batches == 0 and service.watcher.emptied >= 1
    m = service.watcher.marks["lung-worker-1"]
    assert (m.user, m.job) == ("bob", 2)


def test_a_backlog_beyond_the_patience_of_a_hand_out_leaves_the_worker_on_its_job(tmp_path, monkeypatch):
    """Not read empty within ``ASSIGN_PATIENCE``: ``Behind`` (the engine tries again), the
    worker still counts for its previous job, and the reading goes on."""
    monkeypatch.setattr(service_module, "ASSIGN_PATIENCE", 0.1)
    backlog = Backlog(10_000)
    service = worker_service(tmp_path, backlog)
    answer = asyncio.run(service.answer({"op": "assign", "session": "lung-worker-1", "user": "bob", "job": 2}))
    assert answer["ok"] is False and not answer["unmarked"] and "not read empty" in answer["error"]
    assert (service.watcher.marks["lung-worker-1"].user, service.watcher.marks["lung-worker-1"].job) == ("ann", 1)
    assert 0 < backlog.reads < 10_000
    gone = asyncio.run(service.answer({"op": "assign", "session": "lung-worker-9", "user": "bob", "job": 2}))
    assert gone["ok"] is False and gone["unmarked"]   # a worker hostview does not know: replaced


def test_a_runs_end_reads_its_backlog_first_while_others_are_answered(tmp_path):
    """An unmark summarises the run once what was queued before is read (its mount ids are
    forgotten with it); a status asked meanwhile is answered first."""
    backlog = Backlog(100)
    service = worker_service(tmp_path, backlog)

    async def scenario():
        ending = asyncio.create_task(service.answer({"op": "unmark", "session": "lung-worker-1"}))
        await asyncio.sleep(0.05)
        status = await service.answer({"op": "status"})
        return status, not ending.done(), await ending

    status, answered_while_reading, ended = asyncio.run(scenario())
    assert status["ok"] and "lung-worker-1" in status["marks"] and answered_while_reading
    assert ended == {"ok": True, "opens": 0} and backlog.batches == 0
    assert service.watcher.marks == {}


def test_a_new_run_of_a_name_being_unmarked_is_marked_after_its_predecessors_end(tmp_path):
    """Batch workers' names come back: a new ``lung-worker-1`` marked while its predecessor's
    unmark reads the backlog waits for it, so the predecessor's queued reads stay its own and
    the pending unmark does not forget the newcomer. An assignment to a run being unmarked is
    refused as to an unknown one."""
    backlog = Backlog(100)
    service = worker_service(tmp_path, backlog)
    newcomer = {"op": "mark", "session": "lung-worker-1", "user": "bob", "project": "lung", "pid": os.getpid(),
                "role": "worker", "job": 3, "datasets": []}

    async def scenario():
        ending = asyncio.create_task(service.answer({"op": "unmark", "session": "lung-worker-1"}))
        await asyncio.sleep(0.05)
        marking = asyncio.create_task(service.answer(newcomer))
        assigned = await service.answer({"op": "assign", "session": "lung-worker-1", "user": "bob", "job": 4})
        await asyncio.sleep(0.05)
        waited = not marking.done()
        return await ending, await marking, waited, assigned

    ended, marked, waited, assigned = asyncio.run(scenario())
    assert ended == {"ok": True, "opens": 0} and marked == {"ok": True, "mounts": {}} and waited
    assert assigned["ok"] is False and assigned["unmarked"]
    m = service.watcher.marks["lung-worker-1"]
    assert (m.user, m.job) == ("bob", 3) and service.ending == {}


def test_a_runs_end_the_hub_did_not_announce_never_forgets_a_newcomer_of_its_name(tmp_path):
    """The tick unmarks runs that ended unannounced, one after the other, each after reading the
    backlog; a run of one of those names marked meanwhile (its predecessor ended by another way)
    is not the one the tick ends, and stays marked."""
    backlog = Backlog(100)
    service = worker_service(tmp_path, backlog)
    gone = subprocess.Popen(["true"])
    gone.wait()
    for name in ("lung-worker-1", "lung-worker-2"):
        service.watcher.marks[name] = Marked(session=name, user="ann", project="lung", pid=gone.pid, pid_start=1,
                                             role="worker", job=1)
    newcomer = Marked(session="lung-worker-2", user="bob", project="lung", pid=os.getpid(),
                      pid_start=process_start(os.getpid()), role="worker", job=3)

    async def scenario():
        ticking = asyncio.create_task(service.tick())
        await asyncio.sleep(0.05)   # reading the backlog for lung-worker-1
        service.watcher.marks["lung-worker-2"] = newcomer
        await ticking

    asyncio.run(scenario())
    assert service.watcher.marks == {"lung-worker-2": newcomer}


def test_a_new_run_whose_predecessor_takes_too_long_to_end_is_told_to_start_again(tmp_path, monkeypatch):
    """A predecessor's backlog beyond ``MARK_PATIENCE``: the newcomer is not marked (its launch
    is tried again: ``later``), and the predecessor keeps its marks until its reads are read."""
    monkeypatch.setattr(service_module, "MARK_PATIENCE", 0.1)
    service = worker_service(tmp_path, Backlog(10_000))
    predecessor = service.watcher.marks["lung-worker-1"]
    answer = asyncio.run(service.answer({"op": "mark", "session": "lung-worker-1", "user": "bob", "project": "lung",
                                         "pid": os.getpid(), "role": "worker", "job": 3, "datasets": []}))
    assert answer["ok"] is False and answer["later"] and "start it again" in answer["error"]
    assert service.watcher.marks["lung-worker-1"] is predecessor and service.ending == {}
