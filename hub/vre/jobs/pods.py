"""How jobs run on the kubernetes backend: per pool, a Dask scheduler and workers as pods.

The batch queue follows the sessions: where sessions are pods in their project's namespace, so
are the pool's scheduler and workers, rendered from the same plan by the same translation
(``backends.kubernetes.batch_pod``, the session pod's rendering): datasets read-only, the image's
root read-only, an unprivileged uid without capabilities, requests = limits for the job's CPU and
memory, no service-account token, only allow-listed images, and the project's default-deny
NetworkPolicies. The shared pool runs in the project's namespace, beside its sessions; the held
pool in a namespace of its own (``<instance>-0held-<slug>``), which no session is in.

What differs from the sandbox (``executor.LocalDaskExecutor``, whose logic this reuses):

- The engine runs in the hub's pod and no socket can be shared with a pod, so the agent listens
  on TCP (``AGENT_PORT``) and answers only the bearer token the engine made for that scheduler
  (kept in the hub's secrets, root-only, so a new hub pod still reaches it); the project's
  ``hub-to-agent`` policy lets only the hub's pods reach that port. The engine asks a scheduler
  only at the address of its pod while that pod runs (an ended pod's address may be another
  project's by then), and an agent that refuses its token is taken for lost. No doorbell: the
  engine looks every second anyway.
- A listed pod is believed to be a run only where such a run's pod is: in its pool's namespace,
  named ``batch-<run>`` (no session's ``<user>-<project>`` can be), with its role; labels alone
  are anyone's who can make a pod.
- The engine's looks do not call the API per run: each look lists this instance's batch pods
  once (``refresh``), and the hooks the engine calls on its loop (``alive``, ``oom_kills``,
  ``scheduler_address``) read that list. A pod that ends between looks is seen at the next one.
  When the API does not answer, nothing is guessed: starts wait (``ClusterUnavailable``).
- API calls run on an event loop of the executor's own (a thread), so the sync hooks can wait
  for them from the engine's loop or from its worker threads alike.
- OOM kills: a worker ended ``OOMKilled`` (the kubelet's word), or the count the worker's task
  reads in its own memory cgroup around the job (``task.oom_kills``: the project's side, like the
  rest of its pool's report, so it can only mislabel how the project's own jobs failed).
- Dataset reads are recorded by the observer on the worker's node (``vre.hostview.node``): a
  worker with datasets starts behind its gate, as a session does, its pod naming the job it is
  started for; ``serve`` annotates a warm worker with its next job, then waits until that
  observer says it counts the pod's reads for that job (``jobs.observed``) before the job is
  handed out: a job's reads are not its predecessor's.
  Without the observer, jobs with datasets run only where the deployment accepted unobserved
  reads (``k8s_unobserved_reads``).
- GPUs are a count (``nvidia.com/gpu`` in the worker's limits, on ``k8s_gpu_node_selector``
  nodes, from the GPU image): the engine leases no device of its own machine, admits by the
  project's GPU quota, and the cluster picks the devices, as for sessions.
- Claims (``k8s_storage = "pvc"``): the pool's pods mount the project's ``workspace`` claim (held
  ones the held pool's ``held`` claim) and a home claim of the pool's own (``worker-home``,
  ``held-home``), made with the pool's first pod. The hub reaches none of them: the worker makes
  the job's folder and writes its inputs (``spec["inputs"]``, see ``jobs.inputs``), and members
  read logs, progress and outputs through their claims reader (``vre.claims``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, replace

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..backends import kubernetes as k8s
from ..hostfiles import write_private
from ..hostview.podgate import AUDIT_JOB, AUDIT_JOB_SERIAL, AUDIT_JOB_USER, GATE_EXIT, OBSERVED_LABEL
from ..plan import AGENT_PORT, SessionPlan, island_name
from ..settings import Settings
from . import observed
from .executor import (SCHEDULER_PORT, WAITING_PREFIX, AgentRefused, ExecutorError, LocalDaskExecutor,
                       SchedulerLost, Unavailable, _http)

log = logging.getLogger("vre.jobs")
#: Seconds an API call may take.
API_TIMEOUT = 20
#: Seconds a deleted pod may take to be gone (its name is free again then).
KILL_WAIT_S = 60
#: Seconds between reads of a starting scheduler's pod (until it has an address).
READ_EVERY_S = 0.5
#: Seconds between the engine's complaints that the cluster's API does not answer at its start.
CONNECT_WAIT_S = 60
#: Seconds a job's hand-out waits for the observer on its worker's node to count the worker's
#: reads as the job's (milliseconds when it is well) ...
NOTE_WAIT_S = 5
#: ... and how often it looks (the word is in the database, written by the VRE service's
#: process): at first every 10 ms, less often the longer it waits, at least every 100 ms, so
#: that an observer that is away costs the database a few dozen reads, not hundreds ...
NOTE_POLL_S = 0.01
NOTE_POLL_MAX_S = 0.1
#: ... and after a wait in vain, the node's idle workers take no job with datasets for this long
#: (``may_serve``): an observer that is away must not hold up every look.
NOTE_AWAY_S = 30


class ObserverAway(Unavailable):
    """The observer on a worker's node has not taken note of the worker's job: the job waits."""


class ClusterUnavailable(Unavailable):
    """The cluster's API does not answer: a job waits in the queue rather than fail."""


@dataclass
class Run:
    """What a look knows of a scheduler's or worker's pod."""
    namespace: str
    pod: str
    pool: str
    role: str
    phase: str = "Pending"
    ip: str = ""
    waiting: str = ""       # why its container waits (an image that cannot be pulled: it never runs)
    ended: str = ""         # why its container ended ("OOMKilled", "Error", ...)
    deleting: bool = False
    node: str = ""          # where the cluster placed it
    unplaced: str = ""      # why the cluster has not placed it yet (no node with the GPUs, ...)
    catalogue_failed: str = ""   # why its first container could not fetch its catalogue files
    seen: float = 0.0       # time.monotonic() when this was learnt
    uid: str = ""

    @property
    def live(self) -> bool:
        return (not self.deleting and self.phase in ("Pending", "Running") and not self.ended
                and self.waiting not in k8s.FATAL_WAITING)


#: ``Run.ended`` of a pod that gave up at its gate: no observer of dataset reads marked it.
GATE_CLOSED = "GateClosed"


def _run(pod) -> tuple[str, Run]:
    """(run name, what the pod says of it) by its labels; ``refresh`` checks them against where
    and how such a run's pod is named before believing them."""
    meta, status = pod.metadata, pod.status
    labels = meta.labels or {}
    run = Run(meta.namespace, meta.name, labels.get("vre.pool", ""), labels.get("vre.role", ""),
              phase=status.phase or "Pending", ip=status.pod_ip or "", deleting=bool(meta.deletion_timestamp),
              waiting=k8s.waiting_reason(pod), node=getattr(pod.spec, "node_name", None) or "",
              seen=time.monotonic(), uid=meta.uid or "")
    for c in status.container_statuses or ():
        if c.state and c.state.terminated:
            gated = labels.get(OBSERVED_LABEL) and c.state.terminated.exit_code == GATE_EXIT
            run.ended = GATE_CLOSED if gated else (c.state.terminated.reason or "ended")
    run.catalogue_failed = k8s.catalogue_failure(pod)
    if run.catalogue_failed:
        run.ended = k8s.CATALOGUE_NOT_FETCHED
    run.unplaced = k8s.unplaced_reason(pod)
    return labels.get("vre.session", ""), run


def transient(e: Exception) -> bool:
    """An API answer that waiting cures: a busy or restarting API server, a quota in use or not
    yet counted. Anything else it refuses is the run's error."""
    status = getattr(e, "status", None)
    text = k8s.api_reason(e) if isinstance(e, ApiException) else str(e)
    return status == 429 or (isinstance(status, int) and status >= 500) or (
        status == 403 and ("exceeded quota" in text or "status unknown for quota" in text))


def _address(run: Run | None) -> str:
    """A scheduler pod's address while it runs: an ended pod keeps its address in its status, and
    the cluster may already have given that address to another project's pod."""
    return run.ip if run is not None and run.live and run.phase == "Running" else ""


class PodDaskExecutor(LocalDaskExecutor):
    """Runs jobs in Dask scheduler and worker pods in each pool's namespace."""

    listen_host = "0.0.0.0"   # its pod's address
    dask = "dask"             # the notebook image's
    scheduler_start_s = 180   # a pod is scheduled, its volumes mounted, then Dask starts
    oom_reported_inside = True   # its memory cgroup is on its node: the worker reads its own
    gpu_counts = True            # nvidia.com/gpu in the pod's limits: the cluster picks the devices
    launch_may_leave_run = True  # the API may make a pod, then not answer in time

    def __init__(self, settings: Settings):
        super().__init__(settings)
        # the hub's choices for its pods (c.KubernetesSpawner in the jupyterhub setting)
        options = settings.jupyterhub.get("KubernetesSpawner") or {}
        self.pull_policy = options.get("image_pull_policy", "IfNotPresent")
        self.tmp_size = options.get("tmp_size", "2Gi")
        self._runs: dict[str, Run] = {}       # run name -> its pod, as the last look (or a launch) saw it
        self._killed: dict[str, float] = {}   # run name -> when it was deleted (a look begun before misses it)
        self._fresh = False                   # whether the last look's list succeeded
        self._last_error = "no look yet"
        self._client: ApiClient | None = None
        self._hub_ip = ""                     # the hub Service's cluster IP, once asked for
        self._observer_away: dict[str, float] = {}   # node -> until when its idle workers take no dataset job
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vre-jobs-kubernetes", daemon=True).start()

    # -- the API, on the executor's own loop ------------------------------------------------
    async def _core(self) -> CoreV1Api:
        if self._client is None:
            await k8s.load_client_config(self.settings)
            self._client = ApiClient()
        return CoreV1Api(self._client)

    def _submit(self, fn):
        async def call():
            return await fn(await self._core())
        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    @staticmethod
    def _unavailable(e: Exception) -> ClusterUnavailable:
        return ClusterUnavailable(f"the cluster's API does not answer ({e or type(e).__name__}); "
                                  "jobs wait until it does")

    def _call(self, fn, timeout: float = API_TIMEOUT):
        """``await fn(core API)``, waited for from any thread. An API that does not answer is
        ClusterUnavailable; its refusals (ApiException) and a cluster that cannot be configured
        (KubernetesBackendError) pass through."""
        try:
            return self._submit(fn).result(timeout)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            raise self._unavailable(e) from None

    async def acall(self, fn):
        """``await fn(core API)`` on the executor's loop, from the engine's (an API that does not
        answer is ClusterUnavailable)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._submit(fn)), API_TIMEOUT)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            raise self._unavailable(e) from None

    # -- the looks ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Wait until the batch pods can be listed: adopting running jobs' workers needs that list
        (a run not adopted would hold its quota unseen)."""
        waited = time.monotonic()
        while not await self.refresh():
            if time.monotonic() - waited > CONNECT_WAIT_S:
                log.error("the cluster's API still does not answer (%s); the job engine waits for it", self._last_error)
                waited = time.monotonic()
            await asyncio.sleep(2)
        for name, run in list(self._runs.items()):   # a new hub pod: the jobs API's addresses again
            if run.role == "scheduler" and run.live and run.ip:
                await asyncio.to_thread(self.publish_address, run.pool)

    async def refresh(self) -> bool:
        """List this instance's batch pods (one call per look)."""
        begun = time.monotonic()
        selector = f"vre.instance={self.settings.instance},vre.pool,vre.role!=job"   # Jobs' pods: kubejobs
        try:
            pods = await self.acall(lambda api: api.list_pod_for_all_namespaces(label_selector=selector))
        except (ApiException, ClusterUnavailable, k8s.KubernetesBackendError) as e:
            self._last_error = k8s.api_reason(e) if isinstance(e, ApiException) else str(e)
            log.warning("could not list the batch pods: %s", self._last_error)
            self._fresh = False
            return False
        runs = {}
        for pod in pods.items:
            name, run = _run(pod)
            if self._is_ours(name, run):
                runs[name] = run
            elif name:
                log.warning("pod %s/%s carries batch labels of this VRE but is not where or named as such a run "
                            "is; ignored", run.namespace, run.pod)
        # what changed while the list was on its way: a launch is kept, a deletion stays deleted
        # (kill runs in worker threads: read snapshots)
        runs.update({name: run for name, run in list(self._runs.items()) if run.seen > begun})
        self._killed = {name: t for name, t in list(self._killed.items()) if t > begun}
        self._runs = {name: run for name, run in runs.items() if name not in self._killed}
        self._fresh = True
        return True

    def _is_ours(self, name: str, run: Run) -> bool:
        """Whether a listed pod is the run its labels name: in that run's namespace, under that
        run's pod name, with its role (labels alone are anyone's who can make a pod)."""
        if not name or not run.pool:
            return False
        role = "scheduler" if name == self.scheduler_name(run.pool) else (
            "worker" if name.startswith(f"{run.pool}-worker-") else "")
        try:
            return bool(role) and run.namespace == self.namespace(name) and \
                run.pod == k8s.object_name(k8s.batch_id(name)) and (run.role == "scheduler") == (role == "scheduler")
        except k8s.KubernetesBackendError:
            return False

    def alive(self, name: str) -> bool:
        if not self._fresh:
            raise ClusterUnavailable(f"the cluster's API did not answer the last look ({self._last_error}); "
                                     "jobs wait until it does")
        run = self._runs.get(name)
        return bool(run and run.live)

    def placement(self, name: str) -> dict:
        """The node and pod the cluster gave the run (GPUs are a count: the node is what is known)."""
        run = self._runs.get(name)
        return {"pod": f"{run.namespace}/{run.pod}", "node": run.node} if run else {}

    def waiting_for(self, name: str) -> str:
        run = self._runs.get(name)
        return f"{WAITING_PREFIX} for its worker yet: {run.unplaced}" if run and run.unplaced else ""

    def why_lost(self, name: str) -> str:
        run = self._runs.get(name)
        if run and run.ended == GATE_CLOSED:
            return (f"its worker could not start: dataset reads cannot be recorded (no observer marked its "
                    f"dataset mounts on node {run.node or '?'} within {self.settings.k8s_gate_seconds} s)")
        if run and run.catalogue_failed:
            return f"its worker could not start: its datasets' catalogue files could not be had ({run.catalogue_failed})"
        return ""

    def oom_kills(self, name: str) -> int:
        run = self._runs.get(name)
        return 1 if run and run.ended == "OOMKilled" else 0

    def strays(self) -> set[str]:
        """Also every listed live worker pod that is none of this executor's workers: one a
        create made after its call had timed out (perhaps after the failed launch's stop)
        included. An ended pod holds no quota (its name is taken back by the next start of it),
        and keeps why it ended for its job's follow."""
        return super().strays() | {n for n, r in self._runs.items() if r.role != "scheduler" and r.live}

    def _existing(self, pool: str) -> list[str]:
        pods = {n for n, r in self._runs.items() if r.pool == pool and r.role != "scheduler"}
        return sorted(pods | set(super()._existing(pool)))

    # -- where runs are -------------------------------------------------------------------------
    def namespace(self, name: str) -> str:
        """The namespace of the run ``name`` (``<pool>-scheduler``, ``<pool>-worker-<n>``)."""
        # a slug may hold "-worker-": a scheduler's name ends "-scheduler", a worker's "-worker-<n>"
        pool = name.removesuffix("-scheduler") if name.endswith("-scheduler") else name.rsplit("-worker-", 1)[0]
        return k8s.island_namespace(island_name(self.settings, pool), pool.removesuffix(".held"))

    @staticmethod
    def pod_name(name: str) -> str:
        return k8s.object_name(k8s.batch_id(name))

    def _token_file(self, pool: str):
        """The engine's token for the pool's agent: in the hub's state (its secrets), not its run
        directory, so that a new hub pod (an upgrade) still reaches the schedulers that run on."""
        return self.settings.secrets_dir / "agent-tokens" / pool

    async def status(self, pool: str) -> dict:
        if not self._token_file(pool).exists() and self.scheduler_alive(pool):
            # a scheduler no engine can ask: its jobs are taken for lost (re-queued or failed)
            raise SchedulerLost(f"the engine has no token for the agent of pool {pool}")
        return await super().status(pool)

    def agent_ready(self, pool: str) -> bool:
        run = self._runs.get(self.scheduler_name(pool))
        return bool(self.alive(self.scheduler_name(pool)) and _address(run) and self._token_file(pool).exists())

    async def _read(self, name: str) -> Run | None:
        """The run's pod as the API has it now (a scheduler still starting: its address)."""
        try:
            pod = await self.acall(lambda api: api.read_namespaced_pod(self.pod_name(name), self.namespace(name)))
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        except ApiException as e:
            if transient(e):
                raise self._unavailable(e) from None
            if e.status != 404:
                raise ExecutorError(f"could not read pod {name}: {k8s.api_reason(e)}") from None
            self._runs.pop(name, None)
            return None
        if name not in self._killed:
            self._runs[name] = _run(pod)[1]
        return self._runs.get(name)

    async def agent(self, pool: str, method: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        name = self.scheduler_name(pool)
        run = self._runs.get(name)
        if run is None or (not run.ip and time.monotonic() - run.seen > READ_EVERY_S):
            run = await self._read(name)
        address = _address(run)
        if not address:
            raise ExecutorError(f"the scheduler of pool {pool} has no address yet")
        try:
            token = self._token_file(pool).read_text().strip()
        except OSError:
            raise ExecutorError(f"the agent token of pool {pool} is gone") from None
        try:
            return await _http((address, AGENT_PORT), method, path, body, timeout, token=token)
        except AgentRefused as e:
            if e.status == 401:   # not the agent the engine started (or its token is not this one)
                raise SchedulerLost(f"the agent of pool {pool} refuses the engine's token") from None
            raise
        except (OSError, asyncio.TimeoutError):
            if time.monotonic() - run.seen > READ_EVERY_S:
                await self._read(name)   # a scheduler that ended is seen now, not at the next look
            raise

    def scheduler_address(self, pool: str) -> str:
        address = _address(self._runs.get(self.scheduler_name(pool)))
        if not address:
            raise ExecutorError(f"the scheduler of pool {pool} has no address yet")
        return f"tcp://{address}:{SCHEDULER_PORT}"

    def pool_stopped(self, pool: str) -> None:
        super().pool_stopped(pool)
        self._token_file(pool).unlink(missing_ok=True)

    def log_tail(self, plan: SessionPlan, lines: int = 20) -> str:
        try:
            return self._call(lambda api: api.read_namespaced_pod_log(
                self.pod_name(plan.session_id), k8s.namespace_name(plan), tail_lines=lines))
        except (ApiException, ClusterUnavailable, k8s.KubernetesBackendError):
            return "(no log)"

    # -- stopping -------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """Delete the run's pod and its Secret; return once the pod is gone (its name free)."""
        self._runs.pop(name, None)
        self._killed[name] = time.monotonic()
        ns, pod = self.namespace(name), self.pod_name(name)

        async def delete(api):
            try:
                found = await api.read_namespaced_pod(pod, ns)
            except ApiException as e:
                if e.status != 404:
                    raise
                found = None
            if found is not None:
                if "vre.pool" not in (found.metadata.labels or {}):
                    raise ExecutorError(f"pod {ns}/{pod} is not a batch run of this VRE; not deleting it")
                await api.delete_namespaced_pod(pod, ns, grace_period_seconds=2)
            try:
                await api.delete_namespaced_secret(k8s.run_secret_name(k8s.batch_id(name)), ns)
            except ApiException as e:
                if e.status != 404:
                    raise
            deadline = time.monotonic() + KILL_WAIT_S
            while found is not None:
                try:
                    await api.read_namespaced_pod(pod, ns)
                except ApiException as e:
                    if e.status == 404:
                        return
                    raise
                if time.monotonic() > deadline:
                    raise ExecutorError(f"pod {ns}/{pod} is still there {KILL_WAIT_S} s after its deletion")
                await asyncio.sleep(0.2)

        try:
            self._call(delete, KILL_WAIT_S + API_TIMEOUT)
        except ApiException as e:
            if transient(e):
                raise self._unavailable(e) from None
            if e.status != 404:
                raise ExecutorError(f"could not delete pod {ns}/{pod}: {k8s.api_reason(e)}") from None
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None

    def unmark(self, name: str) -> None:
        """Nothing to tell: the observer on the pod's node sees the pod end."""

    def may_serve(self, name: str, datasets) -> bool:
        """Not a job with datasets while the observer of the worker's node is away: a new worker
        (anywhere) serves it without waiting for a word (``serve``)."""
        run = self._runs.get(name)
        return not datasets or run is None or self._observer_away.get(run.node, 0) <= time.monotonic()

    async def serve(self, worker: str, user: str, job_id: int) -> None:
        """Tell the observer on the worker's node which job (and user) its reads are for from now
        on, through the pod's annotations, which it watches; return once it says that it counts
        them so (``vre.jobs.observed``), else ObserverAway (the job waits in the queue). No word
        is needed where the observer cannot have marked the pod before the job's annotations: a
        pod created with them (``start_worker``), or one not placed on a node yet. Nothing when
        no observer records reads."""
        if self.born_with(worker, user, job_id) or not self.settings.k8s_read_observer:
            return
        serial = str(time.time_ns())
        patch = {"metadata": {"annotations": {AUDIT_JOB: str(job_id), AUDIT_JOB_USER: user, AUDIT_JOB_SERIAL: serial}}}
        try:
            pod = await self.acall(lambda api: api.patch_namespaced_pod(self.pod_name(worker), self.namespace(worker),
                                                                         patch))
        except (ApiException, k8s.KubernetesBackendError) as e:
            if getattr(e, "status", None) == 404:   # gone meanwhile: the next look sees it
                raise ClusterUnavailable(f"the pod of {worker} is gone; the job waits") from None
            if transient(e):
                raise self._unavailable(e) from None
            why = k8s.api_reason(e) if isinstance(e, ApiException) else str(e)
            raise ExecutorError(f"could not tell the observer that {worker} runs job {job_id}: {why}") from None
        if not pod.spec.node_name:   # unplaced: its node's observer first sees it with these annotations
            return
        if (pod.status.phase or "Pending") == "Pending":
            # placed, its gate not opened yet: the observer may mark it from an earlier view of it,
            # and says nothing until it runs (seconds): the job waits for it in the queue
            raise ClusterUnavailable(f"its worker {worker} has not started yet; the job waits")
        await self._noted(worker, pod.metadata.uid, pod.spec.node_name, job_id, serial)

    async def _noted(self, worker: str, uid: str, node: str, job_id: int, serial: str) -> None:
        """Wait up to ``NOTE_WAIT_S`` until the observer of ``node`` said that it counts the pod
        ``uid``'s reads for this hand-out of ``job_id`` (a word of an earlier hand-out, or of
        another node's observer, is not it). In vain: that node's idle workers take no job with
        datasets for ``NOTE_AWAY_S`` (``may_serve``, so no hand-out waits here meanwhile)."""
        deadline, pause = time.monotonic() + NOTE_WAIT_S, NOTE_POLL_S
        while True:
            if await asyncio.to_thread(observed.noted, self.settings.vre_db_url, uid, node) == (job_id, serial):
                self._observer_away.pop(node, None)
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, NOTE_POLL_MAX_S)
        log.error("the observer on node %s did not take note within %s s that worker %s runs job %s; that "
                  "node's idle workers take no job with datasets for %s s", node, NOTE_WAIT_S, worker, job_id,
                  NOTE_AWAY_S)
        self._observer_away[node] = time.monotonic() + NOTE_AWAY_S
        raise ObserverAway(f"the observer of dataset reads on node {node or '?'} has not taken note that worker "
                           f"{worker} runs this job (an admin checks the chart's observer pods)")

    # -- launching ------------------------------------------------------------------------------
    def identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return k8s.identity_files(plan)

    def prepare(self, plan: SessionPlan) -> None:
        k8s.prepare_node_paths(self.settings, plan)

    async def catalog_api(self, plan: SessionPlan) -> str:
        """Where ``plan``'s pod fetches its catalogue files from (``k8s.catalog_fetched``: under
        claims), else "": the catalogue listener at the hub Service's cluster IP (asked for once;
        the Service lives as long as the release, the engine's pod with it)."""
        if not k8s.catalog_fetched(self.settings, plan):
            return ""
        if not self._hub_ip:
            try:
                self._hub_ip = await self.acall(lambda api: k8s.hub_service_ip(self.settings, api))
            except k8s.KubernetesBackendError as e:
                if transient(e):
                    raise ClusterUnavailable(f"the cluster cannot tell the hub's address now ({e}); the job waits") \
                        from None
                raise ExecutorError(f"{plan.session_id} cannot fetch its catalogue files: {e}") from None
        return k8s.catalogue_api_url(self.settings, self._hub_ip)

    async def _launch(self, plan: SessionPlan, argv: list[str], devices, *, limits: dict) -> None:
        env = dict(plan.env)
        scheduler = plan.role == "scheduler"
        if scheduler:  # TCP and a token of its own in place of the host's sockets
            env.pop("VRE_AGENT_SOCKET", None)
            env.pop("VRE_ENGINE_WAKE", None)
            env.update(VRE_AGENT_PORT=str(AGENT_PORT), VRE_AGENT_TOKEN=secrets.token_urlsafe(32))
        sized = replace(plan, cpu=limits["cpu"], mem_mb=limits["mem_mb"])
        catalog_api = await self.catalog_api(plan)
        try:
            k8s.check_reads_policy(self.settings, plan)
            gpu_image = plan.gpus and self.settings.notebook_gpu_image
            image = k8s.check_image(self.settings, gpu_image or self.settings.notebook_image)
            pod = k8s.batch_pod(self.settings, sized, image=image, env=env, command=argv,
                                pull_policy=self.pull_policy, tmp_size=self.tmp_size, catalog_api=catalog_api)
            secret = k8s.run_secret(self.settings, sized, self.identity_files(plan), env)
            # the namespace and its policies with each scheduler; the quota with every run (an
            # admin may have changed the project's since the scheduler started)
            objects = k8s.project_objects(self.settings, plan, await asyncio.to_thread(
                k8s.read_project_quota, self.settings, plan.project))
            objects = objects if scheduler else [o for o in objects if o["kind"] == "ResourceQuota"]
            claims = k8s.storage_claims(self.settings, plan)   # the pool's home, the workspace or held folder
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        await asyncio.to_thread(self.kill, plan.session_id)  # a leftover of a crashed run never lingers
        if scheduler:
            write_private(self._token_file(plan.pool), env["VRE_AGENT_TOKEN"])

        async def create(api):
            for obj in [*objects, secret]:   # the pool's namespace, policies and quota, as rendered
                await k8s.put_object(api.api_client, obj)
            for claim in claims:             # made when missing, then kept with their files
                if await k8s.ensure_claim(api.api_client, claim):
                    log.info("created claim %s/%s", claim["metadata"]["namespace"], claim["metadata"]["name"])
            return await api.create_namespaced_pod(pod["metadata"]["namespace"], pod)

        try:
            created = await self.acall(create)
        except (k8s.KubernetesBackendError, ApiException) as e:
            why = k8s.api_reason(e) if isinstance(e, ApiException) else str(e)
            if transient(e):
                raise ClusterUnavailable(f"the cluster cannot take {plan.session_id} now ({why}); the job waits") \
                    from None
            raise ExecutorError(f"the cluster refused the pod of {plan.session_id}: {why}") from None
        self._killed.pop(plan.session_id, None)
        self._runs[plan.session_id] = _run(created)[1]
        log.info("started pod %s/%s for %s", pod["metadata"]["namespace"], pod["metadata"]["name"], plan.session_id)
