"""The batch queue's engine, one look at a time, with a fake executor (no Dask, no sandboxes):
admission per look still serves quotas and fair order, a look's state changes and their audit
records commit together (a failure between them loses neither), what a pool's agent reports is
checked before it is stored and one pool's failure never stops the others, and the lazy fair
order is the same order as the plain one. On SQLite and PostgreSQL."""

import asyncio
import logging
import math
import random
import time
import types

import pytest
from sqlalchemy import select

from vre import db as vdb
from vre import gpus
from vre import projects as P
from vre.accounts import add_account
from vre.audit import open_store
from vre.audit import store as audit_store
from vre.jobs import service
from vre.jobs.engine import STARTING_POOL, Engine
from vre.jobs.executor import ExecutorError, LocalDaskExecutor, SchedulerLost, Worker
from vre.jobs.queue import Ask, Quota, admit, fair_order
from vre.settings import Settings


# --- the lazy fair order is the plain one ------------------------------------------------------
def plain_fair_order(queued, running):
    """The rule as written in vre.jobs.queue's docstring, compared job by job (O(n^2))."""
    load = {}
    for j in running:
        load[j.owner] = load.get(j.owner, 0) + 1
    waiting, order = sorted(queued, key=lambda j: j.id), []
    while waiting:
        nxt = min(waiting, key=lambda j: (load.get(j.owner, 0), j.id))
        order.append(nxt)
        waiting.remove(nxt)
        load[nxt.owner] = load.get(nxt.owner, 0) + 1
    return order


def plain_admit(queued, running, quota, free_gpus):
    slots = quota.slots - len(running)
    cpu = quota.cpu - sum(j.cpu for j in running)
    mem = quota.mem_mb - sum(j.mem_mb for j in running)
    gpus = min(quota.gpus - sum(j.gpus for j in running), free_gpus)
    chosen = []
    for job in plain_fair_order(queued, running):
        if slots <= 0:
            break
        if job.cpu <= cpu + 1e-9 and job.mem_mb <= mem and job.gpus <= gpus:
            chosen.append(job)
            slots, cpu, mem, gpus = slots - 1, cpu - job.cpu, mem - job.mem_mb, gpus - job.gpus
    return chosen


def test_lazy_fair_order_and_admission_match_the_plain_rule():
    rng = random.Random(16)
    for _ in range(300):
        ids = rng.sample(range(1, 500), rng.randint(0, 40))
        queued = [Ask(i, rng.randint(1, 5), rng.choice((0.5, 1, 2)), rng.choice((512, 1024, 4096)),
                      rng.choice((0, 0, 0, 1))) for i in ids]
        rng.shuffle(queued)
        running = [Ask(1000 + k, rng.randint(1, 5), 1, 512, 0) for k in range(rng.randint(0, 3))]
        quota = Quota(rng.randint(0, 8), rng.choice((1, 2, 4, 8)), rng.choice((1024, 4096, 16384)), rng.randint(0, 2))
        free = rng.randint(0, 2)
        assert fair_order(queued, running) == plain_fair_order(queued, running)
        assert admit(queued, running, quota, free) == plain_admit(queued, running, quota, free)


# --- the engine with a fake executor -----------------------------------------------------------
class FakeExecutor:
    """What the engine asks of ``LocalDaskExecutor``, in memory: ``n`` warm workers of one shape
    and an agent whose jobs the test ends."""

    oom_reported_inside = False
    gpu_counts = False

    def __init__(self, n: int, shape=(1.0, 1024, ()), pools=("lung",)):
        self.workers = {f"{p}-worker-{i}": Worker(f"{p}-worker-{i}", p, shape)
                        for p in pools for i in range(1, n + 1)}
        self.agent: dict[int, dict] = {}
        self.submitted: list[int] = []
        self.reports: dict[str, object] = {}  # pool -> what its agent answers instead (an exception: raised)
        self.stall: dict[str, float] = {}      # pool -> seconds its agent takes to answer
        self.asked: list[str] = []
        self.dead: set[str] = set()            # workers that ended
        self.unplaced: dict[str, str] = {}     # worker -> why the cluster has not placed it
        self.dropped: list[tuple[str, int]] = []
        self.started_for: list[tuple[int, str] | None] = []   # the job each new worker was started for

    def scheduler_alive(self, project):
        return True

    def agent_ready(self, project):
        return True

    async def refresh(self):
        pass

    def alive(self, name):
        return name not in self.dead

    async def cancel(self, project, job_id):
        self.dropped.append(("cancel", job_id))
        return True

    def stop_worker(self, name):
        self.workers.pop(name, None)

    idle_worker = LocalDaskExecutor.idle_worker   # the real rule of which warm worker a job may take
    may_serve = LocalDaskExecutor.may_serve

    def placement(self, name):
        return {}

    why_lost = LocalDaskExecutor.why_lost         # nothing outside says why a run ended

    def waiting_for(self, name):
        return self.unplaced.get(name, "")

    def oom_kills(self, name):
        return 0

    async def serve(self, worker, user, job_id):
        pass

    async def submit(self, project, worker, spec):
        self.submitted.append(spec["id"])
        self.agent[spec["id"]] = {"state": "running", "started": time.time(), "result": None, "error": None}

    async def status(self, project):
        self.asked.append(project)
        await asyncio.sleep(self.stall.get(project, 0))
        if project in self.reports:
            answer = self.reports[project]
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return {"jobs": {str(k): dict(v) if isinstance(v, dict) else v for k, v in self.agent.items()}}

    async def forget(self, project, job_id):
        self.dropped.append(("forget", job_id))
        self.agent.pop(job_id, None)

    async def stop_idle(self):
        pass

    async def ensure_scheduler(self, plan):
        pass

    async def start_worker(self, plan, cpu, mem_mb, devices, gpus=None, job=None):
        self.started_for.append(job)
        name = f"{plan.pool}-worker-{len(self.workers) + 1}"
        self.workers[name] = Worker(name, plan.pool, (cpu, mem_mb, tuple(devices)), datasets=plan.datasets,
                                    gpus=len(devices) if gpus is None else gpus)
        return self.workers[name]

    def end(self, job_id: int, code: int = 0) -> None:
        self.agent[job_id].update(state="done", result={"returncode": code, "usage": {"wall_s": 0.1}, "spent": False})


@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url, gpu_devices="none")
    with vdb.session_scope(db_url) as db:
        for name in ("ann", "ben"):
            add_account(db, name, password=f"{name}-password-1")
        P.create_project(db, "lung", "Lung")
        db.flush()
        P.add_member(db, "lung", "ann")
        P.add_member(db, "lung", "ben")
        P.set_profile(db, "lung", "small", cpu=1, memory="2G")
        P.set_job_quota(db, "lung", slots=2, cpu=4, memory="2560M")
    ws = settings.projects_dir / "lung" / "workspace"
    ws.mkdir(parents=True)
    (ws / "train.py").write_text("print(1)\n")
    return settings


def submit(settings, user, cpu=1, mem_mb=1024) -> int:
    with vdb.session_scope(settings.vre_db_url) as db:
        return service.submit(db, settings, user, {"project": "lung", "kind": "script", "target": "project/train.py",
                                                   "cpu": cpu, "mem_mb": mem_mb}).id


def states(settings) -> dict[int, str]:
    with vdb.session_scope(settings.vre_db_url) as db:
        return dict(db.execute(select(vdb.Job.id, vdb.Job.state)).all())


def audited(settings, action: str) -> list[str]:
    return [r["target"] for r in open_store(settings).query(action=action)]


def look(engine: Engine) -> None:
    asyncio.run(engine.tick())
    asyncio.run(asyncio.sleep(0))


def test_one_look_admits_by_quota_and_fair_order_and_records_every_transition(world):
    a1, a2, a3 = submit(world, "ann"), submit(world, "ann"), submit(world, "ann")
    b1 = submit(world, "ben")
    fake = FakeExecutor(3)  # more warm workers than slots: the quota is what limits
    engine = Engine(world, executor=fake)
    look(engine)
    # two slots; ben runs nothing, so his job comes second although it was submitted last
    assert fake.submitted == [a1, b1]
    assert states(world) == {a1: "running", b1: "running", a2: "queued", a3: "queued"}
    look(engine)  # the agent says they started
    assert sorted(audited(world, "job.start")) == sorted([f"job/{a1}", f"job/{b1}"])
    fake.end(a1)
    look(engine)  # a1's end and a2's start in one look
    assert states(world)[a1] == "succeeded" and states(world)[a2] == "running"
    assert fake.submitted == [a1, b1, a2]
    assert audited(world, "job.finish") == [f"job/{a1}"]
    # a job that does not fit what is left of the quota is passed over, not waited for: ben's
    # comes first in fair order (he runs nothing), but 2 GiB do not fit the 1.5 GiB left
    big = submit(world, "ben", cpu=1, mem_mb=2048)
    fake.end(b1)
    look(engine)
    assert states(world)[big] == "queued" and states(world)[a3] == "running"
    with vdb.session_scope(world.vre_db_url) as db:
        assert service.positions(db, 1) == {big: 1}
    assert open_store(world).verify().ok


class Boom(RuntimeError):
    pass


def test_a_failed_audit_write_leaves_the_job_as_it_was_and_nothing_is_lost(world, monkeypatch, caplog):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    look(engine)
    fake.end(job)
    real = audit_store.AuditStore._insert_rows

    def broken(self, cur, rows):
        raise Boom("the audit write failed")
    monkeypatch.setattr(audit_store.AuditStore, "_insert_rows", broken)
    with caplog.at_level(logging.ERROR, logger="vre.jobs"):
        look(engine)  # the failure is the pool's: logged with its name, the look goes on
    assert "pool lung" in caplog.text and "the audit write failed" in caplog.text
    # the end of the job was not committed without its audit record: it is still running, and
    # its worker is still its own (not handed to another job while its end is not recorded)
    assert states(world)[job] == "running" and audited(world, "job.finish") == []
    assert fake.workers["lung-worker-1"].job == job
    monkeypatch.setattr(audit_store.AuditStore, "_insert_rows", real)
    look(engine)  # the next look sees the same end again, and records it once
    assert states(world)[job] == "succeeded" and audited(world, "job.finish") == [f"job/{job}"]
    assert open_store(world).verify().ok


def commit_fails_once(monkeypatch, skip: int = 0) -> list:
    """The next database commit but ``skip`` raises (a crash at the commit); others commit.
    Returns a list that holds an entry once the failure happened."""
    from sqlalchemy.orm import Session

    real, failed, seen = Session.commit, [], []

    def commit(self):
        seen.append(1)
        if not failed and len(seen) > skip:
            failed.append(1)
            raise Boom("crash at the commit")
        return real(self)
    monkeypatch.setattr(Session, "commit", commit)
    return failed


def test_a_failed_commit_after_the_audit_write_stores_neither(world, monkeypatch):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    look(engine)
    fake.end(job)
    commit_fails_once(monkeypatch)
    look(engine)  # contained in the pool's part of the look
    assert states(world)[job] == "running" and audited(world, "job.finish") == []
    assert open_store(world).verify().ok
    look(engine)
    assert states(world)[job] == "succeeded" and audited(world, "job.finish") == [f"job/{job}"]


def test_a_warm_worker_handed_a_job_whose_start_was_not_committed_is_free_again(world, monkeypatch):
    """The look failed before the start was stored: the job is still queued, and its worker is
    free for it (or any job) at the next look, not held by a start that never happened."""
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    calls = commit_fails_once(monkeypatch)
    look(engine)
    assert calls and states(world)[job] == "queued" and fake.workers["lung-worker-1"].job is None
    look(engine)
    assert states(world)[job] == "running" and fake.submitted == [job] and fake.started_for == []


# --- plans cached until what they are built from changes ---------------------------------------
def test_plan_cache_keeps_plans_until_membership_profiles_or_accounts_change(world, monkeypatch):
    import datetime as dt

    from vre import plan as vplan
    from vre.plan import PlanCache, PlanRefused

    cache, url = PlanCache(), world.vre_db_url

    def get(user="ann"):
        with vdb.session_scope(url) as db:
            return cache.get(db, world, user, "lung", "small", role="worker")
    first = get()
    assert get() is first                         # nothing changed: the same plan, not rebuilt
    with vdb.session_scope(url) as db:
        P.set_profile(db, "lung", "small", cpu=0.5, memory="2G")
    assert get() is not first and get().cpu == 0.5   # a profile change is seen at once
    assert get("ben").user == "ben"
    with vdb.session_scope(url) as db:
        P.remove_member(db, "lung", "ben")
    with pytest.raises(PlanRefused, match="not a member"):
        get("ben")                                  # a cached plan never outlives the membership
    with vdb.session_scope(url) as db:
        db.scalar(select(vdb.Account).where(vdb.Account.name == "ann")).disabled = True
    with pytest.raises(PlanRefused, match="disabled"):
        get()
    with vdb.session_scope(url) as db:
        db.scalar(select(vdb.Account).where(vdb.Account.name == "ann")).disabled = False
        db.scalar(select(vdb.Project).where(vdb.Project.slug == "lung")).expires_at = \
            vdb.utcnow() + dt.timedelta(hours=1)
    assert get().user == "ann"
    later = vdb.utcnow() + dt.timedelta(hours=2)   # expiry needs no change: the clock is checked
    monkeypatch.setattr(vplan, "utcnow", lambda: later)
    monkeypatch.setattr(vdb, "utcnow", lambda: later)
    with pytest.raises(PlanRefused, match="expired"):
        get()


def test_a_member_removed_while_their_job_waits_is_not_started_from_a_cached_plan(world):
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    first = submit(world, "ben")
    look(engine)                                   # ben's plan is built and cached
    second = submit(world, "ben")
    with vdb.session_scope(world.vre_db_url) as db:
        P.remove_member(db, "lung", "ben")
    fake.end(first)
    look(engine)
    assert states(world)[second] == "failed" and fake.submitted == [first]
    with vdb.session_scope(world.vre_db_url) as db:
        assert "not a member" in db.get(vdb.Job, second).reason


# --- what a pool's agent reports is untrusted input ----------------------------------------------
# The agent runs in the project's scheduler, which researchers reach with Dask's run_on_scheduler:
# whatever it says must neither break the engine (and with it every other project's queue) nor
# be stored as it came.
def job_row(settings, job_id: int) -> vdb.Job:
    with vdb.session_scope(settings.vre_db_url) as db:
        job = db.get(vdb.Job, job_id)
        db.expunge(job)
        return job


@pytest.mark.parametrize("started", [1e20, math.nan, math.inf, -5, 10 ** 30, "yesterday", True, [1],
                                     "future", "before submission"])
def test_a_start_time_a_pool_reports_is_used_only_if_it_lies_in_the_jobs_life(world, started, caplog):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)  # handed to the worker
    submitted = job_row(world, job).submitted_at
    if started == "future":
        started = time.time() + 86400
    elif started == "before submission":
        started = submitted.timestamp() - 3600
    fake.agent[job]["started"] = started
    before = vdb.utcnow()
    with caplog.at_level(logging.WARNING, logger="vre.jobs"):
        look(engine)
    row = job_row(world, job)
    # the engine's own clock stands in for it, and the start is recorded once, as always
    assert row.state == "running" and before <= row.started_at <= vdb.utcnow()
    assert audited(world, "job.start") == [f"job/{job}"] and "malformed report" in caplog.text
    fake.end(job)
    look(engine)
    assert job_row(world, job).state == "succeeded"


def test_a_believable_start_time_is_kept(world):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    when = (job_row(world, job).submitted_at.timestamp() + time.time()) / 2
    fake.agent[job]["started"] = when
    look(engine)
    assert abs(job_row(world, job).started_at.timestamp() - when) < 1e-3


@pytest.mark.parametrize("result", [
    {"returncode": 2 ** 70}, {"returncode": 256}, {"returncode": -65}, {"returncode": "0"},
    {"returncode": 0.0}, {"returncode": True}, {"returncode": [0]}, {"returncode": "0", "cancelled": "no"},
])
def test_an_exit_code_that_is_not_a_small_int_is_recorded_as_a_malformed_report(world, result):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    fake.agent[job].update(state="done", result=result)
    look(engine)
    row = job_row(world, job)
    assert row.state == "failed" and row.exit_code is None and "malformed" in row.reason
    assert audited(world, "job.fail") == [f"job/{job}"] and open_store(world).verify().ok
    assert fake.workers["lung-worker-1"].job is None  # its worker is free for the next job


@pytest.mark.parametrize("code,state,reason", [(0, "succeeded", ""), (255, "failed", "exited with code 255"),
                                               (-9, "failed", "killed by signal 9"),
                                               (None, "failed", "no exit code")])
def test_exit_codes_in_range_are_recorded(world, code, state, reason):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    fake.end(job, code)
    look(engine)
    row = job_row(world, job)
    assert (row.state, row.exit_code) == (state, code) and reason in row.reason


@pytest.mark.parametrize("report, warm", [
    ({"state": "done", "result": {"returncode": 0, "spent": False}}, True),   # the task ended all it left
    ({"state": "done", "result": {"returncode": 0, "spent": True}}, False),   # some would not end
    ({"state": "done", "result": {"returncode": None, "cancelled": True}}, False),   # the agent's word alone
    ({"state": "error", "error": "task raised"}, False),                      # the task did not get that far
])
def test_a_worker_stays_warm_only_if_its_job_left_nothing_running_on_it(world, report, warm):
    """(What it left would read under its next job's name, perhaps another member's: the worker is
    stopped, and the next job gets a new one.)"""
    first = submit(world, "ann")
    fake = FakeExecutor(1)
    fake.stop_idle = types.MethodType(LocalDaskExecutor.stop_idle, fake)
    fake.strays, fake._strays = types.MethodType(LocalDaskExecutor.strays, fake), set()
    fake._stop_failed, fake._stops_after = {}, 0.0
    fake.settings = world
    engine = Engine(world, executor=fake)
    look(engine)
    assert fake.submitted == [first] and fake.started_for == []   # on the warm worker
    fake.agent[first].update(report)
    look(engine)
    assert job_row(world, first).state in ("succeeded", "failed", "cancelled")
    assert ("lung-worker-1" in fake.workers) is warm
    second = submit(world, "ben")
    look(engine)
    assert fake.submitted == [first, second] and fake.started_for == ([] if warm else [(second, "ben")])


def test_a_worker_the_agent_may_have_handed_a_job_to_takes_no_other(world):
    """A submit that went unanswered is not a no (a busy scheduler reads the post late): the job
    fails to start, and its new worker, which may be running it, serves no later job."""
    job = submit(world, "ann")
    fake = FakeExecutor(0)

    async def unanswered(pool, worker, spec):
        raise TimeoutError("the agent did not answer in 10 s")
    fake.submit = unanswered
    engine = Engine(world, executor=fake)
    look(engine)
    assert job_row(world, job).state == "failed" and fake.workers["lung-worker-1"].spent
    assert fake.idle_worker("lung", fake.workers["lung-worker-1"].shape, ()) is None


def test_the_workers_of_a_lost_scheduler_take_no_other_job_even_if_stopping_them_fails(world):
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    assert fake.workers["lung-worker-1"].job == job

    async def still_terminating(pool):
        raise ExecutorError("the pod of lung-worker-1 is still terminating")
    fake.stop_pool = still_terminating
    fake.reports["lung"] = SchedulerLost("the agent refused the engine's token")
    look(engine)
    assert job_row(world, job).state == "queued" and fake.workers["lung-worker-1"].spent


def test_a_job_whose_worker_ends_before_it_runs_is_queued_again_once_then_fails(world):
    """A worker that ends, or never comes up (a pod whose image cannot start), before its job
    ran: the job is not left pending for ever. It is re-queued once (its pending task dropped by
    the agent), then failed with the reason."""
    job = submit(world, "ann")
    fake = FakeExecutor(2)
    engine = Engine(world, executor=fake)
    look(engine)
    first = job_row(world, job).worker
    fake.agent[job]["state"] = "pending"
    look(engine)
    assert job_row(world, job).state == "running"   # pending on a live worker: it waits
    fake.unplaced[first] = "the cluster has no place for its worker yet: 0/3 nodes have the GPUs"
    look(engine)   # a reason to show while it waits
    assert job_row(world, job).reason == fake.unplaced[first]
    del fake.unplaced[first]
    look(engine)
    assert job_row(world, job).reason == ""
    fake.dead.add(first)
    look(engine)   # re-queued, and started again in the same look on the other warm worker
    row = job_row(world, job)
    assert row.state == "running" and row.worker != first and row.attempts == 2, (row.state, row.reason)
    assert fake.dropped[:2] == [("cancel", job), ("forget", job)] and first not in fake.workers
    assert audited(world, "job.requeue") == [f"job/{job}"]
    second = row.worker
    fake.agent[job]["state"] = "pending"
    fake.dead.add(second)
    look(engine)
    row = job_row(world, job)
    assert row.state == "failed" and "worker ended before the job started" in row.reason


def test_a_cluster_whose_worker_hostview_cannot_mark_yet_waits_in_the_queue(world):
    """hostview restarting, or behind a flood's backlog (``Busy``), while a cluster job starts its
    workers: as for a batch job, not the job's fault. It waits in the queue, uncounted, the
    workers started so far free again, and starts once hostview marks again."""
    from vre.jobs.executor import RecorderUnavailable

    with vdb.session_scope(world.vre_db_url) as db:
        job = service.submit(db, world, "ann", {"project": "lung", "kind": "cluster", "params": {"workers": 2},
                                                "cpu": 0.5, "mem_mb": 512}).id
    fake = FakeExecutor(0)
    start_worker, refused = fake.start_worker, []

    async def second_refused(plan, *args, **kw):
        if len(fake.workers) == 1 and not refused:
            refused.append(True)
            raise RecorderUnavailable("vre-hostview refused to mark it: an earlier run of its name is still "
                                      "being recorded")
        return await start_worker(plan, *args, **kw)
    fake.start_worker = second_refused
    engine = Engine(world, executor=fake)
    look(engine)
    row = job_row(world, job)
    assert (row.state, row.attempts, row.worker) == ("queued", 0, ""), (row.state, row.reason)
    assert row.reason.startswith("waiting: vre-hostview refused to mark it")
    # the worker it started is free and stopped once idle (a cluster never takes a warm worker:
    # kept, it would hold the pods' quota its next start needs)
    ((first, worker),) = fake.workers.items()
    assert worker.job is None and worker.spent
    assert not audited(world, "job.fail")
    fake.workers.pop(first)   # what stop_idle does with it
    look(engine)
    row = job_row(world, job)
    assert (row.state, row.attempts, len(row.worker.split(","))) == ("running", 1, 2), (row.state, row.reason)
    assert audited(world, "job.start") == [f"job/{job}"]


def test_a_cluster_stored_as_running_without_workers_waits_again_and_its_orphans_stop(world, monkeypatch, caplog):
    """The look that started a cluster's workers failed after (rolled back): the job is stored as
    running with no worker, and the workers it started are known to the engine alone. A later
    look stops them (no other job's worker) and the job waits in the queue, uncounted, then
    starts (it failed before: "its workers ended"). While they cannot be stopped (the container
    engine away), the job stays as it is and the project's looks go on."""
    batch = submit(world, "ben")
    fake = FakeExecutor(0)
    stopped, refuse = [], [ExecutorError("the container engine does not answer")]

    def stop_worker(name):
        if refuse:
            raise refuse.pop()
        stopped.append(name)
        fake.workers.pop(name, None)
    fake.stop_worker = stop_worker
    engine = Engine(world, executor=fake)
    look(engine)
    batch_worker = job_row(world, batch).worker
    with vdb.session_scope(world.vre_db_url) as db:
        job = service.submit(db, world, "ann", {"project": "lung", "kind": "cluster", "params": {"workers": 2},
                                                "cpu": 0.5, "mem_mb": 512}).id
    start_cluster, failed = engine.start_cluster, []

    async def then_the_look_fails(db, plan, j, devices):
        await start_cluster(db, plan, j, devices)
        failed.append(commit_fails_once(m))   # the look's next commit fails
    with monkeypatch.context() as m:
        m.setattr(engine, "start_cluster", then_the_look_fails)
        look(engine)
    assert failed and failed[0]   # the look failed at that commit
    row = job_row(world, job)
    assert (row.state, row.worker, row.attempts) == ("running", "", 1)   # its first commit stands
    orphans = sorted(n for n, w in fake.workers.items() if w.job == job)
    assert len(orphans) == 2
    caplog.clear()
    look(engine)   # they cannot be stopped now: the job stays, the look goes on
    assert job_row(world, job).state == "running" and not stopped and sorted(fake.workers)[-2:] == orphans
    assert "could not be stopped now" in caplog.text and "look at project lung failed" not in caplog.text
    look(engine)   # stopped: the job waits again, then starts in the same look
    row = job_row(world, job)
    assert stopped == orphans and (row.state, row.attempts) == ("running", 1), (row.state, row.reason)
    assert all(fake.workers[n].job == job for n in row.worker.split(",")) and not audited(world, "job.fail")
    assert fake.workers[batch_worker].job == batch and job_row(world, batch).state == "running"


def test_where_the_cluster_places_gpus_a_job_holds_a_count_not_this_machines_devices(world):
    """Kubernetes (``gpu_counts``): a GPU job is admitted by the project's GPU quota although the
    engine's machine has none, its worker is started for a count of GPUs and no device is leased,
    and a CPU job never lands on that worker once it is idle."""
    with vdb.session_scope(world.vre_db_url) as db:
        P.set_profile(db, "lung", "gpu", cpu=1, memory="1G", gpus=1)
        P.set_job_quota(db, "lung", gpus=1)
    k8s = world.replace(backend="kubernetes", gpu_devices="none", k8s_unobserved_reads=True)
    with vdb.session_scope(world.vre_db_url) as db:
        gpu_job = service.submit(db, k8s, "ann", {"project": "lung", "kind": "script", "target": "project/train.py",
                                                  "profile": "gpu", "gpus": 1, "cpu": 1, "mem_mb": 1024}).id
    fake = FakeExecutor(0)
    fake.gpu_counts = True
    engine = Engine(k8s, executor=fake)
    look(engine)
    with vdb.session_scope(world.vre_db_url) as db:
        row = db.get(vdb.Job, gpu_job)
        assert row.state == "running" and row.devices == "" and not gpus.leases(db), (row.state, row.reason)
    (worker,) = fake.workers.values()
    assert worker.gpus == 1 and worker.shape == (1, 1024, ())
    fake.end(gpu_job)
    look(engine)
    cpu_job = submit(k8s, "ann", cpu=1, mem_mb=1024)   # the same shape, without a GPU
    look(engine)
    assert job_row(world, cpu_job).worker != worker.name and len(fake.workers) == 2


@pytest.mark.parametrize("inside,reported,reason", [
    (True, 1, "out of memory"), (False, 1, "killed by signal 9"),     # only where the engine cannot look
    (True, 0, "killed by signal 9"), (True, True, "killed by signal 9"), (True, "1", "killed by signal 9"),
])
def test_a_workers_own_oom_count_is_taken_only_where_the_engine_cannot_read_it(world, inside, reported, reason):
    """A pod's memory cgroup is on its node: the worker's task counts its OOM kills around the job
    (the pods executor's ``oom_reported_inside``); elsewhere the engine reads the run's cgroup and
    a worker's count is ignored. A count that is not an int counts for nothing."""
    job = submit(world, "ann")
    fake = FakeExecutor(1)
    fake.oom_reported_inside = inside
    engine = Engine(world, executor=fake)
    look(engine)
    fake.agent[job].update(state="done", result={"returncode": -9, "oom_kills": reported})
    look(engine)
    row = job_row(world, job)
    assert row.state == "failed" and reason in row.reason, row.reason


def test_texts_usage_and_entries_of_the_wrong_type_are_checked(world, caplog):
    a, b = submit(world, "ann"), submit(world, "ben")
    fake = FakeExecutor(2)
    engine = Engine(world, executor=fake)
    look(engine)
    look(engine)
    # an entry that is not an object, or has no known state: the job is neither ended nor started
    fake.agent[a] = ["done", {"returncode": 0}]
    fake.agent[b]["state"] = {"done": True}
    fake.agent[424242] = {"state": "done", "result": {"returncode": 0}}  # no job of this pool: ignored
    with caplog.at_level(logging.WARNING, logger="vre.jobs"):
        look(engine)
    assert states(world) == {a: "running", b: "running"} and "malformed report on job" in caplog.text
    # a task's error is cut to a bounded length; usage keeps only plausible figures
    fake.agent[a] = {"state": "error", "started": time.time(), "error": "x" * 1_000_000, "result": None}
    fake.agent[b] = {"state": "done", "started": time.time(),
                     "result": {"returncode": 0, "usage": {"wall_s": -3, "cpu_s": math.nan, "max_rss_mb": 12,
                                                           "note": "patient 123"}}}
    look(engine)
    ra, rb = job_row(world, a), job_row(world, b)
    assert ra.state == "failed" and ra.reason.startswith("the job's task failed: xxx") and len(ra.reason) < 1100
    assert rb.state == "succeeded" and rb.usage == {"max_rss_mb": 12.0}
    assert open_store(world).verify().ok


# --- one pool's failure never stops the others ---------------------------------------------------
@pytest.fixture
def two_projects(world):
    with vdb.session_scope(world.vre_db_url) as db:
        P.create_project(db, "heart", "Heart")
        db.flush()
        P.add_member(db, "heart", "ann")
        P.set_profile(db, "heart", "small", cpu=1, memory="2G")
        P.set_job_quota(db, "heart", slots=2, cpu=4, memory="2560M")
    ws = world.projects_dir / "heart" / "workspace"
    ws.mkdir(parents=True)
    (ws / "train.py").write_text("print(1)\n")
    return world


def submit_to(settings, project: str) -> int:
    with vdb.session_scope(settings.vre_db_url) as db:
        return service.submit(db, settings, "ann", {"project": project, "kind": "script", "target": "project/train.py",
                                                    "cpu": 1, "mem_mb": 1024}).id


@pytest.mark.parametrize("failure", [
    RuntimeError("the agent broke"),                                   # the status read itself raises
    {"jobs": "nonsense"}, "nonsense", None,                            # a report of the wrong shape
])
def test_a_pool_that_fails_does_not_stop_the_other_projects(two_projects, failure, caplog):
    world = two_projects
    fake = FakeExecutor(2, pools=("lung", "heart"))
    engine = Engine(world, executor=fake)
    for broken, served in (("lung", "heart"), ("heart", "lung")):  # whichever the look reaches first
        running, waiting = submit_to(world, broken), submit_to(world, served)
        look(engine)
        look(engine)
        assert states(world)[running] == "running" and states(world)[waiting] == "running"
        queued = submit_to(world, broken)  # a free slot in the broken project: it waits for its pool
        fake.reports[broken] = failure
        fake.end(waiting)
        fake.end(running)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vre.jobs"):
            look(engine)
            again = submit_to(world, served)
            look(engine)  # and in later looks
        assert f"pool {broken}" in caplog.text
        assert states(world)[waiting] == "succeeded" and states(world)[again] == "running"
        assert states(world)[running] == "running" and states(world)[queued] == "queued"
        assert queued not in fake.submitted
        del fake.reports[broken]  # the pool answers again: its end is recorded, its queue served
        look(engine)
        assert states(world)[running] == "succeeded" and states(world)[queued] == "running"
        fake.end(again)
        fake.end(queued)
        look(engine)
    assert open_store(world).verify().ok


def test_a_report_that_would_fail_the_commit_fails_only_its_pool(two_projects, monkeypatch, caplog):
    """Even a failure the checks do not foresee (here: any error while a job of lung is followed)
    is contained in that pool's part of the look."""
    world = two_projects
    fake = FakeExecutor(1, pools=("lung", "heart"))
    engine = Engine(world, executor=fake)
    lung, heart = submit_to(world, "lung"), submit_to(world, "heart")
    look(engine)
    look(engine)
    real = Engine.finish_from_result

    def broken(self, db, job, result):
        if job.project.slug == "lung":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(self, db, job, result)
    monkeypatch.setattr(Engine, "finish_from_result", broken)
    fake.end(lung)
    fake.end(heart)
    with caplog.at_level(logging.ERROR, logger="vre.jobs"):
        look(engine)
    assert "pool lung" in caplog.text
    assert states(world) == {lung: "running", heart: "succeeded"}
    assert fake.workers["lung-worker-1"].job == lung


async def test_an_agent_answer_is_read_only_up_to_a_bound(tmp_path, monkeypatch):
    """An agent that answers without end cannot fill the engine's memory."""
    from vre.jobs import executor

    async def endless(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        try:
            while True:
                writer.write(b" " * (1 << 16))
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    monkeypatch.setattr(executor, "MAX_REPLY", 1 << 20)
    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(endless, str(path))
    try:
        with pytest.raises(executor.ExecutorError, match="over 1 MiB"):
            await executor._http(path, "GET", "/jobs")
    finally:
        server.close()


def running_in_both(world, monkeypatch, *, wait: float, slow: float = 1.0):
    """A job running in each of lung and heart, the engine's waits for agents set to ``wait`` and
    ``slow``: (world, fake executor, engine, lung's job, heart's job)."""
    from vre.jobs import engine as engine_module

    monkeypatch.setattr(engine_module, "STATUS_WAIT", wait)
    monkeypatch.setattr(engine_module, "SLOW_ANSWER", slow)
    fake = FakeExecutor(2, pools=("lung", "heart"))
    engine = Engine(world, executor=fake)
    lung, heart = submit_to(world, "lung"), submit_to(world, "heart")
    look(engine)
    look(engine)
    return world, fake, engine, lung, heart


def test_a_stalling_agent_does_not_hold_up_the_other_projects(two_projects, monkeypatch, caplog):
    """Researchers reach their pool's agent and can make it stall. The look reads every pool at
    once, waits STATUS_WAIT, and passes the slow pool over for a while: its running job stays
    running (nothing is decided without its report), the other project is served in that look."""
    world, fake, engine, lung, heart = running_in_both(two_projects, monkeypatch, wait=0.3)
    fake.stall["lung"] = 60  # it would hold every look for a minute
    fake.end(lung)
    fake.end(heart)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vre.jobs"):
        look(engine)
    assert time.monotonic() - t0 < 10, "the look waited for the stalling agent"
    assert "pool lung" in caplog.text and "did not answer within 0.3 s" in caplog.text
    assert "passed over for 5 s" in caplog.text
    assert states(world) == {lung: "running", heart: "succeeded"}
    # passed over in the next looks: not even asked, and its queue waits for it
    fake.asked.clear()
    queued, other = submit_to(world, "lung"), submit_to(world, "heart")
    look(engine)
    assert "lung" not in fake.asked and states(world)[queued] == "queued" and states(world)[other] == "running"
    # once the pause is over it is asked again, and answering it is served as before
    del fake.stall["lung"]
    engine._slow["lung"] = (0.0, 1)
    look(engine)
    assert states(world)[lung] == "succeeded" and states(world)[queued] == "running"
    assert "lung" not in engine._slow


def test_an_agent_that_answers_just_in_time_is_passed_over_too(two_projects, monkeypatch):
    """Answering just below the wait must not hold every look either: an answer slower than
    SLOW_ANSWER is used, then the pool is passed over for a while."""
    world, fake, engine, lung, heart = running_in_both(two_projects, monkeypatch, wait=2.0, slow=0.2)
    fake.stall["lung"] = 0.5
    fake.end(lung)
    look(engine)   # the slow answer is used: lung's end is recorded
    assert states(world)[lung] == "succeeded" and "lung" in engine._slow
    fake.asked.clear()
    for _ in range(3):
        look(engine)
    assert "lung" not in fake.asked and fake.asked.count("heart") == 3


class ColdStart(FakeExecutor):
    """Pools whose scheduler is not up: its start waits until the test lets it end (a pod whose
    image is being pulled), or fails."""

    def __init__(self, *a, cold=(), **kw):
        super().__init__(*a, **kw)
        self.cold, self.starts, self.fail = set(cold), [], None
        self.up = asyncio.Event()

    def agent_ready(self, pool):
        return pool not in self.cold

    async def ensure_scheduler(self, plan):
        if plan.pool not in self.cold:
            return
        self.starts.append(plan.pool)
        await self.up.wait()
        if self.fail:
            raise self.fail
        self.cold.discard(plan.pool)


def test_a_scheduler_slow_to_start_does_not_hold_the_other_projects(two_projects):
    """A pool's first job waits in the queue while its scheduler starts in the background (up to
    minutes on a cluster); the engine's looks go on for every other project meanwhile, the start
    is begun once, and the job starts at the first look after it; a start that fails fails the job
    with the reason."""
    world = two_projects
    fake = ColdStart(2, pools=("lung", "heart"), cold=("lung",))

    async def scenario():
        engine = Engine(world, executor=fake)
        lung, heart = submit_to(world, "lung"), submit_to(world, "heart")
        await engine.tick()
        await engine.tick()
        assert states(world) == {lung: "queued", heart: "running"} and fake.starts == ["lung"]
        assert job_row(world, lung).reason == STARTING_POOL
        fake.end(heart)
        await engine.tick()
        assert states(world)[heart] == "succeeded"     # served while lung's scheduler starts
        fake.up.set()
        await asyncio.wait_for(engine._wake.wait(), 5)  # its end wakes the engine
        await engine.tick()
        assert states(world)[lung] == "running" and fake.starts == ["lung"] and lung in fake.submitted
        fake.end(lung)
        await engine.tick()
        # a start that fails: the job that waited for it fails with the reason, the next one tries again
        fake.cold.add("lung")
        fake.up.clear()
        fake.fail = ExecutorError("the scheduler of pool lung did not start")
        failed = submit_to(world, "lung")
        await engine.tick()
        fake.up.set()
        await asyncio.sleep(0)
        await engine.tick()
        row = job_row(world, failed)
        assert row.state == "failed" and row.reason == "could not start: the scheduler of pool lung did not start"

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert open_store(world).verify().ok


# --- jobs as Kubernetes Jobs (k8s_job_runner = "jobs"), with a fake cluster ---------------------
class FakeKube:
    """What the engine asks of ``kubejobs.KubeJobs``: the Jobs it made, and what a look lists."""

    fresh = True

    def __init__(self):
        self.made: list[str] = []
        self.deleted: list[str] = []
        self.listed: dict[str, object] = {}   # worker -> KubeJob (the test sets what the cluster says)
        self.specs: dict[str, dict] = {}

    def takes(self, kind):
        return kind != "cluster"

    worker = staticmethod(lambda job_id, attempt: f"k8s-job/vre-job-{job_id}-{attempt}")

    async def refresh(self):
        return True

    def view(self, worker):
        return self.listed.get(worker)

    def just_made(self, worker):
        return worker in self.made and worker not in self.listed and worker not in self.deleted

    async def start(self, plan, spec, *, job_id, attempt, user, cpu, mem_mb, gpus):
        worker = self.worker(job_id, attempt)
        self.made.append(worker)
        self.specs[worker] = spec
        return worker

    async def delete(self, pool, worker):
        self.deleted.append(worker)
        self.listed.pop(worker, None)


def kube_look(engine: Engine) -> None:
    """One look, and the background deletions of ended Jobs it began."""
    async def run():
        await engine.tick()
        await asyncio.sleep(0.05)
    asyncio.run(run())


def reasons(settings) -> dict[int, str]:
    with vdb.session_scope(settings.vre_db_url) as db:
        return dict(db.execute(select(vdb.Job.id, vdb.Job.reason)).all())


def test_jobs_as_kubernetes_jobs_wait_for_the_queue_run_and_end_as_their_pods_say(world):
    """The project's quota admits first (two slots: the third job waits in the VRE's queue); an
    admitted job holds its slot while its Job waits suspended for Kueue, saying so; its start is
    audited when its pod runs, with the Job and node; how it ended is the kubelet's word where it
    has one (deadline, OOM kill), else the task's report, checked as an agent's is; an ended Job
    is deleted once its end is committed."""
    from vre.jobs.kubejobs import KubeJob
    settings = world.replace(k8s_job_runner="jobs", k8s_kueue_queue="vre-batch")
    a, b, c = submit(settings, "ann"), submit(settings, "ben"), submit(settings, "ann")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    kube_look(engine)
    wa, wb = (f"k8s-job/vre-job-{j}-1" for j in (a, b))
    assert kube.made == [wa, wb] and states(settings) == {a: "running", b: "running", c: "queued"}
    assert kube.specs[wa]["id"] == a and kube.specs[wa]["worker"] == f"vre-job-{a}-1"
    kube.listed = {wa: KubeJob("vre-lung", "vre-job-1-1", suspended=True), wb: KubeJob("vre-lung", "vre-job-2-1")}
    kube_look(engine)
    assert reasons(settings)[a] == "waiting: suspended until the cluster's queue 'vre-batch' admits it (Kueue)"
    assert reasons(settings)[b] == "" and audited(settings, "job.start") == []
    now = vdb.utcnow()
    kube.listed[wa] = KubeJob("vre-lung", f"vre-job-{a}-1", pod="p-a", node="node-2", started=now)
    kube.listed[wb] = KubeJob("vre-lung", f"vre-job-{b}-1", pod="p-b", node="node-1", started=now,
                              terminated="Error", exit_code=1, report='{"error": "FolderInTheWay: jobs is a link"}')
    kube_look(engine)
    assert states(settings)[b] == "failed" and "the job's task failed: FolderInTheWay" in reasons(settings)[b]
    assert reasons(settings)[a] == "" and states(settings)[c] == "running"   # b's slot went to c
    (start_a,) = [r for r in open_store(settings).query(action="job.start") if r["target"] == f"job/{a}"]
    assert start_a["details"]["kubernetes_job"] == f"vre-lung/vre-job-{a}-1" and start_a["details"]["node"] == "node-2"
    assert start_a["details"]["worker"] == f"vre-job-{a}-1" and start_a["details"]["pod"] == "vre-lung/p-a"
    assert kube.deleted == [wb]
    kube.listed[wa] = KubeJob("vre-lung", f"vre-job-{a}-1", started=now, ended="Complete", terminated="Completed",
                              exit_code=0, report='{"returncode": 0, "usage": {"wall_s": 2.5, "cpu_s": 1, '
                                                  '"max_rss_mb": 30}, "oom_kills": 0}')
    wc = f"k8s-job/vre-job-{c}-1"
    kube.listed[wc] = KubeJob("vre-lung", f"vre-job-{c}-1", started=now, ended="Failed", why="DeadlineExceeded")
    kube_look(engine)
    assert states(settings)[a] == "succeeded" and states(settings)[c] == "timed_out"
    assert sorted(kube.deleted) == sorted([wb, wa, wc])
    with vdb.session_scope(settings.vre_db_url) as db:
        assert db.get(vdb.Job, a).usage["wall_s"] == 2.5 and db.get(vdb.Job, a).exit_code == 0

    # the kubelet's OOM kill comes first; a report that is not believable fails the job saying so
    d, e = submit(settings, "ann"), submit(settings, "ben")
    kube_look(engine)
    wd, we = f"k8s-job/vre-job-{d}-1", f"k8s-job/vre-job-{e}-1"
    kube.listed[wd] = KubeJob("vre-lung", f"vre-job-{d}-1", started=now, terminated="OOMKilled", exit_code=137,
                              report='{"returncode": 0}')
    kube.listed[we] = KubeJob("vre-lung", f"vre-job-{e}-1", started=now, terminated="Completed", exit_code=0,
                              report='{"returncode": "zero"}')
    kube_look(engine)
    assert states(settings)[d] == "failed" and "out of memory" in reasons(settings)[d]
    assert states(settings)[e] == "failed" and "malformed" in reasons(settings)[e]
    assert open_store(settings).verify().ok


def test_a_lost_kubernetes_job_is_started_again_once_and_a_cancel_deletes_a_waiting_one(world):
    """A Job that vanished (after the list lag), a pod that ended with no report, or one that gave
    up at the gate is a lost start: re-queued once as a new Job (the next attempt's), then failed.
    A cancel deletes the Job, waiting or running. Nothing is guessed when the API did not answer."""
    from vre.jobs.kubejobs import KubeJob
    settings = world.replace(k8s_job_runner="jobs")
    a, b = submit(settings, "ann"), submit(settings, "ben")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    kube_look(engine)
    wa, wb = f"k8s-job/vre-job-{a}-1", f"k8s-job/vre-job-{b}-1"
    kube.fresh = False               # the API did not answer this look: a Job missing from it is not lost
    kube.made.clear()
    kube_look(engine)
    assert states(settings) == {a: "running", b: "running"}
    kube.fresh = True
    kube.listed[wb] = KubeJob("vre-lung", f"vre-job-{b}-1")
    kube_look(engine)   # a's Job is gone: re-queued, and started again as attempt 2 in the same look
    assert "its Kubernetes Job is gone (attempt 1); re-queued" in [r["details"]["reason"] for r in
                                                                   open_store(settings).query(action="job.requeue")]
    wa2 = f"k8s-job/vre-job-{a}-2"
    assert kube.made == [wa2] and states(settings)[a] == "running" and wa in kube.deleted
    kube.listed[wa2] = KubeJob("vre-lung", f"vre-job-{a}-2", gate_closed=True, terminated="Error", exit_code=70,
                               node="node-4")
    kube_look(engine)   # lost again: its second attempt was its last
    assert states(settings)[a] == "failed"
    assert "dataset reads cannot be recorded" in reasons(settings)[a] and "node-4" in reasons(settings)[a]
    with vdb.session_scope(settings.vre_db_url) as db:
        service.cancel(db, settings, "ben", b)
    kube_look(engine)
    assert states(settings)[b] == "cancelled" and kube.deleted.count(wb) == 1   # deleted once, by the cancel


def test_a_kubernetes_job_made_before_its_start_failed_is_deleted_one_refused_before_is_not(world):
    """A start that fails after its Job was made (the Secret then refused) fails the job and
    deletes the Job: it must not run unowned and outside the project's slots."""
    settings = world.replace(k8s_job_runner="jobs")
    a, b = submit(settings, "ann"), submit(settings, "ben")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()

    async def start(plan, spec, *, job_id, attempt, **kw):
        worker = kube.worker(job_id, attempt)
        if job_id == a:
            kube.made.append(worker)
        raise ExecutorError(f"the cluster refused Secret of job {job_id}")
    kube.start = start
    kube_look(engine)
    assert states(settings) == {a: "failed", b: "failed"}
    assert kube.deleted == [f"k8s-job/vre-job-{a}-1"]


def test_a_preempted_job_waits_again_an_evicted_one_is_started_again_and_no_report_stops_a_look(world):
    """Kueue's preemption suspends the Job and ends its pod: the job waits in the queue again,
    untouched. A pod stopped from outside (its task says cancelled, nobody asked) is a lost start,
    not a cancel. A report the job wrote to break JSON is no report (a lost start), and one job
    whose Job cannot be deleted never stops the look at the project's others."""
    from vre.jobs.kubejobs import KubeJob
    settings = world.replace(k8s_job_runner="jobs", k8s_kueue_queue="vre-batch")
    a, b = submit(settings, "ann"), submit(settings, "ben")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    kube_look(engine)
    wa, wb = f"k8s-job/vre-job-{a}-1", f"k8s-job/vre-job-{b}-1"
    now = vdb.utcnow()
    kube.listed = {wa: KubeJob("vre-lung", f"vre-job-{a}-1", started=now, node="n"),
                   wb: KubeJob("vre-lung", f"vre-job-{b}-1", started=now, node="n")}
    kube_look(engine)
    preempted = '{"returncode": -15, "cancelled": true, "timed_out": false}'
    kube.listed[wa] = KubeJob("vre-lung", f"vre-job-{a}-1", suspended=True, terminated="Error", exit_code=0,
                              report=preempted, started=now)
    kube.listed[wb] = KubeJob("vre-lung", f"vre-job-{b}-1", terminated="Error", exit_code=0, report=preempted,
                              started=now)
    kube_look(engine)
    assert states(settings)[a] == "running" and wa not in kube.deleted   # back in Kueue's queue, its Job kept
    assert "suspended until the cluster's queue" in reasons(settings)[a]
    assert states(settings)[b] == "running" and kube.made[-1] == f"k8s-job/vre-job-{b}-2" and wb in kube.deleted
    requeues = {r["target"]: r["details"]["reason"] for r in open_store(settings).query(action="job.requeue")}
    assert requeues == {
        f"job/{a}": "preempted: the cluster's queue suspended its Kubernetes Job again",
        f"job/{b}": "its pod was stopped before the job ended (evicted, or its node drained) (attempt 1); re-queued"}
    assert audited(settings, "job.cancel") == []
    with vdb.session_scope(settings.vre_db_url) as db:
        assert db.get(vdb.Job, a).started_at is None   # its next run is a start of its own

    wb2 = f"k8s-job/vre-job-{b}-2"
    kube.listed[wb2] = KubeJob("vre-lung", f"vre-job-{b}-2", terminated="Completed", exit_code=0, report="[" * 4096,
                               started=now)
    with vdb.session_scope(settings.vre_db_url) as db:   # a is cancelled while it waits, and its
        service.cancel(db, settings, "ann", a)            # Job cannot be deleted this time

    async def refused(pool, worker):
        if worker == wa:
            raise OSError("the API refused the deletion")
        kube.deleted.append(worker)
    kube.delete = refused
    kube_look(engine)
    assert states(settings)[a] == "running"     # its cancel is tried again at the next look
    assert states(settings)[b] == "failed"      # followed although a's look failed first
    assert "its pod ended before the job did (Completed) (attempt 2)" in reasons(settings)[b]
    del kube.delete
    kube_look(engine)
    assert states(settings)[a] == "cancelled" and wa in kube.deleted


def test_a_job_whose_creation_went_unanswered_is_found_or_taken_for_lost_never_left_behind(world):
    """The API did not answer the Job's creation: once asked for, the Job may exist, so the job
    stays running until a look lists its Job (or takes it for lost after the list lag); a start
    that failed before asking goes back to the queue, its attempt not counted."""
    from vre.jobs.kubejobs import KubeJob
    from vre.jobs.pods import ClusterUnavailable
    settings = world.replace(k8s_job_runner="jobs")
    a, b = submit(settings, "ann"), submit(settings, "ben")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    real_start = kube.start

    async def unanswered(plan, spec, *, job_id, **kw):
        if job_id == a:
            await real_start(plan, spec, job_id=job_id, **kw)   # asked for: it may exist
        raise ClusterUnavailable("the cluster's API does not answer (timeout)")
    kube.start = unanswered
    kube_look(engine)
    assert states(settings) == {a: "running", b: "queued"}
    assert "waiting: the cluster's API does not answer" in reasons(settings)[b]
    with vdb.session_scope(settings.vre_db_url) as db:
        assert (db.get(vdb.Job, a).attempts, db.get(vdb.Job, b).attempts) == (1, 0)
    kube.start = real_start
    kube.listed[f"k8s-job/vre-job-{a}-1"] = KubeJob("vre-lung", f"vre-job-{a}-1", started=vdb.utcnow())
    kube_look(engine)
    assert audited(settings, "job.start") == [f"job/{a}"] and states(settings)[b] == "running"


def test_a_job_waiting_in_the_clusters_queue_has_not_started_a_removed_member_fails_it(world):
    """Admitted by the project's quota but suspended in Kueue's queue, a job has not started: when
    its member leaves the project meanwhile, its Job is deleted and it fails, saying why (as a
    queued job of hers would), instead of starting later with her former access."""
    from vre.jobs.kubejobs import KubeJob
    settings = world.replace(k8s_job_runner="jobs", k8s_kueue_queue="vre-batch")
    a, b = submit(settings, "ann"), submit(settings, "ben")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    kube_look(engine)
    wa, wb = (f"k8s-job/vre-job-{j}-1" for j in (a, b))
    kube.listed = {wa: KubeJob("vre-lung", f"vre-job-{a}-1", suspended=True),
                   wb: KubeJob("vre-lung", f"vre-job-{b}-1", suspended=True)}
    kube_look(engine)
    assert states(settings) == {a: "running", b: "running"} and kube.deleted == []
    with vdb.session_scope(settings.vre_db_url) as db:
        P.remove_member(db, "lung", "ann")
    kube_look(engine)
    assert states(settings) == {a: "failed", b: "running"} and set(kube.deleted) == {wa}
    assert reasons(settings)[a].startswith("not started: ") and "lung" in reasons(settings)[a]


def test_a_job_made_again_for_its_datasets_keeps_its_one_retry_of_a_lost_start(world, tmp_path):
    """A Job waiting in Kueue's queue is made again when the datasets its plan mounts change: a
    start of its own (the next Job name), but not a lost one. So the job's one retry of a lost
    start is still there: its next Job lost is re-queued, the one after that fails it."""
    from vre.jobs.kubejobs import KubeJob
    settings = world.replace(k8s_job_runner="jobs", k8s_kueue_queue="vre-batch")
    (tmp_path / "ct").mkdir()
    with vdb.session_scope(settings.vre_db_url) as db:
        db.add(vdb.Dataset(slug="ct", title="CT", path=str(tmp_path / "ct"), catalog={}))
    a = submit(settings, "ann")
    engine = Engine(settings, executor=FakeExecutor(0))
    kube = engine.kube = FakeKube()
    kube_look(engine)
    first = f"k8s-job/vre-job-{a}-1"
    kube.listed[first] = KubeJob("vre-lung", f"vre-job-{a}-1", suspended=True)
    kube_look(engine)
    with vdb.session_scope(settings.vre_db_url) as db:
        P.grant(db, "lung", "ct")
    kube_look(engine)   # made again for the plan's new dataset, and started anew
    assert first in kube.deleted and kube.made[-1] == f"k8s-job/vre-job-{a}-2", kube.made
    kube.made.clear()
    kube_look(engine)   # its Job is not listed (lost) once made
    assert states(settings)[a] == "running" and kube.made == [f"k8s-job/vre-job-{a}-3"]
    assert engine._no_free_slot == set()   # re-queued and started again in one look: one of its two slots
    requeues = [r["details"]["reason"] for r in open_store(settings).query(action="job.requeue")]
    assert requeues[0].startswith("waiting: its datasets changed") and "Job is gone (attempt 2); re-queued" in requeues[1]
    kube.made.clear()
    kube_look(engine)
    assert states(settings)[a] == "failed" and "its Kubernetes Job is gone (attempt 3)" in reasons(settings)[a]
    with vdb.session_scope(settings.vre_db_url) as db:
        assert (db.get(vdb.Job, a).attempts, db.get(vdb.Job, a).lost_starts) == (3, 2)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0015_counts_the_lost_starts_the_old_rule_counted(backend, request, tmp_path):
    """Jobs that were running or queued at the upgrade keep their retry as before: every start
    before a running one's, every start of a queued one, was taken for lost."""
    from sqlalchemy import text
    url = f"sqlite:///{tmp_path / 'vre.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0014")
    with vdb.session_scope(url) as db:   # accounts and projects are as at head
        add_account(db, "ann", password="ann-password-1")
        P.create_project(db, "old", "Old")
    with vdb.engine_for(url).begin() as conn:
        remade = "waiting: its datasets changed while it waited in the cluster's queue; started again"
        for state, attempts, reason in (("running", 1, ""), ("running", 2, ""), ("queued", 1, ""), ("queued", 0, ""),
                                        ("failed", 2, ""), ("queued", 2, remade)):
            conn.execute(text(
                "INSERT INTO jobs (project_id, account_id, name, kind, target, params, profile, cpu, mem_mb, gpus, "
                "max_runtime_s, state, reason, attempts, cancel_requested, worker, devices, usage, submitted_at) "
                "SELECT p.id, a.id, 'j', 'script', 'project/x.py', '{}', 'small', 1, 512, 0, 60, :state, :reason, "
                ":attempts, false, '', '', '{}', '2026-12-01 10:00:00+00:00' FROM projects p, accounts a"),
                {"state": state, "attempts": attempts, "reason": reason})
    vdb.upgrade(url)
    with vdb.session_scope(url) as db:
        rows = db.execute(select(vdb.Job.state, vdb.Job.attempts, vdb.Job.lost_starts).order_by(vdb.Job.id)).all()
    assert [tuple(r) for r in rows] == [("running", 1, 0), ("running", 2, 1), ("queued", 1, 1), ("queued", 0, 0),
                                        ("failed", 2, 1), ("queued", 2, 1)]


def test_a_wake_for_jobs_queued_in_a_full_project_does_not_make_the_engine_look(world):
    """The hub's wake after a submission says where the jobs were queued: while the last look
    found all of those projects' slots taken, nothing can start there until a job ends, so the
    engine does not look again for it (the next timed look comes within a second). Any other
    news makes it look."""
    engine = Engine(world, executor=FakeExecutor(0))

    async def rings(*wakes) -> bool:
        engine._listen_for_wakes()
        try:
            engine._wake.clear()
            for queued_in in wakes:
                service.wake(world, queued_in=queued_in)
            await asyncio.sleep(0.05)
            return engine._wake.is_set()
        finally:
            asyncio.get_running_loop().remove_reader(engine._wake_sock)
            engine._wake_sock.close()

    engine._no_free_slot = {"lung", "prostate"}
    assert asyncio.run(rings(["lung"], ["lung", "lung"], ["prostate", "lung"])) is False
    assert asyncio.run(rings(["lung"], ["lung", "brain"])) is True
    assert asyncio.run(rings(["lung"], [])) is True          # a plain wake: news of any kind
    assert asyncio.run(rings(["x" * 70])) is True            # too long to say: sent as plain news
    engine._no_free_slot = set()
    assert asyncio.run(rings(["lung"])) is True


def test_the_doorbell_is_read_a_batch_per_pause(world, monkeypatch):
    """After each read of the doorbell the engine leaves it ``RING_PAUSE`` seconds: a flood of
    rings costs one short read per pause (the kernel drops the rest), not a CPU; a ring in the
    pause is read after it."""
    from vre.jobs import engine as engine_module
    monkeypatch.setattr(engine_module, "RING_PAUSE", 0.3)
    engine = Engine(world, executor=FakeExecutor(0))

    async def rings() -> tuple[int, bool]:
        engine._listen_for_wakes()
        sock = engine._wake_sock
        try:
            service.wake(world)
            await asyncio.sleep(0.05)           # read at once: news
            first = engine._wake.is_set()
            engine._wake.clear()
            for _ in range(3):
                service.wake(world)
            await asyncio.sleep(0.05)           # in the pause: not read
            left = 0
            try:
                while True:
                    sock.recv(64)
                    left += 1
            except BlockingIOError:
                pass
            service.wake(world)
            await asyncio.sleep(0.4)            # after the pause: read
            return left, first and engine._wake.is_set()
        finally:
            asyncio.get_running_loop().remove_reader(sock)
            sock.close()

    assert asyncio.run(rings()) == (3, True)


def test_a_look_finds_which_projects_have_no_free_slot(world):
    a, b = submit(world, "ann"), submit(world, "ben")
    engine = Engine(world, executor=FakeExecutor(0))
    look(engine)
    assert states(world) == {a: "running", b: "running"} and engine._no_free_slot == {"lung"}
    engine.executor.end(a)
    look(engine)
    assert engine._no_free_slot == set()


def run_looks(engine: Engine, monkeypatch, look) -> list[float]:
    """Run the engine's loop (``Engine.run``) with ``look(n)`` in place of its n-th look, until
    one sets ``_stopping``; returns when each look began."""
    began = []

    async def tick():
        began.append(time.monotonic())
        look(len(began))

    async def connect():
        pass
    monkeypatch.setattr(engine, "tick", tick)
    monkeypatch.setattr(engine, "_take_over", lambda: None)
    monkeypatch.setattr(engine, "adopt", lambda: None)
    monkeypatch.setattr(engine.executor, "connect", connect, raising=False)
    asyncio.run(engine.run())
    engine._wake_sock.close()
    return began


def test_news_during_a_look_starts_the_next_look_at_once(world, monkeypatch):
    """A ring while a look runs (a job ended meanwhile) is not forgotten when that look ends: the
    next look starts at once, not at the timed look a second later."""
    engine = Engine(world, executor=FakeExecutor(0))

    def look(n):
        if n == 1:
            engine._wake.set()      # rung while this look runs
        else:
            engine._stopping = True
    looks = run_looks(engine, monkeypatch, look)
    assert len(looks) == 2 and looks[1] - looks[0] < 0.5, looks


def test_a_flood_of_rings_cannot_hold_the_engine_looking_back_to_back(world, monkeypatch):
    """Anyone who can ring the doorbell can ring it without end (a project's scheduler sandbox
    has it): after ``QUIET_LOOKS`` looks in a row that recorded nothing, the next waits
    ``QUIET_GAP`` at least, rings or not (a job merely starting does not end the quiet); a look
    that recorded something (a job started or ended) ends it."""
    from vre.jobs import engine as engine_module
    monkeypatch.setattr(engine_module, "QUIET_GAP", 0.2)
    engine = Engine(world, executor=FakeExecutor(0))

    def look(n):
        engine._wake.set()                      # rung during every look
        engine._starting = True                 # a job waits for its pod the whole time
        if n == 5:
            engine._recorded += 1               # this look recorded a job's end
        engine._stopping = n == 9
    looks = run_looks(engine, monkeypatch, look)
    gaps = [b - a for a, b in zip(looks, looks[1:])]
    assert [g >= 0.2 for g in gaps] == [False, False, True, True, False, False, False, True], gaps


def grant_dataset(world, tmp_path) -> None:
    """The project is granted a dataset ``ct``: its workers mount it, their hand-outs ask the recorder."""
    (tmp_path / "ct").mkdir()
    with vdb.session_scope(world.vre_db_url) as db:
        db.add(vdb.Dataset(slug="ct", title="CT", path=str(tmp_path / "ct"), catalog={}))
        db.flush()
        P.grant(db, "lung", "ct")


def test_a_job_whose_workers_observer_has_not_taken_note_waits_in_the_queue_and_its_worker_stays_free(world, tmp_path):
    """``serve`` raising ``ObserverAway`` (the observer on a worker pod's node has not said that it
    counts the pod's reads for the job): the job is not handed out and waits in the queue, the
    start not counted, on a new worker (the full path) as on a warm one (a look's quick path)."""
    from vre.jobs.pods import ObserverAway
    grant_dataset(world, tmp_path)
    job = submit(world, "ann")
    fake, served = FakeExecutor(0), []
    away = ["warm", "new"]

    async def serve(worker, user, job_id):
        served.append((worker, user, job_id))
        if away:
            raise ObserverAway(f"the observer of dataset reads on node n1 has not taken note ({away.pop()})")
    fake.serve = serve
    engine = Engine(world, executor=fake)

    def job_row():
        with vdb.session_scope(world.vre_db_url) as db:
            row = db.get(vdb.Job, job)
            return row.state, row.reason, row.attempts
    for path in ("new", "warm"):
        look(engine)
        state, reason, attempts = job_row()
        assert (state, attempts) == ("queued", 0) and reason.startswith("waiting: the observer of dataset reads"), \
            (path, reason)
        assert f"({path})" in reason and fake.submitted == []
        assert [w.job for w in fake.workers.values()] == [None]   # its worker is free
    look(engine)
    assert job_row()[0::2] == ("running", 1) and fake.submitted == [job]
    assert served == [("lung-worker-1", "ann", job)] * 3
    assert fake.started_for == [(job, "ann")]   # the new worker was started naming the job


def test_a_start_that_fails_unexpectedly_fails_its_job_and_the_warm_starts_before_it_run(world, caplog):
    """A look's warm starts are stored and handed out before a job on the full path (a new
    worker) commits its own start; that start failing in a way nobody foresaw fails its job
    with the reason, never leaves it running without a worker (holding a slot for ever), nor
    a warm start stored as running that its worker never got."""
    warm_job, cold_job = submit(world, "ann"), submit(world, "ann", mem_mb=512)   # no warm worker of its shape
    fake = FakeExecutor(1)

    async def broken_start(*a, **kw):
        raise RuntimeError("an unexpected failure while starting a worker")
    fake.start_worker = broken_start
    engine = Engine(world, executor=fake)
    look(engine)
    assert states(world) == {warm_job: "running", cold_job: "failed"} and fake.submitted == [warm_job]
    assert fake.workers["lung-worker-1"].job == warm_job
    with vdb.session_scope(world.vre_db_url) as db:
        assert "an unexpected failure" in db.get(vdb.Job, cold_job).reason
    assert "could not start job" in caplog.text   # with its traceback, for whoever mends it


def test_a_warm_hand_out_that_fails_unexpectedly_leaves_its_worker_free(world, tmp_path):
    """What a warm hand-out's word from the recorder raises beyond the foreseen (a bug, the
    engine stopping) fails the look, which is rolled back: the job is queued and its worker,
    which never got it, free for the next look."""
    grant_dataset(world, tmp_path)
    first = submit(world, "ann")
    fake = FakeExecutor(0)
    engine = Engine(world, executor=fake)
    look(engine)   # a new worker for it, mounting the dataset
    fake.end(first)
    look(engine)   # its end: the worker waits, warm
    job = submit(world, "ann")

    async def broken_serve(worker, user, job_id):
        raise RuntimeError("an unexpected failure while telling the recorder")
    fake.serve = broken_serve
    look(engine)
    assert states(world)[job] == "queued" and fake.workers["lung-worker-1"].job is None
    assert fake.submitted == [first]
    del fake.serve   # the class's again
    look(engine)
    assert states(world)[job] == "running" and fake.submitted == [first, job]


def test_a_new_workers_job_whose_hand_out_was_not_committed_is_queued_again_and_its_worker_free(world,
                                                                                               monkeypatch):
    """A full start stores the job as running, starts a worker, then commits the hand-out: when
    that commit fails, the look is rolled back and the worker, which never got the job, is free;
    the next look queues the job again and hands it to that worker (the one started for it)."""
    job = submit(world, "ann")
    fake = FakeExecutor(0)
    engine = Engine(world, executor=fake)
    failed = commit_fails_once(monkeypatch, skip=1)   # the start's first commit passes, its second fails
    look(engine)
    assert failed and states(world)[job] == "running" and fake.submitted == []
    assert fake.workers["lung-worker-1"].job is None
    look(engine)
    assert states(world)[job] == "running" and fake.submitted == [job] and fake.started_for == [(job, "ann")]
    assert fake.workers["lung-worker-1"].job == job and audited(world, "job.requeue") == []


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_job_whose_start_was_interrupted_before_a_worker_took_it_is_queued_again(world, cancelled):
    """The engine stopped (a crash, a restart of the hub) between storing a start and handing
    the job to a worker: the job is running in the database with no worker, which no agent
    knows. The next look puts it back in the queue (neither an attempt nor a lost start: a hub
    restart loses nothing), and its admission starts it again; one cancelled meanwhile ends
    cancelled."""
    job = submit(world, "ann")
    with vdb.session_scope(world.vre_db_url) as db:
        stored = db.get(vdb.Job, job)
        stored.state, stored.attempts, stored.cancel_requested = "running", 1, cancelled
    fake = FakeExecutor(1)
    engine = Engine(world, executor=fake)
    look(engine)
    with vdb.session_scope(world.vre_db_url) as db:
        stored = db.get(vdb.Job, job)
        if cancelled:
            assert (stored.state, stored.worker) == ("cancelled", "") and fake.submitted == []
            assert audited(world, "job.cancel") == [f"job/{job}"]
            return
        assert (stored.state, stored.worker, stored.attempts, stored.lost_starts) == ("running", "lung-worker-1", 1, 0)
    assert fake.submitted == [job] and audited(world, "job.requeue") == []
