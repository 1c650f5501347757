"""Jobs that need no Dask as Kubernetes Jobs of their own (``k8s_job_runner = "jobs"``).

Notebook, script and function jobs run their task alone (``vre_session.jobs.task``): no scheduler
and no warm worker are needed, and a cluster shared by many tenants wants its own batch scheduler
to decide when each one starts. So each start of such a job is one ``batch/v1`` Job,
``vre-job-<id>-<attempt>``, in its pool's namespace (a held job's: the held namespace), rendered
from the pool's worker plan as a worker pod is (``backends.kubernetes.batch_job``: datasets
read-only, no privileges, no token, only allow-listed images, the project's policies and quota),
with the job's spec from its run's Secret. With ``k8s_kueue_queue`` the Job is created suspended
and labelled for Kueue, which starts it when the cluster's queue admits it; the project's own
quota and fair order are applied first, as for every job. Cluster jobs (a notebook's Dask
workers) stay on the project's Dask pool (``pods.PodDaskExecutor``).

The engine follows them as it follows pools: each look lists this instance's Jobs and their pods
once (``refresh``), and believes a listed Job only where such a Job is (its namespace and name
from its labels). How a job ended is the task's termination message: written inside the job's
pod, so untrusted like an agent's report (the engine checks every field). The kubelet's word
comes first where it has one: an ``OOMKilled`` container, a Job past its deadline (the run-time
limit, counted from its start, not while it waits suspended). A cancel deletes the Job. A Job
or pod that vanished, or a pod that gave up at the gate of dataset reads, is a lost start: the
engine re-queues it once, as for a lost worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

from kubernetes_asyncio.client import BatchV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..backends import kubernetes as k8s
from ..hostview.podgate import GATE_EXIT, OBSERVED_LABEL
from ..plan import SessionPlan, island_name
from ..settings import Settings
from .executor import ExecutorError
from .pods import ClusterUnavailable, PodDaskExecutor, transient
from .pools import KUBE_WORKER, WORKER_OVERHEAD_MB, as_kubernetes_job

log = logging.getLogger("vre.jobs")
#: Seconds a Job just created may be missing from a look's list (begun before it was made).
LIST_LAG_S = 30
#: Characters of a pod's termination message read as the task's report (the kubelet keeps 4096).
REPORT_MAX = 4096


@dataclass
class KubeJob:
    """What a look knows of one start of a job: its Job and the Job's pod."""
    namespace: str
    name: str
    suspended: bool = False
    ended: str = ""            # the Job's end condition: "Complete" or "Failed"; "" while it is on
    why: str = ""              # the Failed condition's reason (DeadlineExceeded, ...)
    pod: str = ""
    node: str = ""
    started: dt.datetime | None = None   # when its container started running
    unplaced: str = ""         # why the cluster has not placed its pod yet
    waiting: str = ""          # why its container waits (an image that cannot be pulled)
    exit_code: int | None = None
    terminated: str = ""       # the container's end (OOMKilled, Error, Completed)
    report: str = ""           # its termination message: the task's report
    gate_closed: bool = False  # it gave up at the gate: no observer marked its dataset mounts

    @property
    def finished(self) -> bool:
        """Whether this start ended: the Job says so, or its pod ended while the Job is not
        suspended (Kueue's preemption suspends the Job and ends its pod: it waits again)."""
        return bool(self.ended or (self.terminated and not self.suspended))

    @property
    def cannot_start(self) -> str:
        """Why its container will never start (an image that cannot be pulled), or ""."""
        return self.waiting if self.waiting in k8s.FATAL_WAITING else ""

    def where(self) -> dict:
        """The Job, pod and node of this start, for the audit (GPUs are a count: the node is what is known)."""
        return {"kubernetes_job": f"{self.namespace}/{self.name}", "pod": f"{self.namespace}/{self.pod}",
                "node": self.node}

    def result(self) -> dict | None:
        """The task's report, when it left one that is a JSON object."""
        try:
            value = json.loads(self.report[:REPORT_MAX]) if self.report else None
        except (ValueError, RecursionError):   # written in the job's pod: anything, '[' * 4096 too
            return None
        return value if isinstance(value, dict) else None


class KubeJobs:
    """Starts, follows and deletes the Kubernetes Jobs of jobs that need no Dask, through the
    API client and event loop of the pool executor (``PodDaskExecutor``)."""

    def __init__(self, settings: Settings, pods: PodDaskExecutor):
        self.settings, self.pods = settings, pods
        self._jobs: dict[str, KubeJob] = {}       # Job name -> what the last look saw
        self._made: dict[str, float] = {}         # Job name -> when this engine created it
        self.fresh = False

    def takes(self, kind: str) -> bool:
        return as_kubernetes_job(self.settings, kind)

    @staticmethod
    def worker(job_id: int, attempt: int) -> str:
        return KUBE_WORKER + k8s.kube_job_name(job_id, attempt)

    def namespace(self, pool: str) -> str:
        return k8s.island_namespace(island_name(self.settings, pool), pool.removesuffix(".held"))

    async def _batch(self, fn):
        """``await fn(BatchV1Api)`` on the executor's loop; an API that does not answer is
        ClusterUnavailable."""
        return await self.pods.acall(lambda core: fn(BatchV1Api(core.api_client)))

    # -- the looks --------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """List this instance's Jobs and their pods (two calls per look)."""
        selector = f"vre.instance={self.settings.instance},vre.role=job"
        try:
            jobs = await self._batch(lambda api: api.list_job_for_all_namespaces(label_selector=selector))
            pods = await self.pods.acall(lambda api: api.list_pod_for_all_namespaces(label_selector=selector))
        except (ApiException, ClusterUnavailable, k8s.KubernetesBackendError) as e:
            log.warning("could not list the jobs' Kubernetes Jobs: %s",
                        k8s.api_reason(e) if isinstance(e, ApiException) else e)
            self.fresh = False
            return False
        seen: dict[str, KubeJob] = {}
        for job in jobs.items:
            found = self._believe(job.metadata)
            if found is None:
                continue
            seen[found.name] = found
            found.suspended = bool(job.spec.suspend)
            for c in job.status.conditions or ():   # FailureTarget: failed, its pod still ending
                if c.type in ("Complete", "Failed", "FailureTarget") and c.status == "True":
                    found.ended = "Complete" if c.type == "Complete" else "Failed"
                    found.why = found.why or c.reason or ""
        # a Job's pod: the live one, else the newest (one try, but a resumed Job's new pod may
        # meet its last one ending)
        rank = lambda pod: (pod.metadata.deletion_timestamp is None, str(pod.metadata.creation_timestamp or ""))  # noqa: E731
        for pod in sorted(pods.items, key=rank):   # the one read last wins
            found = seen.get((pod.metadata.labels or {}).get("batch.kubernetes.io/job-name", ""))
            if found is not None and pod.metadata.namespace == found.namespace:
                self._read_pod(found, pod)
        self._jobs = seen
        self._made = {n: t for n, t in self._made.items() if n not in seen and time.monotonic() - t < LIST_LAG_S}
        self.fresh = True
        return True

    def _believe(self, meta) -> KubeJob | None:
        """A listed Job as one start of a job, where it is such a start's: named from its job
        and attempt, in its pool's namespace (labels alone are anyone's who can make a Job)."""
        labels = meta.labels or {}
        try:
            name = k8s.kube_job_name(int(labels.get("vre.job", "")), int(labels.get("vre.attempt", "")))
            ours = meta.name == name and meta.namespace == self.namespace(labels.get("vre.pool", ""))
        except (ValueError, k8s.KubernetesBackendError):
            ours = False
        if not ours:
            log.warning("Job %s/%s carries this VRE's job labels but is not where or named as such a Job is; "
                        "ignored", meta.namespace, meta.name)
            return None
        return KubeJob(meta.namespace, meta.name)

    @staticmethod
    def _read_pod(found: KubeJob, pod) -> None:
        """What ``pod`` says of ``found``'s start, in place of what an earlier pod of it said."""
        found.started, found.exit_code, found.terminated, found.report, found.gate_closed = None, None, "", "", False
        found.pod, found.node = pod.metadata.name, pod.spec.node_name or ""
        found.unplaced, found.waiting = k8s.unplaced_reason(pod), k8s.waiting_reason(pod)
        for c in pod.status.container_statuses or ():
            state = c.state
            if state and state.running and state.running.started_at:
                found.started = state.running.started_at
            if state and state.terminated:
                t = state.terminated
                found.started = found.started or t.started_at
                found.exit_code, found.terminated, found.report = t.exit_code, t.reason or "Error", t.message or ""
                found.gate_closed = bool((pod.metadata.labels or {}).get(OBSERVED_LABEL)) and t.exit_code == GATE_EXIT
        why = k8s.catalogue_failure(pod)
        if why:   # its job never ran: the engine counts a lost start, with this reason
            found.exit_code, found.terminated = None, f"{k8s.CATALOGUE_NOT_FETCHED}: {why}"

    def view(self, worker: str) -> KubeJob | None:
        return self._jobs.get(worker.removeprefix(KUBE_WORKER))

    def just_made(self, worker: str) -> bool:
        """Whether this engine created the Job so recently that a look may not list it yet."""
        made = self._made.get(worker.removeprefix(KUBE_WORKER))
        return made is not None and time.monotonic() - made < LIST_LAG_S

    # -- starting and deleting ----------------------------------------------------------------
    async def start(self, plan: SessionPlan, spec: dict, *, job_id: int, attempt: int, user: str,
                    cpu: float, mem_mb: int, gpus: int) -> str:
        """Create the Job of this start (its namespace, policies, quota, claims, LocalQueue and
        Secret with it; the Secret then belongs to the Job, so the cluster removes it with the
        Job); returns its ``Job.worker``. Once the Job's creation was asked for, ``just_made`` says
        so even if the answer was lost: the engine then waits for a look to list it."""
        name = k8s.kube_job_name(job_id, attempt)
        plan = plan.for_worker(name.removeprefix("vre-"), cpu=cpu, mem_mb=mem_mb + WORKER_OVERHEAD_MB, gpus=gpus)
        env = dict(plan.env)
        pods = self.pods
        catalog_api = await pods.catalog_api(plan)
        try:
            k8s.check_reads_policy(self.settings, plan)
            image = k8s.check_image(self.settings, (plan.gpus and self.settings.notebook_gpu_image)
                                    or self.settings.notebook_image)
            command = ["python3", "-m", "vre_session.jobs.task", f"{k8s.JOB_SPEC_DIR}/{k8s.JOB_SPEC_KEY}"]
            pod = k8s.batch_pod(self.settings, plan, image=image, env=env, command=command,
                                pull_policy=pods.pull_policy, tmp_size=pods.tmp_size, catalog_api=catalog_api)
            job = k8s.batch_job(self.settings, plan, pod, job_id=job_id, attempt=attempt, user=user)
            # its catalogue ticket lasts while the job has not ended (it may wait in the cluster's queue)
            secret = k8s.run_secret(self.settings, plan, pods.identity_files(plan), env, job=job_id)
            secret["stringData"][k8s.JOB_SPEC_KEY] = json.dumps(spec)
            objects = k8s.project_objects(self.settings, plan, await asyncio.to_thread(
                k8s.read_project_quota, self.settings, plan.project))
            claims = k8s.storage_claims(self.settings, plan)
            queues = [k8s.local_queue(self.settings, job["metadata"]["namespace"])] \
                if self.settings.k8s_kueue_cluster_queue else []
        except k8s.KubernetesBackendError as e:
            raise ExecutorError(str(e)) from None
        try:
            await asyncio.to_thread(k8s.prepare_storage, self.settings, plan)
        except ValueError as e:   # a plan the storage cannot serve (no home): the job's error, said
            raise ExecutorError(str(e)) from None

        async def create(core):
            for obj in [*objects, secret]:   # the namespace, its policies and quota, as rendered
                await k8s.put_object(core.api_client, obj)
            for claim in claims:             # made when missing, then kept with their files
                if await k8s.ensure_claim(core.api_client, claim):
                    log.info("created claim %s/%s", claim["metadata"]["namespace"], claim["metadata"]["name"])
            for queue in queues:
                if await k8s.ensure_local_queue(core.api_client, queue):
                    log.info("created Kueue LocalQueue %s/%s", queue["metadata"]["namespace"], queue["metadata"]["name"])
            ns, batch = job["metadata"]["namespace"], BatchV1Api(core.api_client)
            self._made[name] = time.monotonic()
            try:
                made = await batch.create_namespaced_job(ns, job)
            except ApiException as e:
                if e.status != 409:   # made by a start whose answer was lost: this start's, kept
                    raise
                made = await batch.read_namespaced_job(name, ns)
            secret["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                      "uid": made.metadata.uid}]
            await core.replace_namespaced_secret(secret["metadata"]["name"], ns, secret)

        try:
            await pods.acall(create)
        except (k8s.KubernetesBackendError, ApiException) as e:
            why = k8s.api_reason(e) if isinstance(e, ApiException) else str(e)
            if transient(e):
                raise ClusterUnavailable(f"the cluster cannot take job {job_id} now ({why}); it waits") from None
            raise ExecutorError(f"the cluster refused the Job of job {job_id}: {why}") from None
        log.info("created Job %s/%s%s", job["metadata"]["namespace"], name,
                 f" (suspended for Kueue queue {self.settings.k8s_kueue_queue})" if self.settings.k8s_kueue_queue else "")
        return KUBE_WORKER + name

    async def delete(self, pool: str, worker: str) -> None:
        """Delete the Job of ``worker`` (one start; its pod goes with it: a running job is
        stopped) and that start's Secret; gone already is fine."""
        name, ns = worker.removeprefix(KUBE_WORKER), self.namespace(pool)
        secret = k8s.run_secret_name(k8s.batch_id(name.removeprefix("vre-")))

        async def remove(core):
            batch = BatchV1Api(core.api_client)
            for call in (lambda: batch.delete_namespaced_job(name, ns, propagation_policy="Background"),
                         lambda: core.delete_namespaced_secret(secret, ns)):
                try:
                    await call()
                except ApiException as e:
                    if e.status != 404:
                        raise
        try:
            await self.pods.acall(remove)
        except ApiException as e:
            raise ExecutorError(f"could not delete Job {ns}/{name}: {k8s.api_reason(e)}") from None
        self._jobs.pop(name, None)
        self._made.pop(name, None)
