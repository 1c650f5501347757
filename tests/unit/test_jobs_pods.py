"""The Kubernetes executor's bookkeeping without a cluster (tests/k8s/test_helm_install.py runs jobs
in pods of the real test cluster): where each run's pod is, what one look's list says of each
run, and that a cluster that does not answer is never taken for an answer."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace as NS

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from vre.backends.kubernetes import batch_id, object_name
from vre.jobs.executor import ExecutorError, SchedulerLost
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
                          deletion_timestamp="now" if deleting else None), spec=NS(node_name="node-3"),
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
        assert label_selector == "vre.instance=vre,vre.pool"
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


@pytest.fixture
def executor(tmp_path):
    ex = PodDaskExecutor(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", instance="vre",
                                  backend="kubernetes"))
    ex.core = FakeCore()

    async def core():
        return ex.core
    ex._core = core
    return ex


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
