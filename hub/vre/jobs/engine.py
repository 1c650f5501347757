"""The ``vre-jobs`` service: admits queued jobs, hands them to the executor, follows them and
records how they ended. ``python -m vre.jobs.engine`` (the hub starts it as a managed service).

The database is the queue; this process only holds what it can find again (workers by their
cgroups, jobs by the agent of each project). It can be killed at any moment: a new one adopts
the running jobs, and jobs keep running meanwhile. Only one engine runs per instance: a new one
stops a previous one it finds (an orphan of a hub killed with -9).

A project has up to two pools of workers, each with its own Dask scheduler and island: the shared
one (``open`` jobs; its sessions reach it) and the held one (``held`` jobs: batch-only data, see
``db.JOB_LANES``). The queue, the quota and the fair order are the project's, across both.

What a pool's agent reports is untrusted input: the agent runs in the project's scheduler, which
a researcher reaches with Dask (``run_on_scheduler``) from a session or a job. Every field is
checked before it is stored (``AgentReport``), and a pool whose report cannot be handled at all is
logged and passed over for that look: it never stops the other pools and projects being served.
Nor does a slow one: a look reads every pool's report at once and waits at most ``STATUS_WAIT``;
a pool whose agent took more than ``SLOW_ANSWER`` is passed over for a while (``SLOW_BACKOFF``),
its running jobs untouched and its queued ones waiting, so a researcher who makes an agent stall
delays the other projects' looks by at most a few seconds, once per pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import socket
import time

from sqlalchemy import select

from .. import db as vdb
from .. import gpus
from ..db import Job, Project, as_utc, utcnow
from ..audit import Event
from ..audit import open_store
from ..plan import PlanCache, PlanRefused, held_pool, pool_for
from ..services import die_with_hub, take_over
from ..settings import Settings, files_on_host, load
from . import inputs, service
from .executor import WAITING_PREFIX, ExecutorError, LocalDaskExecutor, SchedulerLost, Unavailable
from .pools import KUBE_WORKER, is_kube_job
from .queue import Quota, admit

log = logging.getLogger("vre.jobs")
TICK = 1.0            # seconds between looks when nothing wakes the engine
#: A queued job's reason while its pool's scheduler starts (``Engine.scheduler_ready``).
STARTING_POOL = "waiting: the scheduler of its pool is starting"
FAST_TICK = 0.1       # while a job is starting
#: After ``QUIET_LOOKS`` looks in a row that recorded nothing (no job started or ended), the next
#: look waits ``QUIET_GAP`` seconds at least, rings or not: anyone who can ring the doorbell (a
#: project's scheduler sandbox) can ring it without end, and must not keep the engine looking back
#: to back. A look that records something ends the quiet (a batch of tiny jobs never waits).
QUIET_LOOKS = 3
QUIET_GAP = 0.01
#: Seconds the doorbell is not read after each read of it (at most 64 rings): a flood of rings
#: then costs the engine one short read per pause, not a CPU (the rest is dropped by the kernel).
RING_PAUSE = 0.002
RUNTIME_SLACK = 60    # the task enforces the limit; the engine steps in this much later
MAX_LOST_STARTS = 1   # a start lost (not the job's doing) is re-queued once
STATUS_WAIT = 3.0     # seconds a look waits for the pools' reports (an agent answers in ms)
SLOW_ANSWER = 1.0     # an agent slower than this is passed over for a while (its answer is used)
SLOW_BACKOFF = (5, 10, 20, 30)   # seconds a pool that did not answer in time is passed over, in turn
USAGE_KEYS = ("wall_s", "cpu_s", "max_rss_mb")
AGENT_STATES = ("pending", "running", "done", "error")
EXIT_CODES = range(-64, 256)   # a signal's number, negated (subprocess), or an exit status
TEXT_LIMIT = 1000              # characters kept of a text a pool reports (a task's error)
INPUTS_EVERY_S = 300           # seconds between drops of the kept inputs of ended jobs (claims)


def pool_of(job: Job) -> str:
    """The pool (``plan.SessionPlan.pool``) whose workers run ``job``."""
    return pool_for(job.project.slug, job.lane)


def role_of(job: Job) -> str:
    """The plan role of ``job``'s workers."""
    return "held" if job.lane == "held" else "worker"


class Timings:
    """Wall time per phase of the engine's work (count, seconds), for ``bench/jobs.py``: switched
    on by ``VRE_JOBS_TIMINGS=<file>`` (the engine rewrites the file as JSON after each tick);
    otherwise every ``timed`` block is a no-op."""

    def __init__(self, path: str | None):
        self.path = path
        self.data: dict[str, list] = {}
        self._dirty = False

    @contextlib.contextmanager
    def _measure(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            c = self.data.setdefault(name, [0, 0.0])
            c[0] += 1
            c[1] += time.perf_counter() - t
            self._dirty = True

    def __call__(self, name: str):
        return self._measure(name) if self.path else contextlib.nullcontext()

    def dump(self) -> None:
        if self.path and self._dirty:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)
            self._dirty = False


def _usage(reported) -> dict:
    """The figures of a job's usage (``vre_session.jobs.task``), as numbers and nothing else: the
    report comes from inside the job's pool, and members read it (a held job's too)."""
    if not isinstance(reported, dict):
        return {}
    return {k: round(float(v), 3) for k, v in reported.items()
            if k in USAGE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e12}


def _text(reported) -> str | None:
    """A text of a pool's report, cut to ``TEXT_LIMIT`` characters; None if it is not text."""
    if not isinstance(reported, str):
        return None
    return reported if len(reported) <= TEXT_LIMIT else reported[:TEXT_LIMIT] + " [cut]"


class AgentReport:
    """What a pool's agent says of one job, checked field by field (see the module's docstring):
    ``state`` is one of ``AGENT_STATES`` or ``"unknown"`` (a malformed entry: the engine neither
    starts nor ends the job on it, but still cancels it and enforces its run-time limit), ``error``
    a bounded text. ``problems`` lists what was wrong, for the log."""

    def __init__(self, reported):
        self.problems: list[str] = []
        if not isinstance(reported, dict):
            self.problems.append(f"the entry is a {type(reported).__name__}, not an object")
            reported = {}
        elif reported.get("state") not in AGENT_STATES:
            self.problems.append("no known state")
        self.state = reported.get("state") if reported.get("state") in AGENT_STATES else "unknown"
        self._started = reported.get("started")
        self.result = reported.get("result")
        error = _text(reported.get("error"))
        self.error = error or "no reason given"
        if self.state == "error" and error is None:
            self.problems.append("no text for the task's error")

    def started(self, job: Job, now: dt.datetime) -> dt.datetime | None:
        """When the job's task reached its worker: None while the pool says it has not; the pool's
        time if it is a finite number between the job's submission and ``now``; otherwise
        ``now`` (the engine's own clock), noted in ``problems``. A reported time can neither
        break the engine (``fromtimestamp`` overflows) nor place a start outside the job's life."""
        t = self._started
        if not t:
            return None
        earliest = job.submitted_at.timestamp() if job.submitted_at else 0.0
        number = isinstance(t, int) and not isinstance(t, bool) or isinstance(t, float) and math.isfinite(t)
        if number and earliest <= t <= now.timestamp():
            return dt.datetime.fromtimestamp(t, dt.timezone.utc)
        self.problems.append("a start time outside its submission and now; the engine's clock is used")
        return now


def executor_for(settings: Settings) -> LocalDaskExecutor:
    """The executor of ``settings.backend``: jobs run where and how that backend runs sessions."""
    if settings.backend == "docker":
        from .containers import ContainerDaskExecutor
        return ContainerDaskExecutor(settings)
    if settings.backend == "kubernetes":
        from .pods import PodDaskExecutor
        return PodDaskExecutor(settings)
    return LocalDaskExecutor(settings)


class PassedOver(ExecutorError):
    """A pool skipped in this look: its agent did not answer in time in an earlier one."""


class Engine:
    def __init__(self, settings: Settings, executor: LocalDaskExecutor | None = None):
        self.settings = settings
        self.executor = executor or executor_for(settings)
        self.timed = Timings(os.environ.get("VRE_JOBS_TIMINGS"))
        self.plans = PlanCache()   # worker plans, dropped whenever membership & co. change
        self._wake = asyncio.Event()
        self._no_free_slot: set[str] = set()   # projects whose slots the last look found all taken
        self._starting = False
        self._recorded = 0   # audit records committed so far: a look that committed none moved nothing
        self._stopping = False
        self._events: list[tuple[str, dict]] = []   # audit events waiting for their commit
        self._cancelling: set[int] = set()
        self._ended: list[tuple[str, int]] = []     # (pool, job) whose end is committed: its agent may forget it
        self._background: set[asyncio.Task] = set()
        self._reports: dict[str, object] = {}      # pool -> its agent's report in this look (or the error)
        self._slow: dict[str, tuple[float, int]] = {}   # pool -> (passed over until, times in a row)
        self._pool_starts: dict[str, asyncio.Task] = {}  # pool -> its scheduler's start, under way
        self._inputs_checked = -INPUTS_EVERY_S        # when kept inputs of ended jobs were last dropped
        self._kube_listed = False                     # whether this look listed the Kubernetes Jobs
        # jobs run as Kubernetes Jobs (``k8s_job_runner = "jobs"``); followed whatever the runner
        # is now, so that jobs started before a change of it still end
        self.kube = None
        if settings.backend == "kubernetes" and hasattr(self.executor, "acall"):
            from .kubejobs import KubeJobs
            self.kube = KubeJobs(settings, self.executor)

    # -- process life --------------------------------------------------------------------
    def _take_over(self) -> None:
        """Hold the instance's engine lock, stopping an older engine that still holds it."""
        self._lock = take_over(self.settings.run_dir / "jobs" / "engine.lock", "job engine", log)

    def _listen_for_wakes(self) -> None:
        path = service.wake_socket(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        # the hub and the projects' schedulers (bound into their sandboxes) may ring; ringing only
        # makes the engine look sooner
        os.chmod(path, 0o666)
        sock.setblocking(False)

        loop = asyncio.get_running_loop()

        def arm():
            if sock.fileno() >= 0:   # not closed meanwhile (the engine stopping)
                loop.add_reader(sock, readable)

        def readable():
            loop.remove_reader(sock)
            loop.call_later(RING_PAUSE, arm)
            news = False
            try:
                for _ in range(64):   # a flood of rings cannot hold the loop: the rest after RING_PAUSE
                    ring = sock.recv(service.MAX_RING)
                    # jobs queued only in projects whose slots the last look found all taken:
                    # nothing to start there until a job ends, which the next look finds (a look
                    # costs ~15 ms; locally the end of a job rings too)
                    queued_in = ring.removeprefix(service.QUEUED_IN).decode(errors="replace").split(",") \
                        if ring.startswith(service.QUEUED_IN) else None
                    news = news or queued_in is None or not self._no_free_slot.issuperset(queued_in)
            except BlockingIOError:
                pass
            except OSError as e:   # not expected of a bound datagram socket: look, as a ring would make it
                log.warning("reading the doorbell failed: %s", e)
                news = True
            if news:
                self._wake.set()

        arm()
        self._wake_sock = sock

    async def run(self) -> None:
        self._take_over()
        self._listen_for_wakes()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # the hub stops services with SIGINT, then SIGTERM
            loop.add_signal_handler(sig, self._request_stop)
        await self.executor.connect()
        self.adopt()
        log.info("job engine running (instance %s)", self.settings.instance)
        quiet = 0   # looks in a row that recorded nothing
        while not self._stopping:
            self._wake.clear()   # news that comes while this look runs makes the next one start at once
            recorded = self._recorded
            try:
                with self.timed("tick"):
                    await self.tick()
            except Exception:
                log.exception("job engine tick failed; trying again")
            self.timed.dump()
            quiet = 0 if self._recorded != recorded else quiet + 1
            if quiet >= QUIET_LOOKS:
                await asyncio.sleep(QUIET_GAP)
            try:
                await asyncio.wait_for(self._wake.wait(), FAST_TICK if self._starting else TICK)
            except asyncio.TimeoutError:
                pass
        for task in self._pool_starts.values():   # a scheduler half started is found or replaced next time
            task.cancel()

    def _request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def adopt(self) -> None:
        """Take over the workers of running jobs (after a restart of this process or the hub)."""
        with vdb.session_scope(self.settings.vre_db_url, durable=True) as db:
            for project in db.scalars(select(Project)):
                busy = {project.slug: {}, held_pool(project.slug): {}}
                for job in db.scalars(select(Job).where(Job.project_id == project.id, Job.state == "running")):
                    for name in filter(None, [] if is_kube_job(job.worker) else job.worker.split(",")):
                        busy[pool_of(job)][name] = job.id
                for pool, workers in busy.items():
                    self.executor.adopt(pool, workers)

    # -- one look at everything ----------------------------------------------------------
    async def tick(self) -> None:
        self._starting = False
        self._no_free_slot = set()
        with vdb.session_scope(self.settings.vre_db_url, durable=True) as db:
            with self.timed("db: active projects"):
                active = db.scalars(select(Project).where(Project.id.in_(
                    select(Job.project_id).where(Job.state.in_(("queued", "running")))))).all()
            if active:
                with self.timed("executor: refresh"):
                    await self.executor.refresh()
            self._kube_listed = False   # the Jobs are listed at the look's first follow of one
            with self.timed("agent: GET /jobs (status), every pool at once"):
                self._reports = await self.read_reports(db) if active else {}
            for project in active:
                slug = project.slug  # read before a failure's rollback expires it
                try:
                    await self.tick_project(db, project)
                    await self.commit(db)
                except Exception:
                    # whatever one project's look met, the next projects are served (and this one
                    # is looked at again next time)
                    log.exception("the look at project %s failed; it is looked at again next time", slug)
                    self.drop_look(db)
        with self.timed("stop idle workers"):
            await self.executor.stop_idle()
        if time.monotonic() > self._inputs_checked + INPUTS_EVERY_S:
            self._inputs_checked = time.monotonic()
            await asyncio.to_thread(self.drop_inputs)

    def drop_look(self, db, mark: int = 0) -> None:
        """Forget what a failed part of a look changed and did not commit: its database changes,
        their audit records, and the ends it would have told the agent to forget (those after
        ``mark``)."""
        db.rollback()
        self._events = []
        del self._ended[mark:]

    async def commit(self, db) -> None:
        """Commit what changed, with the audit records of those changes in the same transaction:
        a job's new state and its event are stored together or not at all (a crash cannot leave
        one without the other), with one durable commit for everything one look changed. Never
        hold a write transaction across an await: SQLite would lock out the hub meanwhile (this
        is synchronous, and the chain's lock is held only from the head's read to the commit)."""
        events, self._events = self._events, []
        if not events:
            with self.timed("db: commit"):
                db.commit()
            return
        with self.timed("db: commit with audit"):
            db.flush()  # the state changes first: on SQLite this takes the write lock
            dbapi = db.connection().connection.dbapi_connection
            open_store(self.settings).append_within(dbapi, [Event(action=action, **kw) for action, kw in events],
                                                    db.commit)
        self._recorded += len(events)

    async def tick_project(self, db, project: Project) -> None:
        """Follow the project's running jobs, then admit and start queued ones. What one look
        changes is committed together: one database commit and one audit transaction for every
        job that ended, and one for every job started on a warm worker (see ``start_warm``)."""
        self._ended = []  # a failed look left them uncommitted: the next follow sees them again
        with self.timed("db: load running jobs"):
            running = db.scalars(select(Job).where(Job.project_id == project.id, Job.state == "running")
                                 .order_by(Job.id)).all()
        pools: dict[str, list[Job]] = {}
        kube = [j for j in running if is_kube_job(j.worker)]
        for j in running:
            if j.kind != "cluster" and not is_kube_job(j.worker):
                pools.setdefault(pool_of(j), []).append(j)
        broken: set[str] = set()  # pools whose part of this look failed: none of their jobs starts now
        for pool, batch in pools.items():
            mark = len(self._ended)
            try:
                await self.follow_pool(db, pool, batch)
            except Exception as e:
                # a pool that does not answer, or whose report could not be handled: logged with
                # its name, its jobs are looked at again next time, and the project's other pool
                # (and every other project) is served as usual
                if isinstance(e, PassedOver):
                    log.debug("pool %s: %s", pool, e)
                elif isinstance(e, ExecutorError):
                    log.warning("pool %s: %s; will look again", pool, e)
                else:
                    log.exception("pool %s: its agent's report could not be handled; will look again", pool)
                self.drop_look(db, mark)
                self.hold_workers(batch)
                broken.add(pool)
        for job in kube:
            job_id, pool, worker = job.id, pool_of(job), job.worker   # read before a rollback expires them
            mark = len(self._ended)
            try:
                await self.follow_kube(db, job)
                await self.commit(db)
            except Exception as e:   # one job's trouble never stops the look at the others
                if isinstance(e, (ExecutorError, OSError)):
                    log.warning("job %s: %s; will look again", job_id, e)
                else:
                    log.exception("job %s: its Kubernetes Job could not be followed; will look again", job_id)
                self.drop_look(db, mark)
                continue
            if (job.state != "running" or job.worker != worker) and self.kube.view(worker) is not None:
                # its end is committed: its Job goes (unless the look deleted it already)
                self.delete_kube_later(job_id, pool, worker)
        clusters = [j for j in running if j.kind == "cluster" and j.state == "running"]
        for job in clusters:
            await self.follow_cluster(db, job)
        if clusters:
            await self.commit(db)

        if self.no_free_slot(project, running):
            await self.forget_ended()  # every slot is taken: nothing to admit, no
            return                     # need to read the queue
        with self.timed("db: load queued (5 columns)"):
            queued, running_asks = service.open_asks(db, project.id)
        if not queued:
            await self.forget_ended()
            return
        quota = Quota(project.job_slots, project.job_cpu, project.job_mem_mb, project.job_gpus)
        with self.timed("admission (fair order, quota)"):
            wants_gpu = quota.gpus > 0 and any(a.gpus for a in queued)
            chosen = admit(queued, running_asks, quota, self.free_gpus(db, quota) if wants_gpu else 0)
        if chosen:
            with self.timed("db: load admitted jobs"):
                jobs = {j.id: j for j in db.scalars(select(Job).where(Job.id.in_([a.id for a in chosen])))}
            warm = []   # warm starts not committed yet: their workers are free again if the look fails
            try:
                for ask in chosen:
                    job = jobs[ask.id]
                    if job.state != "queued":  # cancelled meanwhile
                        continue
                    if broken and pool_of(job) in broken:  # stays queued until its pool answers again
                        continue
                    with self.timed("start: total"):
                        started = await self.start_warm(db, project, job)
                    if started is None:
                        await self.hand_out(db, warm)   # ``start`` commits its own job alone
                        with self.timed("start: total"):
                            await self.start(db, project, job)
                    elif started:
                        warm.append(started)
                await self.hand_out(db, warm)
            except BaseException:
                for _, job, worker in warm:   # never stored as started: free for this job or another
                    worker.free()
                raise
            self.no_free_slot(project, [*running, *jobs.values()])   # its last free slots may just have been taken
        await self.forget_ended()

    async def hand_out(self, db, warm: list) -> None:
        """Commit the warm starts in ``warm`` (one commit for all of them), then hand each to
        its pool's agent; ``warm`` is emptied once they are stored."""
        if not warm:
            return
        with self.timed("start: total"):
            await self.commit(db)
            started, warm[:] = warm[:], []
            for plan, job, worker in started:
                with self.timed("agent: POST /jobs (submit)"):
                    await self.executor.submit(plan.pool, worker.name, self.spec(plan, job, worker.name))

    def no_free_slot(self, project: Project, jobs: list[Job]) -> bool:
        """Whether ``jobs`` (each once, or a job re-queued and started again in the same look
        twice) take all of ``project``'s slots; noted for the wakes of submissions there."""
        if len({j.id for j in jobs if j.state == "running"}) < project.job_slots:
            return False
        self._no_free_slot.add(project.slug)
        return True

    async def forget_ended(self) -> None:
        """Tell the agent to drop the jobs whose end is committed, in the background: it is
        bookkeeping, on no job's way (a status read before it lands still lists them as done,
        and a job that is no longer running in the database is not followed again)."""
        ended, self._ended = self._ended, []
        if ended:
            self.in_background(self._forget(ended), "forgetting ended jobs at their agents")

    def in_background(self, work, what: str) -> None:
        """Run ``work`` beside the looks (bookkeeping on no job's way); a failure is logged."""
        async def run():
            try:
                await work
            except Exception as e:   # noqa: BLE001 - logged; the next chance (or a TTL) does it
                log.warning("%s failed: %s", what, e)
        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _forget(self, ended: list[tuple[str, int]]) -> None:
        for pool, job_id in ended:
            with self.timed("agent: DELETE /jobs/<id> (forget, background)"):
                await self.executor.forget(pool, job_id)

    # -- starting ------------------------------------------------------------------------
    async def start_warm(self, db, project: Project, job: Job):
        """Start ``job`` on a waiting worker of its shape, without committing: returns (plan, job,
        worker) for the caller to commit with the other starts of this look and then hand to the
        agent, or None when it needs the full path (``start``: GPUs, a new worker or scheduler)."""
        pool = pool_of(job)
        try:
            if job.gpus or job.kind == "cluster" or self.as_kube_job(job) or not self.executor.agent_ready(pool):
                return None
        except Unavailable:
            return None   # the full path says so: the job waits in the queue
        # nothing is flushed before the look's commit (no write lock held across the await below)
        try:
            with db.no_autoflush, self.timed("start: worker plan (membership; cached)"):
                user = job.account.name
                plan = self.plans.get(db, self.settings, user, project.slug, job.profile, role=role_of(job))
        except PlanRefused as e:
            self.finish(db, job, "failed", f"not started: {e}")
            return ()  # handled (failed): nothing to submit
        with self.timed("start: idle_worker + oom count (cgroup reads)"):
            worker = self.executor.idle_worker(pool, (job.cpu, job.mem_mb, ()), plan.datasets)
        if worker is None:
            return None
        worker.job = job.id
        job.devices, job.worker = "", worker.name
        job.attempts += 1
        job.state, job.reason = "running", ""
        with self.timed("start: idle_worker + oom count (cgroup reads)"):
            job.usage = {"oom_before": self.executor.oom_kills(worker.name)}
        if plan.datasets:
            try:
                with self.timed("start: hostview assign"):
                    await self.executor.serve(worker.name, user, job.id)
            except Unavailable as e:   # as in ``start``: the job waits in the queue, its worker is free
                self.wait_again(db, job, e)
                return ()
            except (ExecutorError, OSError) as e:  # as in ``start``: the job fails, its worker is free
                log.exception("could not start job %s", job.id)
                self.release(db, job)
                self.finish(db, job, "failed", f"could not start: {e}")
                return ()
            except BaseException:   # the look's failure (rolled back): never handed, the worker is free
                worker.free()
                raise
        self._starting = True
        return plan, job, worker

    async def start(self, db, project: Project, job: Job) -> None:
        user = job.account.name
        try:
            with self.timed("start: worker plan (membership; cached)"):
                plan = self.plans.get(db, self.settings, user, project.slug, job.profile, role=role_of(job))
        except PlanRefused as e:
            self.finish(db, job, "failed", f"not started: {e}")
            return
        if self.as_kube_job(job):
            await self.start_kube(db, plan, job)
            return
        try:
            ready = await self.scheduler_ready(plan)
        except (ExecutorError, OSError) as e:
            if isinstance(e, Unavailable):
                log.warning("job %s waits in the queue: %s", job.id, e)
                job.reason = f"waiting: {e}"
            else:
                log.error("could not start job %s: %s", job.id, e)
                self.finish(db, job, "failed", f"could not start: {e}")
            return
        if not ready:
            job.reason = STARTING_POOL
            return
        devices: tuple[int, ...] = ()
        if job.gpus and not self.executor.gpu_counts:
            try:
                devices = gpus.acquire(db, self.settings, f"job:{job.id}", job.gpus, shared=plan.gpu_shared)
            except gpus.NoGpuFree:
                return  # stays queued; the GPUs may be held by sessions
        job.devices = ",".join(map(str, devices))
        job.attempts += 1
        job.state, job.reason = "running", ""
        await self.commit(db)
        self._starting = True
        try:
            if job.kind == "cluster":
                await self.start_cluster(db, plan, job, devices)
                return
            shape = (job.cpu, job.mem_mb, devices)
            worker = None if job.gpus else self.executor.idle_worker(plan.pool, shape, plan.datasets)
            if worker is None:
                with self.timed("start: start_worker"):
                    worker = await self.executor.start_worker(plan, job.cpu, job.mem_mb, devices, gpus=job.gpus,
                                                              job=(job.id, user))
            worker.job = job.id
            job.worker = worker.name
            job.usage = {"oom_before": self.executor.oom_kills(worker.name)}
            if plan.datasets:
                with self.timed("start: hostview assign"):
                    await self.executor.serve(worker.name, user, job.id)
        except Exception as e:   # stored as running: whatever stopped it, the job must not stay so
            self.start_failed(db, job, e)
            return
        try:
            await self.commit(db)
        except BaseException:   # the look's failure: rolled back, the next look queues the job again
            worker.free()   # never handed it
            raise
        try:
            with self.timed("agent: POST /jobs (submit)"):
                await self.executor.submit(plan.pool, worker.name, self.spec(plan, job, worker.name))
        except Exception as e:
            self.keep_warm_if_clean(job, None)   # no answer is not a no (a busy scheduler reads the post
            self.start_failed(db, job, e)        # late): the worker, which may run it, serves no other

    def start_failed(self, db, job: Job, e: Exception) -> None:
        """A start stored as running did not happen (called where ``e`` is handled)."""
        if isinstance(e, Unavailable):
            # hostview, the container engine or a node's observer is restarting or behind (as
            # with the hub): it is not the job's fault, so it waits in the queue. A new worker
            # stays, idle, for the next job of its shape; a cluster never takes warm workers, so
            # the ones it started so far are stopped (kept, they would hold the pods' quota that
            # its next start needs)
            if job.kind == "cluster":
                self.retire(job)
            self.wait_again(db, job, e)
            return
        log.exception("could not start job %s", job.id)
        self.release(db, job)
        self.finish(db, job, "failed", f"could not start: {e}")

    def as_kube_job(self, job: Job) -> bool:
        """Whether ``job`` starts as a Kubernetes Job of its own (``k8s_job_runner``)."""
        return self.kube is not None and self.kube.takes(job.kind)

    async def start_kube(self, db, plan, job: Job) -> None:
        """Start ``job`` as a Kubernetes Job: it holds its slot of the project's quota from now
        on, while it waits in the cluster's queue (Kueue) or for a node, until it ends
        (``follow_kube``). Its start is audited when its pod runs."""
        job.attempts += 1
        job.state, job.reason, job.devices = "running", "", ""
        job.worker = self.kube.worker(job.id, job.attempts)
        job.usage = {"datasets": list(plan.datasets)}   # what its pod mounts, for its job.start
        spec = self.spec(plan, job, job.worker.removeprefix(KUBE_WORKER))
        await self.commit(db)
        self._starting = True
        try:
            with self.timed("start: Kubernetes Job"):
                await self.kube.start(plan, spec, job_id=job.id, attempt=job.attempts, user=job.account.name,
                                      cpu=job.cpu, mem_mb=job.mem_mb, gpus=job.gpus)
        except Unavailable as e:
            if self.kube.just_made(job.worker):   # its Job may exist: a look finds it, or takes it for lost
                log.warning("job %s: no answer to its Job's creation (%s); the next looks find out", job.id, e)
                return
            self.wait_again(db, job, e)
        except (ExecutorError, OSError) as e:
            log.error("could not start job %s: %s", job.id, e)
            self.finish(db, job, "failed", f"could not start: {e}")
            if self.kube.just_made(job.worker):   # made, then its Secret refused: it must not run unowned
                self.delete_kube_later(job.id, pool_of(job), job.worker)

    async def scheduler_ready(self, plan) -> bool:
        """Whether the scheduler of ``plan``'s pool answers. If not, its start is begun in the
        background and the job stays queued meanwhile: a cold start (a pod scheduled, its image
        pulled: up to ``scheduler_start_s``) must not hold every other project's jobs and ends.
        A start that failed raises its error here, once; one that ended is forgotten whichever
        way the job went meanwhile (a warm worker may have taken it)."""
        task = self._pool_starts.get(plan.pool)
        if task is not None and task.done():
            del self._pool_starts[plan.pool]
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
            task = None
        if task is None:
            if self.executor.agent_ready(plan.pool):
                return True
            task = self._pool_starts[plan.pool] = asyncio.create_task(self.executor.ensure_scheduler(plan))
            task.add_done_callback(lambda _: self._wake.set())
        return False

    def free_gpus(self, db, quota: Quota) -> int:
        """GPUs a project's queued jobs may be admitted to now: this machine's free devices, or,
        where the cluster places GPUs (Kubernetes), the project's own quota (its namespace's
        ResourceQuota holds the line; a pod that finds no GPU node waits for one)."""
        return quota.gpus if self.executor.gpu_counts else gpus.free_count(db, self.settings)

    def spec(self, plan, job: Job, worker: str) -> dict:
        """What the worker's task runs. Where the hub cannot write the job's folder (claims), the
        task makes it (``outdir_mode``) and writes the job's inputs into it (``inputs``)."""
        outdir = service.outdir_inside(job.id, job.lane)
        spec = {"id": job.id, "kind": job.kind, "target": service.run_target(job), "params": job.params,
                "project": plan.project, "user": job.account.name, "worker": worker,
                "outdir": outdir, "max_runtime_s": job.max_runtime_s,
                "env": {"VRE_JOB_ID": str(job.id), "VRE_JOB_OUTPUT": outdir, "VRE_JOB_USER": job.account.name}}
        if not files_on_host(self.settings):
            spec.update(outdir_mode=service.outdir_mode(job.lane), attempt=job.attempts,
                        inputs=inputs.load(self.settings, job.id))
        return spec

    def drop_inputs(self) -> None:
        """Forget the kept inputs of jobs that ended: each start sends them again, so they are
        kept while a job may still start; a job that never started keeps them for
        ``inputs.KEEP_UNSTARTED_S`` (its rerun takes them: no worker wrote its folder). Inputs
        without a job row are a submission not yet committed, or one that failed: dropped only
        once old."""
        kept = inputs.stashed(self.settings)
        if not kept:
            return
        now = utcnow()
        with vdb.session_scope(self.settings.vre_db_url) as db:
            rows = {r.id: r for r in db.execute(select(Job.id, Job.state, Job.attempts, Job.finished_at)
                                                .where(Job.id.in_(kept)))}
        for job_id in kept:
            row = rows.get(job_id)
            if row is None:
                done = inputs.age_s(self.settings, job_id) > inputs.KEEP_UNSTARTED_S
            elif row.state in ("queued", "running"):
                done = False
            else:
                done = row.attempts > 0 or row.finished_at is None or \
                    (now - as_utc(row.finished_at)).total_seconds() > inputs.KEEP_UNSTARTED_S
            if done:
                inputs.discard(self.settings, job_id)

    async def start_cluster(self, db, plan, job: Job, devices: tuple[int, ...]) -> None:
        """Interactive workers for a notebook's Dask client, held until cancelled or timed out."""
        await self.executor.ensure_scheduler(plan)
        n = job.params.get("workers", 1)
        per_gpu = len(devices) // n if devices else 0
        names = []
        for i in range(n):
            mine = devices[i * per_gpu:(i + 1) * per_gpu]
            worker = await self.executor.start_worker(plan, job.cpu / n, job.mem_mb // n, mine, gpus=job.gpus // n,
                                                      job=(job.id, job.account.name))
            worker.job = job.id
            names.append(worker.name)
            job.worker = ",".join(names)   # each one the job holds: a failure below releases them all
            if plan.datasets:
                await self.executor.serve(worker.name, job.account.name, job.id)
        job.started_at = utcnow()
        self.audit(job, "job.start", details={"workers": names, "datasets": list(plan.datasets)})

    # -- following -----------------------------------------------------------------------
    async def read_reports(self, db) -> dict[str, object]:
        """The report of every pool with running jobs, read together: pool -> its answer, or the
        exception in its place (``PassedOver`` for a pool that is slow)."""
        rows = db.execute(select(Project.slug, Job.lane).join(Job.project)
                          .where(Job.state == "running", Job.kind != "cluster",
                                 Job.worker.not_like(f"{KUBE_WORKER}%")).distinct()).all()
        pools = sorted({pool_for(slug, lane) for slug, lane in rows})
        self._slow = {p: v for p, v in self._slow.items() if p in pools}
        return dict(zip(pools, await asyncio.gather(*(self.read_report(p) for p in pools))))

    async def read_report(self, pool: str):
        """One pool's report, or the exception in its place. An agent that takes more than
        SLOW_ANSWER (its answer is still used) or does not answer within STATUS_WAIT is passed
        over for the next SLOW_BACKOFF seconds: researchers reach their pool's agent and could
        otherwise make every look of every project wait for it."""
        until, times = self._slow.get(pool, (0.0, 0))
        if until > time.monotonic():
            return PassedOver(f"its agent was slow to answer; looked at again in {until - time.monotonic():.0f} s")
        t0 = time.monotonic()
        try:
            answer = await asyncio.wait_for(self.executor.status(pool), STATUS_WAIT)
            took = f"took {time.monotonic() - t0:.1f} s to answer"
        except asyncio.TimeoutError:
            answer, took = ExecutorError(f"its agent did not answer within {STATUS_WAIT:g} s"), None
        except Exception as e:  # noqa: BLE001 - handled by the pool's part of the look
            return e
        if took is not None and time.monotonic() - t0 <= SLOW_ANSWER:
            self._slow.pop(pool, None)
            return answer
        pause = SLOW_BACKOFF[min(times, len(SLOW_BACKOFF) - 1)]
        self._slow[pool] = (time.monotonic() + pause, times + 1)
        if took is None:
            answer = ExecutorError(f"{answer}; passed over for {pause} s")
        else:
            log.warning("pool %s: its agent %s; passed over for %d s", pool, took, pause)
        return answer

    async def follow_pool(self, db, pool: str, batch: list[Job]) -> None:
        """Follow each of the pool's running jobs by its report of this look; one commit."""
        if pool not in self._reports:  # not running at the start of the look: read it now
            self._reports[pool] = await self.read_report(pool)
        status = self._reports.pop(pool)
        if isinstance(status, SchedulerLost):
            await self.scheduler_lost(db, pool, batch, str(status))
            return
        if isinstance(status, BaseException):
            raise status
        jobs = status.get("jobs") if isinstance(status, dict) else None
        if not isinstance(jobs, dict):
            raise ExecutorError("its agent's report has no table of jobs")
        with self.timed("follow: total"):
            for job in batch:  # only the pool's own jobs are looked up: other ids it reports are ignored
                await self.follow(db, job, jobs)
            await self.commit(db)

    def hold_workers(self, batch: list[Job]) -> None:
        """After a failed part of a look: the workers of jobs still running (as the database, rolled
        back, says) are theirs again, whatever that part freed in memory before it failed."""
        for job in batch:
            if job.state == "running":
                for name in filter(None, job.worker.split(",")):
                    worker = self.executor.workers.get(name)
                    if worker is not None:
                        worker.job = job.id

    async def follow(self, db, job: Job, jobs: dict) -> None:
        reported = jobs.get(str(job.id))
        if reported is None:
            if not job.worker:   # stored as running, but its start stopped before a worker took it (a crash)
                self.interrupted(db, job, "a worker took it")
                return
            # handed to a worker but the agent never heard of it: hand it again
            await self.commit(db)
            try:
                plan = self.plans.get(db, self.settings, job.account.name, job.project.slug, job.profile,
                                      role=role_of(job))
            except PlanRefused as e:  # e.g. its submitter left the project meanwhile
                self.release(db, job)
                self.finish(db, job, "failed", f"lost by its pool and not handed again: {e}")
                return
            await self.executor.submit(plan.pool, job.worker, self.spec(plan, job, job.worker))
            return
        state = AgentReport(reported)
        if state.state == "pending" and job.kind != "cluster" and job.worker and not self.worker_runs(job.worker):
            await self.worker_lost(db, job)
            return
        if state.state == "pending":
            self._starting = True
        # why it waits, when the executor knows (a pod not placed yet): shown with the job until it runs
        waiting = self.executor.waiting_for(job.worker) if state.state == "pending" else ""
        if waiting != job.reason and (waiting or job.reason.startswith(WAITING_PREFIX)):
            job.reason = waiting
        started = state.started(job, utcnow()) if job.started_at is None else None
        if state.problems:
            log.warning("pool %s: malformed report on job %s (%s)", pool_of(job), job.id, "; ".join(state.problems))
        if started is not None:
            job.started_at = started
            worker = self.executor.workers.get(job.worker)
            mounted = {"datasets": list(worker.datasets)} if worker and worker.datasets is not None else {}
            self.audit(job, "job.start", details={"worker": job.worker, "lane": job.lane, "devices": job.devices,
                                                  "cpu": job.cpu, "mem_mb": job.mem_mb, "gpus": job.gpus, **mounted,
                                                  **self.executor.placement(job.worker)})
        if state.state == "done":  # committed with the rest of this look, then forgotten
            self.finish_from_result(db, job, state.result)
            self._ended.append((pool_of(job), job.id))
            self._cancelling.discard(job.id)
        elif state.state == "error":
            self.keep_warm_if_clean(job, None)
            self.release(db, job)
            if job.lane == "held":  # the text comes from the pool the job ran in: held like its log
                log.warning("held job %s: its task failed: %r", job.id, state.error)
                self.finish(db, job, "failed", "the job's task failed (held: the reason is in the job service's log)")
            else:
                self.finish(db, job, "failed", f"the job's task failed: {state.error}")
            self._ended.append((pool_of(job), job.id))
        elif job.cancel_requested and job.id not in self._cancelling:
            await self.commit(db)
            if await self.executor.cancel(pool_of(job), job.id):
                self._cancelling.add(job.id)
        elif job.started_at and (utcnow() - job.started_at).total_seconds() > job.max_runtime_s + RUNTIME_SLACK:
            await self.commit(db)
            await asyncio.to_thread(self.executor.stop_worker, job.worker)
            self.release(db, job)
            self.finish(db, job, "timed_out", f"run-time limit of {job.max_runtime_s} s reached; "
                                              "its worker did not stop it, so the worker was stopped")

    async def follow_kube(self, db, job: Job) -> None:
        """Follow a job run as a Kubernetes Job by this look's list (``KubeJobs.refresh``); when
        the API did not answer it, nothing is guessed."""
        kube = self.kube
        if kube is None:
            return
        if not self._kube_listed:
            self._kube_listed = True
            with self.timed("kubernetes jobs: refresh"):
                await kube.refresh()
        if not kube.fresh:
            return
        view = kube.view(job.worker)
        if view is None:
            if not kube.just_made(job.worker):
                await self.kube_lost(db, job, "its Kubernetes Job is gone")
            return
        if job.cancel_requested:
            await self.stop_kube(db, job)
            self.finish(db, job, "cancelled", job.reason or "cancelled")
            return
        if view.suspended and not view.ended:   # in the cluster's queue: not admitted yet, or preempted
            if await self.kube_plan_changed(db, job):
                return
            if job.started_at is not None:      # Kueue took its place back: its pod ended, the Job waits
                job.started_at = None           # its next run is a start of its own (audited, timed)
                self.audit(job, "job.requeue", outcome="error", details={
                    "reason": "preempted: the cluster's queue suspended its Kubernetes Job again", **view.where()})
            waiting = f"waiting: suspended until the cluster's queue {self.settings.k8s_kueue_queue!r} admits it (Kueue)"
            if job.reason != waiting:
                job.reason = waiting
            return
        if view.started is not None and job.started_at is None:
            job.started_at = as_utc(view.started)
            self.audit(job, "job.start", details={
                "worker": job.worker.removeprefix(KUBE_WORKER), "lane": job.lane, "cpu": job.cpu,
                "mem_mb": job.mem_mb, "gpus": job.gpus, "datasets": (job.usage or {}).get("datasets", []),
                **view.where()})
        if view.finished:
            await self.kube_ended(db, job, view)
        elif view.cannot_start:
            await self.stop_kube(db, job)
            self.finish(db, job, "failed", f"could not start: its container cannot start ({view.cannot_start})")
        elif job.started_at and (utcnow() - job.started_at).total_seconds() > job.max_runtime_s + RUNTIME_SLACK:
            await self.stop_kube(db, job)   # its task should have stopped it: the engine steps in
            self.finish(db, job, "timed_out", f"run-time limit of {job.max_runtime_s} s reached; its task did not "
                                              "stop it, so its Kubernetes Job was deleted")
        elif view.started is None:   # admitted, its pod not running yet
            waiting = f"{WAITING_PREFIX} for it yet: {view.unplaced}" if view.unplaced else ""
            if waiting != job.reason and (waiting or job.reason.startswith(("waiting:", WAITING_PREFIX))):
                job.reason = waiting
            self._starting = True
        elif job.reason:
            job.reason = ""

    def delete_kube_later(self, job_id: int, pool: str, worker: str) -> None:
        """Delete a start's Kubernetes Job in the background (the job's end is recorded already)."""
        self.in_background(self.kube.delete(pool, worker), f"deleting the Kubernetes Job of job {job_id}")

    async def stop_kube(self, db, job: Job) -> None:
        """Stop a job's Kubernetes Job before its end is recorded: what the look changed so far is
        committed, the Job deleted (its pod with it; an error leaves the job as it is, for the next
        look), and what the job held released."""
        await self.commit(db)
        await self.kube.delete(pool_of(job), job.worker)
        self.release(db, job)

    async def kube_plan_changed(self, db, job: Job) -> bool:
        """While its Job waits in the cluster's queue, a job has not started: as for a queued job,
        a member removed (or a profile gone) since fails it, and a change of the datasets its plan
        mounts makes its Job again (the waiting one would mount the old ones). The plans are
        cached until such a change, so this costs nothing while nothing changes."""
        try:
            plan = self.plans.get(db, self.settings, job.account.name, job.project.slug, job.profile,
                                  role=role_of(job))
        except PlanRefused as e:
            why = f"not started: {e}"
        else:
            if list(plan.datasets) == (job.usage or {}).get("datasets", []):
                return False
            why = ""
        await self.stop_kube(db, job)
        if why:
            self.finish(db, job, "failed", why)
        else:   # its next start makes a Job of the current plan
            job.state, job.worker, job.started_at = "queued", "", None
            job.reason = "waiting: its datasets changed while it waited in the cluster's queue; started again"
            self.audit(job, "job.requeue", outcome="error", details={"reason": job.reason})
        return True

    async def kube_ended(self, db, job: Job, view) -> None:
        """Record how a Kubernetes Job's run ended: the kubelet's word first (its deadline, an OOM
        kill, the gate), then the task's report (untrusted: ``finish_from_result``), else a start
        lost before the job ended (re-queued once)."""
        result = view.result()
        if view.gate_closed:
            await self.kube_lost(db, job, f"its pod could not start: dataset reads cannot be recorded (no observer "
                                          f"marked its dataset mounts on node {view.node or '?'} within "
                                          f"{self.settings.k8s_gate_seconds} s)")
            return
        if view.why != "DeadlineExceeded" and result is None and view.terminated != "OOMKilled":
            await self.kube_lost(db, job, f"its pod ended before the job did "
                                          f"({view.terminated or view.why or 'no report'})")
            return
        if result is not None and result.get("cancelled") is True and not job.cancel_requested:
            # stopped from outside (an eviction, a node drained), not cancelled: a lost start
            await self.kube_lost(db, job, "its pod was stopped before the job ended (evicted, or its node drained)")
            return
        if view.why == "DeadlineExceeded":
            self.release(db, job)
            self.finish(db, job, "timed_out", f"run-time limit of {job.max_runtime_s} s reached; the job was stopped")
        elif result is not None and "returncode" not in result and "error" in result:
            self.release(db, job)
            if job.lane == "held":   # the text comes from the job's own pod: held like its log
                log.warning("held job %s: its task failed: %.1000r", job.id, result["error"])
                self.finish(db, job, "failed", "the job's task failed (held: the reason is in the job service's log)")
            else:
                self.finish(db, job, "failed", f"the job's task failed: {_text(result['error'])}")
        elif result is not None:
            self.finish_from_result(db, job, result, oom=view.terminated == "OOMKilled")
        else:   # the task itself was killed for memory: no report
            job.exit_code = view.exit_code if view.exit_code in EXIT_CODES else None
            self.release(db, job)
            self.finish(db, job, "failed", f"killed: out of memory (limit {job.mem_mb} MiB); ask for more memory")

    async def kube_lost(self, db, job: Job, why: str) -> None:
        """A Kubernetes Job's start that was lost (not the job's doing): its Job deleted, then the
        job re-queued once, or failed."""
        await self.commit(db)
        try:
            await self.kube.delete(pool_of(job), job.worker)
        except (ExecutorError, OSError) as e:   # a new start is a new Job: this one ends by its TTL
            log.warning("could not delete the Kubernetes Job of job %s: %s", job.id, e)
        self.release(db, job)
        self.requeue_or_fail(db, job, why, worker=job.worker)

    def finish_from_result(self, db, job: Job, result, *, oom: bool = False) -> None:
        """Record how the job ended by its pool's report (untrusted: see the module's docstring).
        An exit code that is not a small int is not stored: the job failed, and its reason says
        the report was malformed. What the engine saw itself (an OOM kill: ``oom``, or the executor's
        count) comes first."""
        result = result if isinstance(result, dict) else {}
        code = result.get("returncode")
        malformed = code is not None and not (isinstance(code, int) and not isinstance(code, bool)
                                              and code in EXIT_CODES)
        if malformed:
            log.warning("pool %s: malformed report on job %s (exit code %.40r)", pool_of(job), job.id, code)
            code = None
        oom = oom or self.executor.oom_kills(job.worker) > job.usage.get("oom_before", 0)
        inside = result.get("oom_kills")   # the worker's own count: its word, about its own job only
        if self.executor.oom_reported_inside and isinstance(inside, int) and not isinstance(inside, bool):
            oom = oom or inside > 0
        usage = _usage(result.get("usage"))
        job.exit_code = code
        if result.get("cancelled") is True:
            state, reason = "cancelled", job.reason or "cancelled"
        elif result.get("timed_out") is True:
            state, reason = "timed_out", f"run-time limit of {job.max_runtime_s} s reached; the job was stopped"
        elif oom:
            state, reason = "failed", f"killed: out of memory (limit {job.mem_mb} MiB); ask for more memory"
        elif code == 0:
            state, reason = "succeeded", ""
        elif malformed:
            state, reason = "failed", "its pool's report of how it ended was malformed (no valid exit code); see its log"
        elif code is None:
            state, reason = "failed", "its pool reported no exit code; see its log"
        elif code < 0:
            state, reason = "failed", f"killed by signal {-code}"
        else:
            state, reason = "failed", f"exited with code {code}; see its log"
        job.usage = usage
        self.keep_warm_if_clean(job, result)
        self.release(db, job)
        self.finish(db, job, state, reason)

    def keep_warm_if_clean(self, job: Job, result) -> None:
        """A worker stays warm for the project's next job (perhaps another member's, its reads
        recorded under that job) only if the task said that the job left nothing running on it
        (``spent`` false: ``vre_session.jobs.leftovers``). Else (processes that would not end, a
        task that failed, a cancel the agent answered for a task it could not stop) it takes no
        other job and is stopped (``stop_idle``)."""
        if isinstance(result, dict) and result.get("spent") is False:
            return
        self.retire(job, f"job {job.id} may have left processes on it")

    def retire(self, job: Job, why: str = "") -> None:
        """``job``'s workers take no other job: ``stop_idle`` stops them once they are free."""
        for name in filter(None, job.worker.split(",")):   # a cluster job's are several
            worker = self.executor.workers.get(name)
            if worker is not None and not worker.spent:
                if why:
                    log.warning("worker %s takes no other job: %s", name, why)
                worker.spent = True

    def worker_runs(self, name: str) -> bool:
        try:
            return self.executor.alive(name)
        except Unavailable:   # cannot say now: the next look asks again
            return True

    async def worker_lost(self, db, job: Job) -> None:
        """A job whose worker ended, or never came up (a pod that cannot start), before it ran:
        re-queued once, then failed, and its pending task dropped by the agent (else a new hand-out
        under the same key would find the old one)."""
        name, pool = job.worker, pool_of(job)
        for call in (self.executor.cancel, self.executor.forget):
            try:
                await call(pool, job.id)
            except (ExecutorError, OSError, asyncio.TimeoutError) as e:
                log.warning("pool %s: could not drop job %s's pending task: %s", pool, job.id, e)
        self.release(db, job)
        why = self.executor.why_lost(name) or "its worker ended before the job started"
        self.requeue_or_fail(db, job, why, worker=name)
        await asyncio.to_thread(self.executor.stop_worker, name)

    async def follow_cluster(self, db, job: Job) -> None:
        names = [n for n in job.worker.split(",") if n]
        if not names:   # stored as running, its start stopped before it stored a worker (a crash, a failed look)
            await self.commit(db)   # no write held while the orphans stop
            orphans = [w.name for w in self.executor.workers.values() if w.job == job.id]   # of a look rolled back
            if await self.stop_workers(job, orphans):
                self.interrupted(db, job, "its workers were stored")
            return
        alive = [n for n in names if await asyncio.to_thread(self.executor.alive, n)]
        elapsed = (utcnow() - job.started_at).total_seconds() if job.started_at else 0
        if job.cancel_requested or elapsed > job.max_runtime_s or not alive:
            await self.commit(db)
            if not await self.stop_workers(job, names):
                return
            self.release(db, job)
            if job.cancel_requested:
                self.finish(db, job, "cancelled", job.reason or "released")
            elif elapsed > job.max_runtime_s:
                self.finish(db, job, "timed_out", f"run-time limit of {job.max_runtime_s} s reached")
            else:
                self.finish(db, job, "failed", "its workers ended")

    async def stop_workers(self, job: Job, names: list[str]) -> bool:
        """Stop a cluster job's workers; False if one cannot be stopped now (the container engine
        or the cluster away): the job stays as it is and the next look tries again, while the
        project's other jobs go on."""
        for name in names:
            try:
                await asyncio.to_thread(self.executor.stop_worker, name)
            except (ExecutorError, OSError) as e:
                log.warning("job %s: its worker %s could not be stopped now (%s); tried again next look",
                            job.id, name, e)
                return False
        return True

    async def scheduler_lost(self, db, pool: str, running: list[Job], why: str) -> None:
        log.warning("%s: %d running job(s) affected", why, len(running))
        for job in running:
            self.keep_warm_if_clean(job, None)   # stopped below; should that fail, never handed out meanwhile
            self.release(db, job)
            self.requeue_or_fail(db, job, "its scheduler was lost while it ran",
                                 requeue=self.settings.jobs_on_scheduler_loss == "requeue")
        await self.commit(db)
        await self.executor.stop_pool(pool)

    def requeue_or_fail(self, db, job: Job, why: str, *, requeue: bool = True, **details) -> None:
        """A running job lost what ran it (not its own doing): back to the queue once (unless
        cancelled), else failed, saying ``why``. Starts that were not lost (a Job made again for
        a change of its plan) do not count."""
        job.lost_starts += 1
        if requeue and job.lost_starts <= MAX_LOST_STARTS and not job.cancel_requested:
            job.state, job.worker, job.started_at, job.devices, job.usage = "queued", "", None, "", {}
            job.reason = f"{why} (attempt {job.attempts}); re-queued"
            self.audit(job, "job.requeue", outcome="error", details={"reason": job.reason, **details})
        else:
            self.finish(db, job, "failed", f"{why} (attempt {job.attempts})")

    # -- ending --------------------------------------------------------------------------
    def interrupted(self, db, job: Job, before: str) -> None:
        """A job stored as running whose start stopped ``before`` it stored what runs it (a
        crash, a look rolled back): not the job's doing, nor a lost run, so it waits in the queue
        again, uncounted (a hub restart loses nothing), or ends if a cancel was asked."""
        if job.cancel_requested:
            self.release(db, job)
            self.finish(db, job, "cancelled", f"cancelled before {before}")
        else:
            self.wait_again(db, job, f"its start was interrupted before {before}")

    def wait_again(self, db, job: Job, why: Exception | str) -> None:
        """A start that something briefly away stopped (``Unavailable``) did not count: the job
        waits in the queue again and its worker and GPUs are free."""
        log.warning("job %s waits in the queue: %s", job.id, why)
        self.release(db, job)
        job.state, job.reason, job.attempts = "queued", f"waiting: {why}", job.attempts - 1
        job.worker, job.devices, job.usage = "", "", {}

    def release(self, db, job: Job) -> None:
        for name in filter(None, job.worker.split(",")):
            worker = self.executor.workers.get(name)
            if worker is not None:
                worker.free()
        if job.devices or job.gpus:
            gpus.release(db, f"job:{job.id}")

    def finish(self, db, job: Job, state: str, reason: str) -> None:
        job.state, job.reason, job.finished_at = state, reason, utcnow()
        action = {"succeeded": "job.finish", "cancelled": "job.cancel"}.get(state, "job.fail")
        outcome = {"succeeded": "ok", "cancelled": "ok"}.get(state, "error")
        self.audit(job, action, outcome=outcome, details={
            "state": state, "reason": reason, "exit_code": job.exit_code, "usage": job.usage,
            "attempts": job.attempts})

    def audit(self, job: Job, action: str, *, outcome: str = "ok", details: dict | None = None) -> None:
        """Queue an audit event; ``commit`` records it once the change it describes is committed."""
        self._events.append((action, dict(
            actor=job.account.name, actor_role=job.account.role, project=job.project.slug, target=f"job/{job.id}",
            outcome=outcome,
            details={"kind": job.kind, "name": job.name, "via": "vre-jobs", **(details or {})})))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[vre-jobs %(asctime)s] %(message)s")
    die_with_hub()
    settings = load()
    asyncio.run(Engine(settings).run())
    log.info("job engine stopped; running jobs go on and are adopted at the next start")


if __name__ == "__main__":
    main()
