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
  (kept in the pool's run directory, the hub's alone); the project's ``hub-to-agent`` policy
  lets only the hub's pods reach that port. No doorbell: the engine looks every second anyway.
- The engine's looks do not call the API per run: each look lists this instance's batch pods
  once (``refresh``), and the hooks the engine calls on its loop (``alive``, ``oom_kills``,
  ``scheduler_address``) read that list. A pod that ends between looks is seen at the next one.
  When the API does not answer, nothing is guessed: starts wait (``ClusterUnavailable``).
- API calls run on an event loop of the executor's own (a thread), so the sync hooks can wait
  for them from the engine's loop or from its worker threads alike.
- OOM kills: a worker ended ``OOMKilled`` (the kubelet's word), or the count the worker's task
  reads in its own memory cgroup around the job (``task.oom_kills``: the researcher's side, so
  it can only mislabel how that researcher's own job failed).
- Dataset reads are not observed (no per-node observer yet): jobs with datasets run only where
  the deployment accepted that (``k8s_unobserved_reads``), as for sessions.
- GPUs and claims (``k8s_storage = "pvc"``) are not supported yet: ``service.submit`` refuses
  such jobs with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, replace

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..backends import kubernetes as k8s
from ..backends.host import prepare_held_folder, prepare_home_and_workspace
from ..plan import AGENT_PORT, SessionPlan, island_name
from ..settings import Settings
from .executor import SCHEDULER_PORT, ExecutorError, LocalDaskExecutor, SchedulerLost, Unavailable, _http

log = logging.getLogger("vre.jobs")
#: Seconds an API call may take.
API_TIMEOUT = 20
#: Seconds a deleted pod may take to be gone (its name is free again then).
KILL_WAIT_S = 60
#: Seconds between reads of a starting scheduler's pod (until it has an address).
READ_EVERY_S = 0.5
#: Seconds the engine waits for the cluster's API at its start before adopting what it can.
CONNECT_WAIT_S = 60


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
    seen: float = 0.0       # time.monotonic() when this was learnt

    @property
    def live(self) -> bool:
        return (not self.deleting and self.phase in ("Pending", "Running") and not self.ended
                and self.waiting not in k8s.FATAL_WAITING)


def _run(pod) -> tuple[str, Run]:
    meta, status = pod.metadata, pod.status
    labels = meta.labels or {}
    run = Run(meta.namespace, meta.name, labels.get("vre.pool", ""), labels.get("vre.role", ""),
              phase=status.phase or "Pending", ip=status.pod_ip or "", deleting=bool(meta.deletion_timestamp),
              waiting=k8s.waiting_reason(pod), seen=time.monotonic())
    for c in status.container_statuses or ():
        if c.state and c.state.terminated:
            run.ended = c.state.terminated.reason or "ended"
    return labels.get("vre.session", ""), run


class PodDaskExecutor(LocalDaskExecutor):
    """Runs jobs in Dask scheduler and worker pods in each pool's namespace."""

    listen_host = "0.0.0.0"   # its pod's address
    dask = "dask"             # the notebook image's
    scheduler_start_s = 180   # a pod is scheduled, its volumes mounted, then Dask starts
    oom_reported_inside = True   # its memory cgroup is on its node: the worker reads its own

    def __init__(self, settings: Settings):
        super().__init__(settings)
        # the hub's choices for its pods (c.KubernetesSpawner in the jupyterhub setting)
        options = settings.jupyterhub.get("KubernetesSpawner") or {}
        self.pull_policy = options.get("image_pull_policy", "IfNotPresent")
        self.tmp_size = options.get("tmp_size", "2Gi")
        self._runs: dict[str, Run] = {}       # run name -> its pod, as the last look (or a launch) saw it
        self._killed: dict[str, float] = {}   # run name -> when it was deleted (a look begun before misses it)
        self._fresh = False                   # whether the last look's list succeeded
        self._client: ApiClient | None = None
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
        return ClusterUnavailable(f"the cluster's API does not answer ({e or type(e).__name__}); jobs wait until it does")

    def _call(self, fn, timeout: float = API_TIMEOUT):
        """``await fn(core API)``, waited for from any thread. An API that does not answer is
        ClusterUnavailable; its refusals (ApiException) and a cluster that cannot be configured
        (KubernetesBackendError) pass through."""
        try:
            return self._submit(fn).result(timeout)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            raise self._unavailable(e) from None

    async def _acall(self, fn):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._submit(fn)), API_TIMEOUT)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            raise self._unavailable(e) from None

    # -- the looks ----------------------------------------------------------------------------
    async def connect(self) -> None:
        deadline = time.monotonic() + CONNECT_WAIT_S
        while not await self.refresh() and time.monotonic() < deadline:
            await asyncio.sleep(2)
        for name, run in list(self._runs.items()):   # a new hub pod: the jobs API's addresses again
            if run.role == "scheduler" and run.live and run.ip:
                await asyncio.to_thread(self.publish_address, run.pool)

    async def refresh(self) -> bool:
        """List this instance's batch pods (one call per look)."""
        begun = time.monotonic()
        selector = f"vre.instance={self.settings.instance},vre.pool"
        try:
            pods = await self._acall(lambda api: api.list_pod_for_all_namespaces(label_selector=selector))
        except (ApiException, ClusterUnavailable, k8s.KubernetesBackendError) as e:
            log.warning("could not list the batch pods: %s", k8s.api_reason(e) if isinstance(e, ApiException) else e)
            self._fresh = False
            return False
        runs = dict(_run(pod) for pod in pods.items)
        runs.pop("", None)
        # what changed while the list was on its way: a launch is kept, a deletion stays deleted
        runs.update({name: run for name, run in self._runs.items() if run.seen > begun})
        self._killed = {name: t for name, t in self._killed.items() if t > begun}
        self._runs = {name: run for name, run in runs.items() if name not in self._killed}
        self._fresh = True
        return True

    def alive(self, name: str) -> bool:
        if not self._fresh:
            raise ClusterUnavailable("the cluster's API did not answer the last look; jobs wait until it does")
        run = self._runs.get(name)
        return bool(run and run.live)

    def oom_kills(self, name: str) -> int:
        run = self._runs.get(name)
        return 1 if run and run.ended == "OOMKilled" else 0

    def _existing(self, pool: str) -> list[str]:
        pods = {n for n, r in self._runs.items() if r.pool == pool and r.role != "scheduler"}
        return sorted(pods | set(super()._existing(pool)))

    # -- where runs are -------------------------------------------------------------------------
    def namespace(self, name: str) -> str:
        """The namespace of the run ``name`` (``<pool>-scheduler``, ``<pool>-worker-<n>``)."""
        pool = name.rsplit("-worker-", 1)[0] if "-worker-" in name else name.removesuffix("-scheduler")
        return k8s.island_namespace(island_name(self.settings, pool), pool.removesuffix(".held"))

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
        return bool(self.alive(self.scheduler_name(pool)) and run.ip and self._token_file(pool).exists())

    async def _read(self, name: str) -> Run | None:
        """The run's pod as the API has it now (a scheduler still starting: its address)."""
        try:
            pod = await self._acall(lambda api: api.read_namespaced_pod(k8s.object_name(name), self.namespace(name)))
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        except ApiException as e:
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
        if run is None or not run.ip:
            raise ExecutorError(f"the scheduler of pool {pool} has no address yet")
        try:
            token = self._token_file(pool).read_text().strip()
        except OSError:
            raise ExecutorError(f"the agent token of pool {pool} is gone") from None
        return await _http((run.ip, AGENT_PORT), method, path, body, timeout, token=token)

    def scheduler_address(self, pool: str) -> str:
        run = self._runs.get(self.scheduler_name(pool))
        if run is None or not run.ip:
            raise ExecutorError(f"the scheduler of pool {pool} has no address yet")
        return f"tcp://{run.ip}:{SCHEDULER_PORT}"

    def pool_stopped(self, pool: str) -> None:
        super().pool_stopped(pool)
        self._token_file(pool).unlink(missing_ok=True)

    def log_tail(self, plan: SessionPlan, lines: int = 20) -> str:
        try:
            return self._call(lambda api: api.read_namespaced_pod_log(
                k8s.object_name(plan.session_id), k8s.namespace_name(plan), tail_lines=lines))
        except (ApiException, ClusterUnavailable, k8s.KubernetesBackendError):
            return "(no log)"

    # -- stopping -------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """Delete the run's pod and its Secret; return once the pod is gone (its name free)."""
        self._runs.pop(name, None)
        self._killed[name] = time.monotonic()
        ns, pod = self.namespace(name), k8s.object_name(name)

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
                await api.delete_namespaced_secret(k8s.run_secret_name(name), ns)
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
            if e.status != 404:
                raise ExecutorError(f"could not delete pod {ns}/{pod}: {k8s.api_reason(e)}") from None
        except k8s.KubernetesBackendError as e:
            raise self._unavailable(e) from None

    def unmark(self, name: str) -> None:
        """Nothing observes a pod's reads (``k8s_unobserved_reads``)."""

    async def serve(self, worker: str, user: str, job_id: int) -> None:
        """Nothing to tell: no observer records a pod's reads (the job's start names its datasets)."""

    # -- launching ------------------------------------------------------------------------------
    def identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return k8s.identity_files(plan)

    def prepare(self, plan: SessionPlan) -> None:
        """Home and workspace on a single node's host paths, held folders, a fresh run directory
        (the pool's, in the hub's state: the runtime files themselves go in the run's Secret)."""
        if self.settings.k8s_storage == "hostPath":
            prepare_home_and_workspace(plan)
            prepare_held_folder(plan)
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        plan.run_dir.mkdir(parents=True, mode=0o755)

    async def _launch(self, plan: SessionPlan, argv: list[str], devices, *, limits: dict) -> None:
        env = dict(plan.env)
        scheduler = plan.role == "scheduler"
        if scheduler:  # TCP and a token of its own in place of the host's sockets
            env.pop("VRE_AGENT_SOCKET", None)
            env.pop("VRE_ENGINE_WAKE", None)
            env.update(VRE_AGENT_PORT=str(AGENT_PORT), VRE_AGENT_TOKEN=secrets.token_urlsafe(32))
        sized = replace(plan, cpu=limits["cpu"], mem_mb=limits["mem_mb"])
        try:
            k8s.check_reads_policy(self.settings, plan)
            image = k8s.check_image(self.settings, self.settings.notebook_image)
            pod = k8s.batch_pod(self.settings, sized, image=image, env=env, command=argv,
                                pull_policy=self.pull_policy, tmp_size=self.tmp_size)
            secret = k8s.run_secret(self.settings, sized, self.identity_files(plan), env)
            objects = k8s.project_objects(self.settings, plan, await asyncio.to_thread(
                k8s.read_project_quota, self.settings, plan.project)) if scheduler else []
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        await asyncio.to_thread(self.kill, plan.session_id)  # a leftover of a crashed run never lingers
        if scheduler:
            token = self._token_file(plan.pool)
            token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            token.unlink(missing_ok=True)
            token.touch(mode=0o600)
            token.write_text(env["VRE_AGENT_TOKEN"])

        async def create(api):
            for obj in [*objects, secret]:   # the pool's namespace, policies and quota, as rendered
                await k8s.put_object(api.api_client, obj)
            return await api.create_namespaced_pod(pod["metadata"]["namespace"], pod)

        try:
            created = await self._acall(create)
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        except ApiException as e:
            why = k8s.api_reason(e)
            if e.status == 403 and "exceeded quota" in why:
                raise ClusterUnavailable(f"the project's namespace quota is in use ({why}); the job waits") from None
            raise ExecutorError(f"the cluster refused the pod of {plan.session_id}: {why}") from None
        self._killed.pop(plan.session_id, None)
        self._runs[plan.session_id] = _run(created)[1]
        log.info("started pod %s/%s for %s", pod["metadata"]["namespace"], pod["metadata"]["name"], plan.session_id)
