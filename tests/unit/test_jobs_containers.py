"""The docker backend's job executor without a container engine: what it does when the engine
does not answer, and that it never takes a session's container for one of its runs."""

import asyncio
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
