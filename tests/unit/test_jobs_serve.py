"""A warm worker's next job is handed out only once vre-hostview counts the worker's reads for
it: else its first reads would be recorded as the previous job's, perhaps another member's."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from types import SimpleNamespace as NS

import pytest

from vre.jobs import executor
from vre.jobs.executor import LocalDaskExecutor, RecorderUnavailable, Worker


def serve(monkeypatch, answer, *, born_for=None, ex=None) -> tuple[list, list]:
    """``serve`` job 7 of bob to a worker (started for ``born_for``), hostview answering
    ``answer``; (what hostview was told, the workers stopped). Raises what ``serve`` raises."""
    told, stopped = [], []
    monkeypatch.setattr(executor.hostview, "assign", lambda settings, *a: told.append(a) or answer)
    ex = ex or NS(settings=object(), _recorder_back_at=0.0,
                  workers={"lung-worker-1": Worker("lung-worker-1", "lung", (), born_for=born_for)})
    ex.stop_worker = stopped.append
    ex.born_with = partial(LocalDaskExecutor.born_with, ex)
    try:
        asyncio.run(LocalDaskExecutor.serve(ex, "lung-worker-1", "bob", 7))
    except RecorderUnavailable as e:
        e.stopped, e.told = stopped, told
        raise
    return told, stopped


def test_the_job_is_handed_out_once_hostview_took_note(monkeypatch):
    assert serve(monkeypatch, {"ok": True}) == ([("lung-worker-1", "bob", 7)], [])


def test_nothing_to_tell_for_the_job_a_worker_was_started_for(monkeypatch):
    """It was marked for that job as it started; a worker started for another is told."""
    assert serve(monkeypatch, None, born_for=(7, "bob")) == ([], [])
    assert serve(monkeypatch, {"ok": True}, born_for=(6, "bob")) == ([("lung-worker-1", "bob", 7)], [])


@pytest.mark.parametrize("answer, why, stopped", [
    # hostview restarting, or behind a flood: the worker keeps its marks (and its job)
    (None, "vre-hostview does not answer", []),
    ({"ok": False, "error": "the queue of dataset reads was not read empty"}, "did not take note (the queue", []),
    # it lost its marks: the worker is stopped, a new one is marked as it starts
    ({"ok": False, "error": "lung-worker-1 is not marked", "unmarked": True}, "is not marked", ["lung-worker-1"]),
])
def test_no_note_the_job_waits_in_the_queue(monkeypatch, answer, why, stopped):
    with pytest.raises(RecorderUnavailable, match=rf"{re.escape(why)}.*lung-worker-1 cannot be recorded") as e:
        serve(monkeypatch, answer)
    assert e.value.stopped == stopped


def test_after_hostview_did_not_take_note_hand_outs_wait_without_asking_for_a_while(monkeypatch):
    """Behind a flood's backlog hostview answers within a second or so, and the engine's look
    waits for that answer: the hand-outs after it wait in the queue at once (not each look a
    second per hand-out) until ``RECORDER_WAIT_S`` has passed; a worker it did not know does
    not hold the others back."""
    ex = NS(settings=object(), _recorder_back_at=0.0, workers={"lung-worker-1": Worker("lung-worker-1", "lung", ())})
    behind = {"ok": False, "error": "the queue of dataset reads was not read empty"}
    with pytest.raises(RecorderUnavailable):
        serve(monkeypatch, behind, ex=ex)
    assert ex._recorder_back_at > 0
    with pytest.raises(RecorderUnavailable, match="a moment ago") as e:
        serve(monkeypatch, {"ok": True}, ex=ex)   # not asked: it would have said yes
    assert e.value.told == [] and e.value.stopped == []
    ex._recorder_back_at -= executor.RECORDER_WAIT_S   # the time has passed: asked again
    assert serve(monkeypatch, {"ok": True}, ex=ex) == ([("lung-worker-1", "bob", 7)], [])
    ex._recorder_back_at = 0.0
    with pytest.raises(RecorderUnavailable):
        serve(monkeypatch, {"ok": False, "error": "lung-worker-1 is not marked", "unmarked": True}, ex=ex)
    assert ex._recorder_back_at == 0.0


def test_hostview_is_asked_at_a_workers_stop_only_if_it_may_have_marked_it(monkeypatch, tmp_path):
    """It marks only runs with datasets; an unmark waits up to 5 s for an answer, so a hostview
    that hangs must not hold the engine's looks for each worker without data stopped meanwhile.
    A worker of unknown datasets (adopted after a restart, or not known at all) is unmarked."""
    from vre.settings import Settings
    told, killed = [], []
    monkeypatch.setattr(executor.hostview, "unmark", lambda settings, name: told.append(name))
    ex = LocalDaskExecutor(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", instance="t1"))
    monkeypatch.setattr(ex, "kill", killed.append)
    ex.workers = {"lung-worker-1": Worker("lung-worker-1", "lung", (1.0, 512, ()), datasets=()),
                  "lung-worker-2": Worker("lung-worker-2", "lung", (1.0, 512, ()), datasets=("ct",)),
                  "lung-worker-3": Worker("lung-worker-3", "lung", (), datasets=None)}
    for name in ("lung-worker-1", "lung-worker-2", "lung-worker-3", "lung-worker-4"):
        ex.stop_worker(name)
    ex.stop_worker("lung-worker-5", marked=False)   # what a failed launch left
    assert killed == [f"lung-worker-{n}" for n in range(1, 6)] and ex.workers == {}
    assert told == ["lung-worker-2", "lung-worker-3", "lung-worker-4"]


def test_a_stop_that_fails_holds_the_stops_a_while_and_then_the_others_go_first(monkeypatch, tmp_path):
    """Each stop may wait its full timeout while the container engine or the cluster hangs, and
    every project's next look waits with it: after one fails no stop is tried for
    ``STOP_RETRY_S``; then those whose stop never failed go first, so a worker that cannot be
    stopped holds no other back."""
    from vre.settings import Settings
    ex = LocalDaskExecutor(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", instance="t1"))
    tried, hung = [], {"lung-worker-1", "lung-worker-2"}

    def kill(name):
        tried.append(name)
        if name in hung:
            raise executor.ExecutorError(f"the container engine does not answer ({name})")
    monkeypatch.setattr(ex, "kill", kill)
    monkeypatch.setattr(executor.hostview, "unmark", lambda settings, name: None)
    ex.workers = {f"lung-worker-{n}": Worker(f"lung-worker-{n}", "lung", (1.0, 512, ()), spent=True)
                  for n in (1, 2, 3)}
    ex._strays = {"lung-worker-4"}   # a launch that failed

    def look(after_the_hold: bool = True):
        if after_the_hold:
            ex._stops_after = 0.0   # as if STOP_RETRY_S had passed
        asyncio.run(ex.stop_idle())
    look()
    assert tried == ["lung-worker-1"]   # one failure, no other stop in that look
    look(after_the_hold=False)
    assert tried == ["lung-worker-1"]   # nor in the looks of the next STOP_RETRY_S
    look()
    assert tried == ["lung-worker-1", "lung-worker-2"]
    look()   # those that never failed first: both go, then the one that failed first fails again
    assert tried[2:] == ["lung-worker-3", "lung-worker-4", "lung-worker-1"]
    assert set(ex.workers) == {"lung-worker-1", "lung-worker-2"} and ex.strays() == set()
    hung.clear()
    look()
    assert tried[5:] == ["lung-worker-2", "lung-worker-1"] and ex.workers == {}
