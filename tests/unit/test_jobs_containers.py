"""The docker backend's job executor without a container engine: what it does when the engine
does not answer, and that it never takes a session's container for one of its runs."""

import asyncio
import os
from types import SimpleNamespace

import pytest
import requests
from docker.errors import NotFound

from vre.jobs.containers import ContainerDaskExecutor, EngineUnavailable
from vre.jobs.executor import ExecutorError, Unavailable, Worker
from vre.settings import Settings


class Down:
    """An engine that does not answer (its socket is gone, as while Podman restarts)."""

    def __getattr__(self, name):
        def call(*a, **kw):
            raise requests.exceptions.ConnectionError("connection refused")
        return call


class Engine:
    def __init__(self, containers: dict[str, dict]):
        self.containers, self.removed = containers, []

    def inspect_container(self, name):
        if name not in self.containers:
            raise NotFound("no such container")
        return self.containers[name]

    def remove_container(self, ref, **kw):
        self.removed.append(ref)
        self.containers = {k: v for k, v in self.containers.items() if v["Id"] != ref}


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", instance="t1", backend="docker")


def test_an_engine_that_does_not_answer_is_never_taken_for_an_answer(settings):
    ex = ContainerDaskExecutor(settings, client=Down())
    with pytest.raises(EngineUnavailable) as e:
        ex.alive("lung-worker-1")
    assert isinstance(e.value, Unavailable) and "does not answer" in str(e.value)   # the job waits
    # a new worker's name is never chosen by guessing (every name looked taken: the search for a
    # free one counted for ever, the engine's loop with it); the start says why and the job waits
    with pytest.raises(EngineUnavailable):
        asyncio.run(ex.start_worker(SimpleNamespace(pool="lung"), 1.0, 512, ()))
    # nor is a worker of unknown state handed a job
    ex.workers["lung-worker-1"] = Worker("lung-worker-1", "lung", (1.0, 512, ()))
    with pytest.raises(EngineUnavailable):
        ex.idle_worker("lung", (1.0, 512, ()), ())


def test_runs_are_named_so_that_no_session_container_can_be_one(settings):
    ex = ContainerDaskExecutor(settings, client=Engine({}))
    # project "ct"'s scheduler and user "ct"'s session in a project named "scheduler"
    assert ex.container("ct-scheduler") == "t1.ct-scheduler" != "t1-ct-scheduler"


def test_a_container_without_the_pool_label_is_not_removed(settings):
    engine = Engine({"t1.lung-worker-1": {"Id": "c1", "Config": {"Labels": {"vre.session": "x"}}}})
    ex = ContainerDaskExecutor(settings, client=engine)
    with pytest.raises(ExecutorError, match="not a batch run"):
        ex.kill("lung-worker-1")
    assert engine.removed == []
    engine.containers["t1.lung-worker-1"]["Config"]["Labels"]["vre.pool"] = "lung"
    ex.kill("lung-worker-1")
    assert engine.removed == ["c1"]


class LostAnswers:
    """An engine that starts a container and then does not answer in time (as when Podman is slow
    under load): the start happened, the client saw a timeout. ``down`` makes it not answer at all."""

    def __init__(self):
        self.made: dict[str, dict] = {}   # name -> container
        self.removed: list[str] = []
        self.down = False

    def __getattribute__(self, name):
        if not name.startswith("__") and name not in ("down", "made", "removed", "create") \
                and object.__getattribute__(self, "down"):
            raise requests.exceptions.ConnectionError("connection refused")
        return object.__getattribute__(self, name)

    def create(self, name: str, running: bool = False) -> str:
        self.made[name] = {"Id": f"id-{name}", "Config": {"Labels": {"vre.pool": "lung"}},
                           "State": {"Running": running, "Pid": os.getpid() if running else 0}}
        return f"id-{name}"

    def start(self, cid):
        found = next(c for c in self.made.values() if c["Id"] == cid)
        found["State"] = {"Running": True, "Pid": os.getpid()}   # a live pid, its cgroups readable
        raise requests.exceptions.ReadTimeout("read timed out (timeout=20)")

    def inspect_container(self, name):
        if name not in self.made:
            raise NotFound("no such container")
        return self.made[name]

    def remove_container(self, ref, **kw):
        self.removed.append(ref)
        self.made = {k: v for k, v in self.made.items() if v["Id"] != ref}

    def containers(self, filters):
        assert filters == {"label": ["vre.instance=t1", "vre.pool"]}
        return [{"Names": [f"/{name}"], "Labels": c["Config"]["Labels"]}
                for name, c in self.made.items() if c["State"]["Running"]]


def test_a_worker_started_by_an_engine_that_did_not_answer_is_stopped_once_it_answers(settings, tmp_path,
                                                                                      monkeypatch, caplog):
    """A launch whose answer was lost leaves a running container the executor never took as its
    worker: the job waits in the queue, the next start takes another name, and the next looks stop
    the leftover (once the engine answers, not trying at every look meanwhile) instead of leaving
    it to hold its resources and name until the hub restarts. A name a later start took is that
    start's; a worker container the engine made after all (listed, none of the executor's) goes too."""
    from vre.jobs import executor as executor_module
    from vre.plan import SessionPlan

    engine = LostAnswers()
    ex = ContainerDaskExecutor(settings, client=engine)
    unmarked = []
    monkeypatch.setattr(ex, "prepare", lambda plan: None)
    monkeypatch.setattr(ex, "unmark", unmarked.append)
    monkeypatch.setattr(ex, "scheduler_address", lambda pool: "tcp://10.89.0.2:8786")
    monkeypatch.setattr(ex, "_create", lambda plan, argv, devices, limits, gate_dir:
                        engine.create(ex.container(plan.session_id)))
    plan = SessionPlan(user="ann", project="lung", profile="small", role="worker", session_id="lung-worker",
                       uid=300001, gid=300001, cpu=1, mem_mb=512, gpus=0, network="vre-lung", datasets=(),
                       mounts=(), env={}, labels={"vre.user": "ann", "vre.project": "lung"},
                       run_dir=tmp_path / "run" / "lung", pool="lung")

    with pytest.raises(EngineUnavailable, match="does not answer"):
        asyncio.run(ex.start_worker(plan, 1.0, 512, ()))
    assert ex.workers == {} and ex.alive("lung-worker-1")   # it runs, and is no worker of the executor's

    engine.start = lambda cid: engine.made["t1.lung-worker-2"]["State"].update(Running=True, Pid=os.getpid())
    assert asyncio.run(ex.start_worker(plan, 1.0, 512, ())).name == "lung-worker-2"   # the name is taken

    engine.down = True   # the engine away again: the leftover waits, and is not tried at every look
    caplog.set_level("INFO", "vre.jobs")
    asyncio.run(ex.stop_idle())
    assert "t1.lung-worker-1" in engine.made and "could not stop untracked worker lung-worker-1" in caplog.text
    engine.down = False
    asyncio.run(ex.stop_idle())
    assert "t1.lung-worker-1" in engine.made   # tried again only after STOP_RETRY_S
    ex._stops_after = 0.0   # as if STOP_RETRY_S had passed
    asyncio.run(ex.stop_idle())
    assert engine.removed == ["id-t1.lung-worker-1"] and set(engine.made) == {"t1.lung-worker-2"}
    assert not ex.alive("lung-worker-1") and ex.alive("lung-worker-2") and "lung-worker-2" in ex.workers
    assert unmarked == []   # hostview marks no run a failed launch left, nor one without datasets
    asyncio.run(ex.stop_idle())
    assert engine.removed == ["id-t1.lung-worker-1"]   # once stopped, never asked again

    # a failed launch that made nothing, then a start that takes its name: that worker stays
    engine.start = lambda cid: (_ for _ in ()).throw(requests.exceptions.ReadTimeout("read timed out"))
    monkeypatch.setattr(ex, "_create", lambda *a: (_ for _ in ()).throw(requests.exceptions.ReadTimeout("timeout")))
    with pytest.raises(EngineUnavailable):
        asyncio.run(ex.start_worker(plan, 1.0, 512, ()))
    assert ex.strays() == {"lung-worker-1"}
    monkeypatch.setattr(ex, "_create", lambda plan, argv, devices, limits, gate_dir:
                        engine.create(ex.container(plan.session_id)))
    engine.start = lambda cid: engine.made["t1.lung-worker-1"]["State"].update(Running=True, Pid=os.getpid())
    assert asyncio.run(ex.start_worker(plan, 1.0, 512, ())).name == "lung-worker-1"
    asyncio.run(ex.stop_idle())
    assert engine.removed == ["id-t1.lung-worker-1"] and ex.alive("lung-worker-1") and ex.strays() == set()

    # a worker container the engine made though none of the executor's starts knows it
    engine.create("t1.lung-worker-7", running=True)
    engine.create("t1.lung-scheduler", running=True)   # the pool's scheduler: never a stray
    ex._rules_checked = 0.0
    asyncio.run(ex.stop_idle())
    assert engine.removed[-1] == "id-t1.lung-worker-7"
    assert set(engine.made) == {"t1.lung-worker-1", "t1.lung-worker-2", "t1.lung-scheduler"}
