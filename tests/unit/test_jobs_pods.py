"""The Kubernetes executor's bookkeeping without a cluster (tests/k8s/test_helm_install.py runs jobs
in pods of the real test cluster): where each run's pod is, what one look's list says of each
run, and that a cluster that does not answer is never taken for an answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from types import SimpleNamespace as NS

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from vre.backends.kubernetes import batch_id, object_name
from vre.jobs.executor import ExecutorError, SchedulerLost, Worker
from vre.jobs.pods import ClusterUnavailable, PodDaskExecutor
from vre.settings import Settings


def pod(session: str, pool: str, role: str = "worker", phase: str = "Running", ip: str = "10.244.0.9",
        waiting: str = "", ended: str = "", deleting: bool = False, labelled: bool = True, namespace: str = "",
        name: str = "", exit_code: int = 1, observed: bool = False):
    """A pod as the API lists it; by default where and as the executor names that run's pod."""
    state = NS(waiting=NS(reason=waiting) if waiting else None,
               terminated=NS(reason=ended, exit_code=exit_code) if ended else None)
    labels = {"vre.session": session, "vre.role": role, **({"vre.pool": pool} if labelled else {}),
              **({"vre.reads": "observed"} if observed else {})}
    held = pool.endswith(".held")
    namespace = namespace or (f"vre-0held-{pool[:-5]}" if held else f"vre-{pool}")
    return NS(metadata=NS(name=name or object_name(batch_id(session)), namespace=namespace, labels=labels,
                          deletion_timestamp="now" if deleting else None, uid=f"uid-{session}"),
              spec=NS(node_name="node-3"),
              status=NS(phase=phase, pod_ip=ip, container_statuses=[NS(state=state)],
                        conditions=[NS(type="PodScheduled", status="False", reason="Unschedulable",
                                       message="0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")]
                        if phase == "Pending" and not ip else []))


class FakeCore:
    """What the executor asks of CoreV1Api: the pods, and a list that can be held or fail."""

    def __init__(self):
        self.pods: dict[str, object] = {}
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None   # the list waits for it (on the executor's own loop)
        self.deleted: list[str] = []

    async def list_pod_for_all_namespaces(self, label_selector: str):
        assert label_selector == "vre.instance=vre,vre.pool,vre.role!=job"
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 10)
        if self.fail is not None:
            raise self.fail
        return NS(items=list(self.pods.values()))

    async def read_namespaced_pod(self, name, ns):
        found = next((p for p in self.pods.values() if p.metadata.name == name), None)
        if found is None:
            raise ApiException(status=404)
        return found

    async def delete_namespaced_pod(self, name, ns, grace_period_seconds):
        self.deleted.append(f"{ns}/{name}")
        self.pods = {k: p for k, p in self.pods.items() if p.metadata.name != name}

    async def delete_namespaced_secret(self, name, ns):
        raise ApiException(status=404)

    async def read_namespaced_service(self, name, ns):
        self.services_read = getattr(self, "services_read", 0) + 1
        if (ns, name) != ("vre", "vre-hub"):
            raise ApiException(status=404, reason="Not Found")
        return NS(spec=NS(cluster_ip="10.96.0.42"))


def fake_executor(tmp_path, **settings) -> PodDaskExecutor:
    """The pool executor of instance ``vre`` on Kubernetes, its API a ``FakeCore``."""
    ex = PodDaskExecutor(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", instance="vre",
                                  backend="kubernetes", **settings))
    ex.core = FakeCore()

    async def core():
        return ex.core
    ex._core = core
    return ex


@pytest.fixture
def executor(tmp_path):
    return fake_executor(tmp_path)


def test_each_run_is_in_its_pools_namespace(executor):
    assert executor.namespace("lung-scheduler") == executor.namespace("lung-worker-12") == "vre-lung"
    assert executor.namespace("lung.held-scheduler") == executor.namespace("lung.held-worker-1") == "vre-0held-lung"
    assert executor.namespace("a-worker-b-worker-3") == "vre-a-worker-b"   # the last "-worker-" names the run
    assert executor.namespace("abc-worker-1-scheduler") == "vre-abc-worker-1"   # a slug may hold "-worker-"
    assert executor.pod_name("lung-scheduler") == "batch-lung-scheduler"   # no session's <user>-<project>


def test_a_look_lists_the_pods_once_and_the_hooks_read_that_list(executor):
    core = executor.core
    core.pods = {n: p for n, p in [
        ("lung-scheduler", pod("lung-scheduler", "lung", "scheduler")),
        ("lung-worker-1", pod("lung-worker-1", "lung")),
        ("lung-worker-2", pod("lung-worker-2", "lung", phase="Pending", waiting="ErrImageNeverPull")),
        ("lung-worker-3", pod("lung-worker-3", "lung", phase="Failed", ended="OOMKilled")),
        ("lung-worker-4", pod("lung-worker-4", "lung", deleting=True)),
        ("lung-worker-5", pod("lung-worker-5", "lung", phase="Pending", ip="")),
        ("lung-worker-6", pod("lung-worker-6", "lung", phase="Failed", ended="Error", exit_code=70, observed=True)),
        ("lung-worker-7", pod("lung-worker-7", "lung", phase="Failed", ended="Error", exit_code=70)),
    ]}
    with pytest.raises(ClusterUnavailable):   # no look yet: never a guess
        executor.alive("lung-worker-1")
    assert asyncio.run(executor.refresh())
    assert {n: executor.alive(n) for n in core.pods} == {
        "lung-scheduler": True, "lung-worker-1": True, "lung-worker-2": False, "lung-worker-3": False,
        "lung-worker-4": False, "lung-worker-5": True, "lung-worker-6": False, "lung-worker-7": False}
    assert executor.oom_kills("lung-worker-3") == 1 and executor.oom_kills("lung-worker-1") == 0
    # a worker that gave up at its gate: no observer of dataset reads marked it (the job says why)
    assert executor.why_lost("lung-worker-6") == (
        "its worker could not start: dataset reads cannot be recorded (no observer marked its dataset mounts "
        "on node node-3 within 60 s)")
    assert executor.why_lost("lung-worker-7") == executor.why_lost("lung-worker-3") == ""   # exit 70 of its own
    assert executor.placement("lung-worker-1") == {"pod": "vre-lung/batch-lung-worker-1", "node": "node-3"}
    assert executor.placement("lung-worker-9") == {}
    assert executor.waiting_for("lung-worker-5") == (
        "the cluster has no place for its worker yet: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    assert executor.waiting_for("lung-worker-1") == ""
    assert executor.scheduler_address("lung") == "tcp://10.244.0.9:8786"
    assert executor._existing("lung") == [f"lung-worker-{i}" for i in range(1, 8)]
    with pytest.raises(ExecutorError, match="no address yet"):
        executor.scheduler_address("other")

    core.fail = OSError("connection refused")
    assert not asyncio.run(executor.refresh())
    with pytest.raises(ClusterUnavailable, match="did not answer the last look"):
        executor.alive("lung-worker-1")


def test_what_changes_while_a_list_is_on_its_way_is_not_lost(executor):
    """A pod launched while a look's list was on its way is kept; one deleted meanwhile stays gone."""
    core = executor.core
    core.pods = {"lung-worker-1": pod("lung-worker-1", "lung")}

    async def scenario():
        assert await executor.refresh()
        core.gate = threading.Event()
        look = asyncio.create_task(executor.refresh())
        await asyncio.sleep(0.05)
        # meanwhile: worker 2 is launched, worker 1 deleted (the held list still has 1, not 2)
        from vre.jobs.pods import _run
        executor._runs["lung-worker-2"] = _run(pod("lung-worker-2", "lung", phase="Pending", ip=""))[1]
        await asyncio.to_thread(executor.kill, "lung-worker-1")
        core.gate.set()
        assert await look

    asyncio.run(scenario())
    assert executor.alive("lung-worker-2") and not executor.alive("lung-worker-1")
    assert core.deleted == ["vre-lung/batch-lung-worker-1"]


def test_a_pod_is_a_run_only_where_and_as_that_run_is_named(executor, caplog):
    """Labels are anyone's who can make a pod: one elsewhere, or named otherwise, is no run (the
    engine would send it the agent's token and trust its answers)."""
    executor.core.pods = {
        "lung-scheduler": pod("lung-scheduler", "lung", "scheduler", namespace="someone-else"),
        "lung-worker-1": pod("lung-worker-1", "lung", name="lung-worker-1"),
        "lung-worker-2": pod("lung-worker-2", "lung", role="scheduler"),     # a role that is not its name's
        "other-worker-1": pod("other-worker-1", "lung"),                     # another pool's name
        "lung-worker-3": pod("lung-worker-3", "lung"),
    }
    assert asyncio.run(executor.refresh())
    assert [n for n in executor.core.pods if executor.alive(n)] == ["lung-worker-3"]
    assert "is not where or named as such a run is" in caplog.text
    with pytest.raises(ExecutorError, match="no address yet"):
        executor.scheduler_address("lung")


def test_an_ended_schedulers_address_is_never_used(executor):
    """An ended pod keeps its address in its status; the cluster may have given it to another
    project's pod already."""
    executor.core.pods = {"lung-scheduler": pod("lung-scheduler", "lung", "scheduler", phase="Failed", ended="Error")}
    assert asyncio.run(executor.refresh())
    with pytest.raises(ExecutorError, match="no address yet"):
        executor.scheduler_address("lung")
    executor.core.pods = {"lung-scheduler": pod("lung-scheduler", "lung", "scheduler", phase="Pending")}
    assert asyncio.run(executor.refresh()) and not executor.agent_ready("lung")


def test_only_the_vres_batch_pods_are_deleted(executor):
    executor.core.pods = {"lung-worker-1": pod("lung-worker-1", "lung", labelled=False)}
    with pytest.raises(ExecutorError, match="not a batch run of this VRE"):
        executor.kill("lung-worker-1")
    assert executor.core.deleted == []
    executor.kill("lung-worker-7")   # gone already: nothing to do


def test_the_agent_is_asked_with_the_pools_token_only(executor):
    executor.core.pods = {"lung-scheduler": pod("lung-scheduler", "lung", "scheduler", ip="127.0.0.1")}
    assert asyncio.run(executor.refresh())
    assert not executor.agent_ready("lung")   # no token: the engine cannot ask it
    with pytest.raises(ExecutorError, match="agent token of pool lung is gone"):
        asyncio.run(executor.agent("lung", "GET", "/jobs"))
    # a scheduler no engine can ask (a new hub pod without the token): its jobs are taken for lost
    with pytest.raises(SchedulerLost, match="no token for the agent of pool lung"):
        asyncio.run(executor.status("lung"))
    token = executor._token_file("lung")
    token.parent.mkdir(parents=True)
    token.write_text("t" * 43)
    assert executor.agent_ready("lung")
    executor.pool_stopped("lung")
    assert not token.exists() and not executor.agent_ready("lung")


# --- jobs as Kubernetes Jobs: what one look's lists say of each start ---------------------------
def kube_job(job_id: int, attempt: int = 1, pool: str = "lung", *, suspend: bool = False, condition: str = "",
             why: str = "", name: str = "", namespace: str = ""):
    labels = {"vre.job": str(job_id), "vre.attempt": str(attempt), "vre.pool": pool, "vre.role": "job"}
    conditions = [NS(type=condition, status="True", reason=why)] if condition else []
    return NS(metadata=NS(name=name or f"vre-job-{job_id}-{attempt}", namespace=namespace or f"vre-{pool}",
                          labels=labels),
              spec=NS(suspend=suspend), status=NS(conditions=conditions))


def job_pod(job, *, running: bool = False, terminated: tuple | None = None, observed: bool = False,
            deleting: bool = False, made: str = "2026-12-06T10:00:00Z", suffix: str = "x7k2p"):
    """The pod of a listed Job: running, or ended as (reason, exit code, termination message)."""
    state = NS(running=NS(started_at="2026-12-06T10:00:00Z") if running else None, waiting=None,
               terminated=NS(reason=terminated[0], exit_code=terminated[1], message=terminated[2],
                             started_at="2026-12-06T10:00:00Z") if terminated else None)
    labels = {"batch.kubernetes.io/job-name": job.metadata.name, **({"vre.reads": "observed"} if observed else {})}
    return NS(metadata=NS(name=f"{job.metadata.name}-{suffix}", namespace=job.metadata.namespace, labels=labels,
                          deletion_timestamp="now" if deleting else None, creation_timestamp=made),
              spec=NS(node_name="node-5"), status=NS(container_statuses=[NS(state=state)], conditions=[]))


def test_a_look_at_kubernetes_jobs_believes_only_where_and_as_such_a_job_is_named(executor, monkeypatch, caplog):
    from vre.jobs import kubejobs

    jobs = [kube_job(1, suspend=True), kube_job(2), kube_job(3, condition="Complete"),
            kube_job(4, condition="Failed", why="DeadlineExceeded"), kube_job(5, pool="lung.held", namespace="vre-0held-lung"),
            kube_job(6), kube_job(7, namespace="vre-other"), kube_job(8, name="vre-job-9-1")]
    # job 1's Job was resumed after a preemption: its new pod waits while the old one still ends
    pods = [job_pod(jobs[0], terminated=("Error", 0, '{"cancelled": true}'), deleting=True, suffix="old"),
            job_pod(jobs[0], made="2026-12-06T10:05:00Z", suffix="new"),
            job_pod(jobs[1], running=True), job_pod(jobs[2], terminated=("Completed", 0, '{"returncode": 0}')),
            job_pod(jobs[5], terminated=("Error", 70, ""), observed=True),
            job_pod(jobs[6], running=True)]
    listed = {"jobs": NS(items=jobs), "pods": NS(items=pods)}

    class Batch:
        async def list_job_for_all_namespaces(self, label_selector):
            assert label_selector == "vre.instance=vre,vre.role=job"
            return listed["jobs"]

    async def list_pods(label_selector):
        assert label_selector == "vre.instance=vre,vre.role=job"
        return listed["pods"]
    executor.core.list_pod_for_all_namespaces = list_pods
    executor.core.api_client = None
    monkeypatch.setattr(kubejobs, "BatchV1Api", lambda client: Batch())
    kube = kubejobs.KubeJobs(executor.settings, executor)
    assert asyncio.run(kube.refresh()) and kube.fresh
    view = {i: kube.view(f"k8s-job/vre-job-{i}-1") for i in range(1, 10)}
    assert view[1].suspended and not view[1].finished and view[1].started is None
    assert view[1].pod == "vre-job-1-1-new" and view[1].report == "" and view[1].terminated == ""
    assert view[2].started and view[2].node == "node-5" and not view[2].finished
    assert view[2].where() == {"kubernetes_job": "vre-lung/vre-job-2-1", "pod": "vre-lung/vre-job-2-1-x7k2p",
                               "node": "node-5"}
    assert view[3].finished and view[3].result() == {"returncode": 0}
    assert view[4].ended == "Failed" and view[4].why == "DeadlineExceeded" and view[4].result() is None
    assert view[5] is not None                          # a held job's Job, in the held namespace
    assert view[6].gate_closed and view[6].exit_code == 70
    assert view[7] is None and view[8] is None and view[9] is None   # not where, or not as, such a Job is
    assert "vre-other/vre-job-7-1 carries this VRE's job labels" in caplog.text
    assert not kube.just_made("k8s-job/vre-job-1-1")
    # a report that is not a JSON object is no report
    pods[3] = job_pod(jobs[2], terminated=("Completed", 0, "[1, 2]"))
    asyncio.run(kube.refresh())
    assert kube.view("k8s-job/vre-job-3-1").result() is None

    listed["jobs"] = OSError("connection refused")

    async def broken(label_selector):
        raise OSError("connection refused")
    Batch.list_job_for_all_namespaces = lambda self, label_selector: broken(label_selector)
    assert not asyncio.run(kube.refresh()) and not kube.fresh


def test_a_batch_pods_catalogue_comes_from_the_hub_services_address_under_claims(tmp_path):
    """Under claims a worker's first container fetches its catalogue from the VRE service at the
    hub Service's cluster IP (``k8s_hub_service``), asked for once; a Service that is not there
    is a refusal with the reason; on hostPath storage nothing is asked."""
    from vre.plan import Mount, SessionPlan
    from pathlib import Path
    mounts = (Mount(Path("/st/catalog/ct"), "/opt/vre/catalog/ct", True, "catalog"),)
    plan = SessionPlan(user="ann", project="lung", profile="small", role="worker", session_id="lung-worker-1",
                       uid=300001, gid=300001, cpu=1, mem_mb=512, gpus=0, network="vre-lung", datasets=("ct",),
                       mounts=mounts, env={}, labels={})

    def made(**kw):
        return fake_executor(tmp_path, k8s_hub_namespace="vre", **kw)
    ex = made(k8s_storage="pvc", k8s_hub_service="vre-hub")
    for _ in range(2):
        assert asyncio.run(ex.catalog_api(plan)) == "http://10.96.0.42:8083/services/vre/api"
    assert ex.core.services_read == 1
    elsewhere = made(k8s_storage="pvc", k8s_hub_service="hub")
    with pytest.raises(ExecutorError, match="lung-worker-1 cannot fetch its catalogue files: no hub Service vre/hub"):
        asyncio.run(elsewhere.catalog_api(plan))
    local = made()
    assert asyncio.run(local.catalog_api(plan)) == "" and not hasattr(local.core, "services_read")
    busy = made(k8s_storage="pvc", k8s_hub_service="vre-hub")

    async def overloaded(name, ns):
        raise ApiException(status=503, reason="Service Unavailable")
    busy.core.read_namespaced_service = overloaded
    with pytest.raises(ClusterUnavailable, match="the job waits"):   # waited for, not the job's failure
        asyncio.run(busy.catalog_api(plan))


def test_a_worker_whose_catalogue_could_not_be_fetched_is_a_lost_start_with_the_reason(executor):
    """A batch pod's catalogue container fails when it cannot have a catalogue (``--required``):
    the run is over, and the engine's reason for the lost start says why in the fetcher's words."""
    failed = pod("lung-worker-1", "lung", phase="Failed")
    failed.status.container_statuses = [NS(state=NS(waiting=NS(reason="PodInitializing"), terminated=None))]
    failed.status.init_container_statuses = [NS(name="catalogue", state=NS(waiting=None, terminated=NS(
        exit_code=1, reason="Error", message="vre-catalogue: ct/index.sqlite: HTTP Error 403: Forbidden; "
                                             "the pod does not start\nvre-catalogue: 0 of 1 catalogue(s) fetched\n")))]
    executor.core.pods["w"] = failed
    assert asyncio.run(executor.refresh())
    assert not executor.alive("lung-worker-1")
    assert executor.why_lost("lung-worker-1") == (
        "its worker could not start: its datasets' catalogue files could not be had "
        "(ct/index.sqlite: HTTP Error 403: Forbidden; the pod does not start)")


def test_a_kubernetes_jobs_start_puts_its_projects_objects_then_its_job_and_gives_the_secret_to_it(
        tmp_path, monkeypatch):
    """``KubeJobs.start``: the project's objects and the run's Secret (with the job's spec) are put
    first, then the Job, suspended for Kueue with its LocalQueue; the Secret then belongs to the Job.
    A Job a lost answer already made is this start's; a busy API is waited for, a refusal is the
    job's error, and once its creation was asked for the engine waits for a look to list it. A
    plan the deployment refuses (an image off the allow-list, unrecorded reads) asks nothing."""
    from vre.backends import kubernetes as backend
    from vre.jobs import kubejobs
    from vre.jobs.pods import ClusterUnavailable
    from vre.plan import Mount, SessionPlan
    from pathlib import Path

    calls: list[str] = []
    answers: dict[str, Exception | None] = {"create": None}

    async def put_object(client, obj):
        calls.append(f"put {obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}")
        if obj["kind"] == "Secret":
            put["secret"] = obj
    put: dict = {}

    async def ensure_local_queue(client, queue):
        calls.append(f"queue {queue['metadata']['namespace']}/{queue['metadata']['name']}")
        return True

    class Batch:
        async def create_namespaced_job(self, ns, job):
            calls.append(f"create Job {ns}/{job['metadata']['name']}")
            put["job"] = job
            if answers["create"] is not None:
                raise answers["create"]
            return NS(metadata=NS(uid="uid-made"))

        async def read_namespaced_job(self, name, ns):
            calls.append(f"read Job {ns}/{name}")
            return NS(metadata=NS(uid="uid-before"))

    async def replace_namespaced_secret(name, ns, body):
        calls.append(f"replace Secret {ns}/{name}")
        put["owner"] = body["metadata"]["ownerReferences"]

    monkeypatch.setattr(backend, "put_object", put_object)
    monkeypatch.setattr(backend, "ensure_local_queue", ensure_local_queue)
    monkeypatch.setattr(backend, "read_project_quota", lambda settings, slug: backend.ProjectQuota(4, 8192, 0, 9))
    monkeypatch.setattr(kubejobs, "BatchV1Api", lambda client: Batch())
    monkeypatch.setattr(backend, "prepare_storage", lambda settings, plan: calls.append(f"storage {plan.session_id}"))

    def made(**kw):
        ex = fake_executor(tmp_path, **kw)
        ex.core.api_client = None
        ex.core.replace_namespaced_secret = replace_namespaced_secret
        return kubejobs.KubeJobs(ex.settings, ex)
    mounts = (Mount(Path("/st/ct"), "/data/ct", True, "dataset"),)
    plan = SessionPlan(user="ann", project="lung", profile="small", role="worker", session_id="lung-worker",
                       uid=300001, gid=300001, cpu=1, mem_mb=512, gpus=0, network="vre-lung", datasets=("ct",),
                       mounts=mounts, env={}, labels={"vre.user": "ann", "vre.project": "lung"},
                       run_dir=tmp_path / "run" / "lung-worker")
    start = dict(job_id=7, attempt=1, user="ann", cpu=1.0, mem_mb=512, gpus=0)
    spec = {"id": 7, "kind": "script", "worker": "vre-job-7-1"}

    kube = made(k8s_unobserved_reads=True, k8s_kueue_queue="vre-batch", k8s_kueue_cluster_queue="research")
    assert asyncio.run(kube.start(plan, spec, **start)) == "k8s-job/vre-job-7-1"
    assert calls[0] == "storage job-7-1"   # the node's folders first (hostPath storage)
    kinds = [c.split()[1] for c in calls if c.startswith("put")]
    assert kinds[0] == "Namespace" and kinds[-1] == "Secret" and {"NetworkPolicy", "ResourceQuota"} <= set(kinds)
    assert calls[-3:] == ["queue vre-lung/vre-batch", "create Job vre-lung/vre-job-7-1",
                          "replace Secret vre-lung/batch-job-7-1-run"]
    assert json.loads(put["secret"]["stringData"][backend.JOB_SPEC_KEY]) == spec
    job = put["job"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][backend.KUEUE_QUEUE_LABEL] == "vre-batch"
    assert job["metadata"]["labels"]["vre.job"] == "7" and job["metadata"]["labels"]["vre.attempt"] == "1"
    assert put["owner"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "vre-job-7-1", "uid": "uid-made"}]
    assert kube.just_made("k8s-job/vre-job-7-1")

    calls.clear()
    answers["create"] = ApiException(status=409, reason="AlreadyExists")   # a start whose answer was lost
    assert asyncio.run(kube.start(plan, spec, **start)) == "k8s-job/vre-job-7-1"
    assert calls[-2:] == ["read Job vre-lung/vre-job-7-1", "replace Secret vre-lung/batch-job-7-1-run"]
    assert put["owner"][0]["uid"] == "uid-before"

    answers["create"] = ApiException(status=503, reason="Service Unavailable")
    second = dict(start, attempt=2)
    with pytest.raises(ClusterUnavailable, match="cannot take job 7 now .*it waits"):
        asyncio.run(kube.start(plan, spec, **second))
    assert kube.just_made("k8s-job/vre-job-7-2")   # asked for: a look may yet list it
    answers["create"] = ApiException(status=422, reason="Unprocessable Entity")
    with pytest.raises(ExecutorError, match="the cluster refused the Job of job 7"):
        asyncio.run(kube.start(plan, spec, **dict(start, attempt=3)))

    calls.clear()
    with pytest.raises(ExecutorError, match="not on this deployment's allow-list"):
        asyncio.run(made(k8s_unobserved_reads=True, notebook_image="evil:latest",
                         k8s_image_allowlist="localhost/vre-notebook:latest").start(plan, spec, **start))
    with pytest.raises(ExecutorError, match="record"):
        asyncio.run(made().start(plan, spec, **start))
    assert calls == []


# --- a job's hand-out waits for the observer on its worker's node ---------------------------------
def test_a_job_is_handed_out_only_once_the_observer_of_its_workers_node_counts_its_reads(tmp_path, monkeypatch):
    """``serve`` annotates the worker's pod and returns only when the observer of the pod's node
    said (through the VRE service, ``jobs.observed``) that it counts the pod's reads for this
    hand-out: not at an earlier word about the same job, nor at another node's observer's."""
    from vre import db as vdb
    from vre.jobs import observed, pods
    ex = fake_executor(tmp_path, k8s_read_observer=True)
    url = ex.settings.vre_db_url
    vdb.upgrade(url)
    monkeypatch.setattr(pods, "NOTE_WAIT_S", 0.5)
    patches, quick = [], []   # quick: an observer that speaks before the patch is answered

    async def patch_namespaced_pod(name, ns, body):
        notes = body["metadata"]["annotations"]
        patches.append((ns, name, notes))
        if quick:
            observed.record(url, quick.pop(), [("uid-w1", int(notes["vre.audit/job"]), notes["vre.audit/job-serial"])])
        return NS(metadata=NS(uid="uid-w1"), spec=NS(node_name=None if placed == [False] else "node-3"),
                  status=NS(phase="Pending" if placed == ["not started"] else "Running"))
    ex.core.patch_namespaced_pod = patch_namespaced_pod
    placed = []   # [False]: the pod is not placed on a node yet; ["not started"]: placed, not past its gate
    observed.record(url, "node-3", [("uid-w1", 7, "1")])   # this job's earlier hand-out to the same pod

    async def hand_out(job: int, *, says: str, after: float | None = 0.05) -> float:
        """Serve ``job``; the observer of ``says`` speaks for the pod ``after`` seconds after the
        patch (0: as it is made; None: never). Returns how long ``serve`` took."""
        done = len(patches)

        async def observer():
            while len(patches) == done:
                await asyncio.sleep(0.001)
            await asyncio.sleep(after)
            observed.record(url, says, [("uid-w1", job, patches[-1][2]["vre.audit/job-serial"])])
        if after == 0:
            quick.append(says)
        told = asyncio.ensure_future(observer() if after else asyncio.sleep(0))
        began = time.monotonic()
        try:
            await ex.serve("lung-worker-1", "bob", job)
            return time.monotonic() - began
        finally:
            told.cancel() if after is None else await told

    assert asyncio.run(hand_out(7, says="node-3", after=0.2)) >= 0.2   # the earlier word did not stand for it
    ((ns, name, notes),) = patches
    assert (ns, name) == ("vre-lung", object_name(batch_id("lung-worker-1")))
    assert notes["vre.audit/job"] == "7" and notes["vre.audit/job-user"] == "bob" and notes["vre.audit/job-serial"]
    # another node's observer cannot speak for the pod (nor overwrite what its own node's said):
    # the job waits in the queue, saying why, after NOTE_WAIT_S
    looks, noted = [], observed.noted
    monkeypatch.setattr(observed, "noted", lambda *a: looks.append(a) or noted(*a))
    with pytest.raises(pods.ObserverAway, match="observer of dataset reads on node node-3 has not taken note"):
        asyncio.run(hand_out(8, says="node-9"))
    # while it waits it looks less often the longer it waits: a dozen reads of the database in
    # the 0.5 s, not one each 10 ms (50)
    assert 5 <= len(looks) <= 15, len(looks)
    monkeypatch.setattr(observed, "noted", noted)
    assert observed.noted(url, "uid-w1", "node-3") == (7, notes["vre.audit/job-serial"])
    # that node's observer is away now: its idle workers take no job with datasets meanwhile (so
    # no hand-out waits for it); a word there in time (a quick observer) ends it
    ex._runs["lung-worker-1"] = NS(node="node-3")
    assert not ex.may_serve("lung-worker-1", ["ct"])   # a job with datasets takes a worker elsewhere meanwhile
    assert ex.may_serve("lung-worker-1", [])
    assert asyncio.run(hand_out(10, says="node-3", after=0)) < 0.5
    assert ex.may_serve("lung-worker-1", ["ct"])
    assert asyncio.run(hand_out(11, says="node-3", after=0.1)) >= 0.1   # waited for again
    # a worker pod created for its job names it from the start (the observer marks it so before
    # anything runs in it): nothing to patch, nothing to wait for
    ex.workers["lung-worker-2"] = Worker("lung-worker-2", "lung", (), born_for=(12, "ann"))
    asyncio.run(ex.serve("lung-worker-2", "ann", 12))
    assert len(patches) == 4 and ex.workers["lung-worker-2"].born_for is None   # its next hand-out is told
    # a pod not placed yet: its node's observer first sees it with the job; no wait
    placed.append(False)
    assert asyncio.run(hand_out(13, says="node-3", after=None)) < 0.1 and len(patches) == 5
    # one placed but not started yet: the job waits for it, no word waited for, the node not away
    placed[:] = ["not started"]
    with pytest.raises(ClusterUnavailable, match="its worker lung-worker-1 has not started yet"):
        asyncio.run(hand_out(14, says="node-3", after=None))
    assert "node-3" not in ex._observer_away and len(patches) == 6
    placed.clear()
    # no observer configured: nothing to tell, nothing to wait for
    ex.settings = dataclasses.replace(ex.settings, k8s_read_observer=False)
    asyncio.run(ex.serve("lung-worker-1", "bob", 15))
    assert len(patches) == 6


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_observers_words_are_kept_per_pod_and_node_on_either_database(backend, request, tmp_path, monkeypatch):
    """``jobs.observed`` on SQLite and PostgreSQL (the upsert is each dialect's own): the last word
    per pod and node stands, words older than ``KEEP`` and beyond ``PER_NODE`` go."""
    import datetime as dt

    from vre import db as vdb
    from vre.jobs import observed
    url = f"sqlite:///{tmp_path / 'vre.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url)
    observed.record(url, "n1", [("a", 1, "s1"), ("b", 2, "s2")])
    observed.record(url, "n1", [("a", 3, "s3")])
    observed.record(url, "n2", [("a", 4, "s4")])
    assert [observed.noted(url, "a", "n1"), observed.noted(url, "b", "n1"), observed.noted(url, "a", "n2"),
            observed.noted(url, "b", "n2")] == [(3, "s3"), (2, "s2"), (4, "s4"), None]
    monkeypatch.setattr(observed, "PER_NODE", 2)   # a node's newest words only; the others' stay
    for uid in ("c", "d"):
        observed.record(url, "n2", [(uid, 5, "s5")])
    assert [observed.noted(url, u, n) for u, n in (("a", "n2"), ("c", "n2"), ("d", "n2"), ("a", "n1"))] == [
        None, (5, "s5"), (5, "s5"), (3, "s3")]
    monkeypatch.setattr(observed, "KEEP", dt.timedelta(0))   # every earlier word is old now
    observed.record(url, "n2", [("e", 6, "s6")])
    assert [observed.noted(url, u, n) for u, n in (("a", "n1"), ("c", "n2"), ("e", "n2"))] == [None, None, (6, "s6")]


def test_a_listed_worker_pod_that_is_none_of_the_executors_workers_is_stopped(executor):
    """A create whose call timed out may still make the pod, even after the failed launch's stop
    found nothing to delete: listed and none of the executor's workers, it is deleted at the end of
    the look, so it never holds its name and its share of the namespace's quota until a restart.
    The pool's scheduler and the executor's own workers stay."""
    core = executor.core
    core.pods = {n: pod(n, "lung", "scheduler" if n.endswith("scheduler") else "worker")
                 for n in ("lung-scheduler", "lung-worker-1", "lung-worker-2")}
    executor.workers["lung-worker-1"] = Worker("lung-worker-1", "lung", (1.0, 512, ()), job=7)
    assert asyncio.run(executor.refresh())
    assert executor.strays() - executor.workers.keys() == {"lung-worker-2"}
    asyncio.run(executor.stop_idle())
    assert core.deleted == ["vre-lung/batch-lung-worker-2"]
    assert set(core.pods) == {"lung-scheduler", "lung-worker-1"} and set(executor.workers) == {"lung-worker-1"}
    assert asyncio.run(executor.refresh()) and executor.strays() - executor.workers.keys() == set()

    # after a restart: the running job's worker is adopted and stays; a running job's ended pod
    # holds no quota and keeps why it ended for the job's follow; a held pool's pods are workers too
    core.pods.update({n: pod(n, pool, phase=phase, ended="Error" if phase == "Failed" else "")
                      for n, pool, phase in (("lung-worker-3", "lung", "Failed"),
                                             ("lung.held-worker-1", "lung.held", "Running"),
                                             ("lung.held-worker-2", "lung.held", "Running"))})
    executor.workers.clear()
    assert asyncio.run(executor.refresh())
    executor.adopt("lung", {"lung-worker-1": 7, "lung-worker-3": 9})   # 9's worker ended meanwhile
    executor.adopt("lung.held", {"lung.held-worker-1": 8})
    core.deleted.clear()
    core.pods["lung.held-worker-9"] = pod("lung.held-worker-9", "lung.held")   # made after the restart's list
    assert asyncio.run(executor.refresh())
    asyncio.run(executor.stop_idle())
    assert core.deleted == [f"vre-0held-lung/{object_name(batch_id('lung.held-worker-9'))}"]
    assert set(core.pods) == {"lung-scheduler", "lung-worker-1", "lung-worker-3", "lung.held-worker-1"}

    # a create whose call timed out: its name is a stray at once, before any list shows it
    async def timed_out(plan, argv, devices, *, limits):
        raise ClusterUnavailable("the cluster cannot take lung-worker-4 now (timeout); the job waits")
    executor._launch = timed_out
    executor.prepare = lambda plan: None
    plan = NS(pool="lung", for_worker=lambda name, **kw: NS(pool="lung", session_id=name))
    with pytest.raises(ClusterUnavailable):
        asyncio.run(executor.start_worker(plan, 1.0, 512, ()))
    assert "lung-worker-2" in executor.strays()
