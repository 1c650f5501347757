"""How jobs run on this host: per pool, a Dask scheduler and workers in sandboxes.

A pool is a project's shared workers (named by its slug) or its held ones (``<slug>.held``, their
own island: ``plan.held_pool``); every call below takes the pool, and each pool is what a project
was before held jobs: its own scheduler, workers, island and run directory.

Everything is rendered from the project's plan (role=worker) with the same code that renders
sessions (``backends.bwrap.sandbox_argv``): datasets read-only, the workspace read-write, the
project's loopback-only island, an unprivileged uid without capabilities, a cgroup with the
job's CPU, memory and pids limits, and only the granted GPUs in /dev.

- The scheduler listens on 127.0.0.1:8786 (dashboard :8787) *inside the island*: the project's
  sessions reach it, nothing outside does. Its preload (``vre_session.jobs.agent``) serves the
  job service on a unix socket.
- A worker runs one job at a time (one thread) and advertises a resource only it has, so a job
  runs exactly on the worker it was given. CPU workers stay warm for ``jobs_worker_idle`` s for
  the next job of the same shape; GPU workers stop with their job.
- Processes are found again after a restart through their cgroups (``<instance>/<name>``).

On the docker backend, ``vre.jobs.containers.ContainerDaskExecutor`` runs the same scheduler and
workers as containers on the project's internal network, and on kubernetes
``vre.jobs.pods.PodDaskExecutor`` as pods in the project's namespace (``engine.executor_for``
picks by backend): they override only how a run is launched, found, stopped and addressed (the
hooks at the end here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import bwrap
from ..backends.cgroups import SessionCgroup
from ..backends.host import prepare_host
from ..gpus import gpu_env
from ..hostview import client as hostview
from ..plan import SessionPlan, jobs_run_dir
from ..settings import Settings
from .pools import DASHBOARD_PORT, SCHEDULER_LIMITS, SCHEDULER_PORT, WORKER_OVERHEAD_MB
from .service import scheduler_file, wake_socket

log = logging.getLogger("vre.jobs")
MAX_WORKERS = 1000   # of one pool at once: far above any quota
#: Seconds without stops after one failed (the engine or the cluster away, or a run that stays).
STOP_RETRY_S = 30
#: After vre-hostview did not take note of a warm hand-out (restarting, or behind a flood's backlog,
#: which it answers within a second or so), hand-outs with datasets wait in the queue for this long
#: without asking it: one look may wait for its answer, not every hand-out of every look.
RECORDER_WAIT_S = 5.0
#: How ``waiting_for`` reasons begin: the engine shows them with a waiting job and clears them.
WAITING_PREFIX = "the cluster has no place"


class ExecutorError(RuntimeError):
    pass


class Unavailable(ExecutorError):
    """Something a run needs is briefly unavailable (restarting): the job waits in the queue
    rather than fail."""


class RecorderUnavailable(Unavailable):
    """vre-hostview cannot record a worker's dataset reads (as its job's) now: it is restarting, or behind."""


class AgentRefused(ExecutorError):
    """The agent answered with an HTTP error (``status``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SchedulerLost(ExecutorError):
    """The project's scheduler is gone (killed, crashed): its running jobs need a decision."""


@dataclass
class Worker:
    name: str
    pool: str
    shape: tuple            # (cpu, mem_mb, devices): a warm worker is reused for the same shape
    job: int | None = None  # the job it runs now
    #: The datasets mounted in it (None: unknown, found again after a restart): a warm worker is
    #: reused only while the plan mounts the same (a revoked or expired grant must not reach the
    #: next job through a warm worker).
    datasets: tuple | None = ()
    idle_since: float = field(default_factory=time.time)
    gpus: int = 0           # GPUs it holds (devices or, on Kubernetes, a count): stopped with its job
    #: The job (id, user) it was started for and has not been handed yet: it reads as that job's
    #: from its start (``SessionPlan.job``), so that hand-out needs no word from the recorder.
    born_for: tuple[int, str] | None = None
    #: Its last job may have left something running on it (processes that would not end, a task
    #: that failed, a submit or cancel without a clear answer, a lost scheduler): it takes no
    #: other job and is stopped (``Engine.keep_warm_if_clean``).
    spent: bool = False

    def free(self) -> None:
        """Takes no job now: free for the next of its shape, idle (toward its stop) from now."""
        self.job, self.idle_since = None, time.time()


#: The most the engine reads of one answer of an agent (which researchers can reach and replace):
#: a status of thousands of jobs is a few MiB; more would only fill the engine's memory.
MAX_REPLY = 64 << 20


async def _read_capped(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await reader.read(1 << 16):
        data += chunk
        if len(data) > limit:
            raise ExecutorError(f"the agent's answer is over {limit >> 20} MiB")
    return bytes(data)


async def _http(target: Path | tuple[str, int], method: str, path: str, body: dict | None = None,
                timeout: float = 10, token: str = "") -> dict:
    """A tiny HTTP/1.1 client of the agent's API: over its unix socket (a path), or over TCP
    (``(host, port)``, a pod's agent) with its bearer ``token``."""
    data = json.dumps(body).encode() if body is not None else b""
    connect = (asyncio.open_connection(*target) if isinstance(target, tuple)
               else asyncio.open_unix_connection(str(target)))
    reader, writer = await asyncio.wait_for(connect, timeout)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n{auth}"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        raw = await asyncio.wait_for(_read_capped(reader, MAX_REPLY), timeout)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunk(payload)
    if status >= 400:
        raise AgentRefused(status, f"agent answered {status} to {method} {path}: {payload[:200]!r}")
    return json.loads(payload or b"{}")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


class LocalDaskExecutor:
    """Runs jobs in sandboxed Dask schedulers and workers on this host."""

    #: Whether a launch that failed may have left its run: a sandbox's launch kills what it
    #: started when it fails (and keeps its log for the error to point at).
    launch_may_leave_run = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workers: dict[str, Worker] = {}
        self._procs: list[subprocess.Popen] = []
        self._recorder_back_at = 0.0   # monotonic: until then hostview is not asked (``serve``)
        #: Workers whose launch failed where that may leave a run (``strays``).
        self._strays: set[str] = set()
        self._stop_failed: dict[str, float] = {}   # name -> monotonic: when its last stop failed
        self._stops_after = 0.0   # monotonic: a stop failed, none is tried before then

    # -- paths and names -----------------------------------------------------------------
    def pool_dir(self, pool: str) -> Path:
        return jobs_run_dir(self.settings, pool)

    def agent_socket(self, pool: str) -> Path:
        """The agent's socket on the host (``plan.for_scheduler``'s private agent directory)."""
        return self.pool_dir(pool) / "scheduler" / "agent" / "agent.sock"

    def scheduler_name(self, pool: str) -> str:
        return f"{pool}-scheduler"

    def _cgroup(self, name: str) -> SessionCgroup:
        return SessionCgroup(name, self.settings.instance)

    # -- the scheduler -------------------------------------------------------------------
    def scheduler_alive(self, pool: str) -> bool:
        return self.alive(self.scheduler_name(pool))

    async def status(self, pool: str) -> dict:
        """The agent's view of the pool's jobs; SchedulerLost if the scheduler is gone."""
        try:
            return await self.agent(pool, "GET", "/jobs")
        except (OSError, asyncio.TimeoutError, ExecutorError) as e:
            if not await asyncio.to_thread(self.scheduler_alive, pool):
                raise SchedulerLost(f"the scheduler of pool {pool} is gone") from None
            raise ExecutorError(f"the scheduler of pool {pool} does not answer: {e}") from None

    async def ensure_scheduler(self, plan: SessionPlan) -> None:
        pool = plan.pool
        if self.agent_ready(pool):
            return
        plan = plan.for_scheduler(self.scheduler_name(pool), wake_socket(self.settings))
        await asyncio.to_thread(self.prepare, plan)
        argv = [self.dask, "scheduler", "--host", self.listen_host, "--port", str(SCHEDULER_PORT),
                "--dashboard-address", f"{self.listen_host}:{DASHBOARD_PORT}", "--preload", "vre_session.jobs.agent"]
        await self._launch(plan, argv, (), limits=SCHEDULER_LIMITS)
        deadline = time.monotonic() + self.scheduler_start_s
        while time.monotonic() < deadline:
            try:
                await self.agent(pool, "GET", "/jobs", timeout=2)
                await asyncio.to_thread(self.publish_address, pool)
                log.info("scheduler of pool %s is up", pool)
                return
            except (OSError, asyncio.TimeoutError, ExecutorError):
                if not self.scheduler_alive(pool):
                    break
                await asyncio.sleep(0.05)
        log.error("scheduler of pool %s did not start:\n%s", pool, await asyncio.to_thread(self.log_tail, plan))
        raise ExecutorError(f"the scheduler of pool {pool} did not start (its log is in the job "
                            "service's log)")

    # -- workers -------------------------------------------------------------------------
    def idle_worker(self, pool: str, shape: tuple, datasets: tuple) -> Worker | None:
        """A warm worker of ``shape`` that mounts exactly ``datasets`` (the job's plan's); others
        stay idle until ``stop_idle``."""
        for w in self.workers.values():
            if w.pool == pool and w.job is None and w.shape == shape and w.datasets == datasets \
                    and not w.gpus and not w.spent and self.alive(w.name) and self.may_serve(w.name, datasets):
                return w
        return None

    def may_serve(self, name: str, datasets) -> bool:
        """Whether the idle worker ``name`` may take a job with ``datasets`` now (``PodDaskExecutor``:
        not while the observer of its node is away)."""
        return True

    async def start_worker(self, plan: SessionPlan, cpu: float, mem_mb: int, devices: tuple[int, ...],
                           gpus: int | None = None, job: tuple[int, str] | None = None) -> Worker:
        """A new worker of ``plan``'s pool with these resources: this machine's GPU ``devices``,
        or (``gpu_counts``) a count of ``gpus`` the cluster places. ``job``: (id, user) of the
        job it is started for (``PodDaskExecutor`` names it in the pod from its creation)."""
        n = 1
        while f"{plan.pool}-worker-{n}" in self.workers or self.alive(f"{plan.pool}-worker-{n}"):
            n += 1
            if n > MAX_WORKERS:
                raise ExecutorError(f"pool {plan.pool} has {MAX_WORKERS} workers already")
        name = f"{plan.pool}-worker-{n}"
        plan = plan.for_worker(name, cpu=cpu, mem_mb=mem_mb, gpus=len(devices) if gpus is None else gpus, job=job)
        await asyncio.to_thread(self.prepare, plan)
        scheduler = await asyncio.to_thread(self.scheduler_address, plan.pool)
        argv = [self.dask, "worker", scheduler, "--name", name, "--nthreads", "1",
                "--no-nanny", "--memory-limit", "0", "--no-dashboard", "--local-directory", "/tmp",
                "--resources", f"vre-{name}=1", "--death-timeout", "120"]
        try:
            await self._launch(plan, argv, devices, limits=dict(cpu=cpu, mem_mb=mem_mb + WORKER_OVERHEAD_MB,
                                                                 pids_max=4096))
        except BaseException:
            if self.launch_may_leave_run:
                self._strays.add(name)
            raise
        self._strays.discard(name)   # this start replaced what a failed one of the name left
        self._stop_failed.pop(name, None)
        worker = Worker(name, plan.pool, (cpu, mem_mb, tuple(devices)), datasets=plan.datasets, gpus=plan.gpus,
                        born_for=job)
        self.workers[name] = worker
        return worker

    def stop_worker(self, name: str, *, marked: bool | None = None) -> None:
        """Stop a worker, tell hostview if it may have marked it, and drop its run directory.
        hostview marks only runs with datasets (``marked``: by default, a worker with datasets or
        of unknown ones), and forgets dead runs by itself: asking it only when needed keeps an
        outage of hostview's (an unmark waits up to 5 s) from holding every project's looks for
        each worker stopped meanwhile; what a failed launch left is stopped with ``False``."""
        worker = self.workers.get(name)
        if marked is None:
            marked = worker is None or worker.datasets is None or bool(worker.datasets)
        self.kill(name)
        if marked:
            self.unmark(name)
        worker = self.workers.pop(name, None)
        shutil.rmtree(self.pool_dir(worker.pool if worker else name.rsplit("-worker-", 1)[0])
                      / "workers" / name, ignore_errors=True)
        self._reap()

    def adopt(self, pool: str, busy: dict[str, int]) -> None:
        """After a restart: take over the workers that run jobs (name -> job), stop the others."""
        for name in self._existing(pool):
            try:
                alive = self.alive(name)
            except Unavailable as e:  # kept as it is: the next looks find out
                log.warning("%s: %s", name, e)
                alive = None
            if name in busy and alive is not False:
                self.workers[name] = Worker(name, pool, (), job=busy[name], datasets=None)
            elif name not in busy and alive is not None:
                try:
                    self.stop_worker(name)
                except (ExecutorError, OSError) as e:   # the looks' stops try again
                    log.warning("could not stop worker %s: %s", name, e)
                    self._strays.add(name)

    def _existing(self, pool: str) -> list[str]:
        run = self.pool_dir(pool) / "workers"
        return sorted(p.name for p in run.iterdir()) if run.is_dir() else []

    async def stop_idle(self) -> None:
        """At the end of each look: stop the workers no longer wanted (idle past
        ``jobs_worker_idle``, spent, holding GPUs or of unknown shape) and the ``strays`` (a name
        a later start took is that start's). A stop that fails (the container engine or the
        cluster away or slow) ends the stops for ``STOP_RETRY_S``: each may wait its full timeout
        (up to 80 s for a pod), and every project's next look waits with it; then the workers
        whose stop never failed go first, so one that cannot be stopped holds no other back."""
        if time.monotonic() < self._stops_after:
            return
        now = time.time()
        self._strays -= self.workers.keys()
        wanted = [(w.name, True) for w in list(self.workers.values()) if w.job is None and (
            w.spent or not w.shape or bool(w.shape[2]) or w.gpus or now - w.idle_since > self.settings.jobs_worker_idle)]
        wanted += [(name, False) for name in sorted(self.strays() - self.workers.keys())]
        names = {name for name, _ in wanted}
        self._stop_failed = {n: t for n, t in self._stop_failed.items() if n in names}
        for name, tracked in sorted(wanted, key=lambda w: self._stop_failed.get(w[0], 0.0)):
            try:
                # hostview never marked a stray (a failed launch's run, or one none of ours knows)
                await asyncio.to_thread(self.stop_worker, name, **({} if tracked else {"marked": False}))
            except Exception as e:   # noqa: BLE001 - whatever stops a stop, the looks go on
                self._stop_failed[name] = time.monotonic()
                self._stops_after = time.monotonic() + STOP_RETRY_S
                log.warning("could not stop %s worker %s (stops wait %d s): %s",
                            "idle" if tracked else "untracked", name, STOP_RETRY_S, e,
                            exc_info=not isinstance(e, (ExecutorError, OSError)))
                return
            self._stop_failed.pop(name, None)
            if not tracked:
                self._strays.discard(name)
                log.info("stopped worker %s, which may have run untracked (a launch that failed, or none of "
                         "this engine's), if it ran", name)

    def strays(self) -> set[str]:
        """Workers that may run without being this executor's: those whose launch failed, where
        a launch can leave a run (the container engine or the cluster made it, then did not
        answer in time). Such a run would hold its name and its share of the quota until a restart."""
        return set(self._strays)

    async def stop_pool(self, pool: str) -> None:
        """Everything of a pool: its workers and its scheduler (scheduler loss, shutdown)."""
        for name in await asyncio.to_thread(self._existing, pool):   # Podman: its list
            await asyncio.to_thread(self.stop_worker, name)
        await asyncio.to_thread(self.kill, self.scheduler_name(pool))
        await asyncio.to_thread(self.pool_stopped, pool)

    # -- jobs ----------------------------------------------------------------------------
    async def submit(self, pool: str, worker: str, spec: dict) -> None:
        await self.agent(pool, "POST", "/jobs", {"id": spec["id"], "worker": worker, "spec": spec})

    async def cancel(self, pool: str, job_id: int) -> bool:
        return (await self.agent(pool, "POST", f"/jobs/{job_id}/cancel"))["found"]

    def unmark(self, name: str) -> None:
        """The run is gone: hostview stops recording its reads."""
        hostview.unmark(self.settings, name)

    def born_with(self, worker: str, user: str, job_id: int) -> bool:
        """Whether this is the hand-out ``worker`` was started for (once: its next is not)."""
        w = self.workers.get(worker)
        if w is None or w.born_for is None:
            return False
        born, w.born_for = w.born_for, None
        return born == (job_id, user)

    async def serve(self, worker: str, user: str, job_id: int) -> None:
        """Tell hostview which job (and user) a worker's dataset reads are for from now on, and
        return only once it took note: a job handed out before would have its first reads
        recorded as the worker's previous job's, perhaps another member's. Else the job waits in
        the queue (``RecorderUnavailable``), and a worker hostview does not know (it lost its
        marks) is stopped: a new one is marked as it starts. Nothing to tell for the job a
        worker was started for (marked for it). After hostview did not take note, it is not asked
        again for ``RECORDER_WAIT_S``."""
        if self.born_with(worker, user, job_id):
            return
        if time.monotonic() < self._recorder_back_at:
            raise RecorderUnavailable(f"vre-hostview did not take note of a hand-out a moment ago (restarting, or "
                                      f"reading a backlog): the reads of {worker} cannot be recorded as this job's yet")
        answer = await asyncio.to_thread(hostview.assign, self.settings, worker, user, job_id)
        if answer is not None and answer.get("ok"):
            return
        if answer is not None and answer.get("unmarked"):
            log.error("hostview does not know worker %s: stopping it", worker)
            await asyncio.to_thread(self.stop_worker, worker)
        else:
            self._recorder_back_at = time.monotonic() + RECORDER_WAIT_S
        why = "does not answer" if answer is None else f"did not take note ({answer.get('error')})"
        raise RecorderUnavailable(f"vre-hostview {why}: the reads of {worker} cannot be recorded as this job's yet")

    async def forget(self, pool: str, job_id: int) -> None:
        try:
            await self.agent(pool, "DELETE", f"/jobs/{job_id}")
        except (OSError, asyncio.TimeoutError, ExecutorError):
            pass

    # -- how a run is launched, found, stopped and addressed (ContainerDaskExecutor and
    #    PodDaskExecutor override) --
    #: The dask command and the scheduler's listening address (inside the pool's island, which
    #: its sessions share: 127.0.0.1 in a network namespace).
    listen_host = "127.0.0.1"
    #: Seconds a new scheduler's agent may take to answer.
    scheduler_start_s = 60
    #: Whether GPUs are a count the cluster places (Kubernetes) rather than this machine's
    #: devices, which the engine leases (``vre.gpus``).
    gpu_counts = False
    #: Whether the engine takes a worker's own count of OOM kills in its job (``task.oom_kills``)
    #: where it cannot read the run's cgroup itself (a pod's is on its node).
    oom_reported_inside = False

    @property
    def dask(self) -> str:
        return str(self.settings.session_env / "bin" / "dask")

    def identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return bwrap.identity_files(plan)

    def waiting_for(self, name: str) -> str:
        """Why the run cannot take its job yet, when something outside says so (a pod the cluster
        has not placed); "" otherwise."""
        return ""

    def placement(self, name: str) -> dict:
        """Where the run is, for its job's ``job.start`` record (a pod's node; here: this host)."""
        return {}

    def why_lost(self, name: str) -> str:
        """Why the run ended before its job started, when something outside says so (a pod whose
        gate no observer opened); "" otherwise."""
        return ""

    async def connect(self) -> None:
        """Before the engine's first look (and its adoption of running jobs)."""

    async def refresh(self) -> None:
        """At the start of each look: what the sync hooks below read may be cached until the next."""

    def prepare(self, plan: SessionPlan) -> None:
        """The host side of a new run: home, workspace and a fresh run directory."""
        prepare_host(plan, self.identity_files(plan))

    def agent_ready(self, pool: str) -> bool:
        """Whether the pool's scheduler runs and its agent can be asked."""
        return self.scheduler_alive(pool) and self.agent_socket(pool).exists()

    async def agent(self, pool: str, method: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        """A request to the pool's agent (its API: ``vre_session.jobs.agent``)."""
        return await _http(self.agent_socket(pool), method, path, body, timeout)

    def alive(self, name: str) -> bool:
        """Whether the scheduler or worker ``name`` runs."""
        return bool(self._cgroup(name).pids())

    def kill(self, name: str) -> None:
        """Stop the scheduler or worker ``name`` and everything it started (blocking)."""
        cgroup = self._cgroup(name)
        cgroup.kill_all(2.0)
        cgroup.remove()

    def oom_kills(self, name: str) -> int:
        """How many of the run's processes the kernel killed for its memory limit so far."""
        try:
            return self._cgroup(name).oom_kills()
        except OSError:
            return 0

    def scheduler_address(self, pool: str) -> str:
        """Where the pool's workers and its sessions' clients reach its scheduler."""
        return f"tcp://127.0.0.1:{SCHEDULER_PORT}"

    def publish_address(self, pool: str) -> None:
        """Say where the scheduler is, for the jobs API to tell a session's Dask client."""
        path = scheduler_file(self.settings, pool)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".new").write_text(self.scheduler_address(pool))
        path.with_suffix(".new").replace(path)

    def pool_stopped(self, pool: str) -> None:
        """After a pool's scheduler and workers are gone (the island of a sandbox is kept)."""
        scheduler_file(self.settings, pool).unlink(missing_ok=True)

    def log_tail(self, plan: SessionPlan, lines: int = 20) -> str:
        return self._log_tail(plan.run_dir / "log.txt", lines)

    async def _launch(self, plan: SessionPlan, argv: list[str], devices, *, limits: dict) -> None:
        env = {**plan.env, "PATH": f"{self.settings.session_env}/bin:/usr/local/bin:/usr/bin:/bin"}
        if devices:
            env.update(gpu_env(devices))
        try:
            proc = await bwrap.launch(self.settings, plan, argv, env, log_path=plan.run_dir / "log.txt",
                                      limits=limits, devices=devices)
        except hostview.HostviewUnavailable as e:
            raise RecorderUnavailable(str(e)) from None
        except hostview.HostviewError as e:
            raise ExecutorError(str(e)) from None
        self._procs.append(proc)
        log.info("started %s (pid %s)", plan.session_id, proc.pid)

    def _reap(self) -> None:
        self._procs = [p for p in self._procs if p.poll() is None]

    @staticmethod
    def _log_tail(path: Path, lines: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
