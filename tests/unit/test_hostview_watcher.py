"""The watcher when the kernel drops opens: the trail must say where it is incomplete.

Runs as root (fanotify and mount namespaces), with the real kernel: a reader opens more distinct
files than a bounded queue holds, and the kernel queues its overflow event in place of the opens
it dropped (hostview's own queue is unlimited: this is the watcher's answer should one ever come).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vre.hostview import fanotify
from vre.hostview.fanotify import Group
from vre.hostview.registry import Marked, Registry
from vre.hostview.watcher import Watcher

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify and mount namespaces need root")


def bounded_group() -> Group:
    """A group whose queue holds ``fs.fanotify.max_queued_events`` (hostview's is unlimited)."""
    group = Group()
    os.close(group.fd)
    group.fd = fanotify._check(fanotify._libc.fanotify_init(
        fanotify.FAN_CLASS_NOTIF | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK,
        os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC), "fanotify_init")
    return group


@pytest.fixture
def mounted_run():
    """Starts a process in a mount namespace of its own with a read-only bind of ``data`` at
    ``target`` (a session's dataset), returned once it has mounted; each is killed at the end."""
    runs = []

    def start(data: Path, target: Path) -> subprocess.Popen:
        target.mkdir(parents=True)
        run = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                                f"mount --bind {data} {target} && mount -o remount,bind,ro {target} && exec sleep 60"])
        runs.append(run)
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{run.pid}/cmdline").read_bytes().startswith(b"sleep"):
            assert time.monotonic() < deadline, "the run never mounted its dataset"
            time.sleep(0.01)
        return run
    yield start
    for run in runs:
        run.kill()
        run.wait()


@needs_root
def test_opens_the_kernel_dropped_are_an_audit_gap_of_every_marked_run(tmp_path, mounted_run):
    limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "s1").mkdir(parents=True)
    for i in range(limit + 500):   # distinct files: the kernel merges repeated opens of one
        (data / "s1" / f"{i}.dcm").write_bytes(b"")
    run = mounted_run(data, target)
    watcher = Watcher(Registry(tmp_path / "reg"), bounded_group(), via="vre-observer", where={"node": "node-1"})
    try:
        marked = Marked(session="ann-lung-1", user="ann", project="lung", pid=run.pid, pid_start=0,
                        datasets=[{"slug": "ct", "target": str(target)}])
        watcher.mark(marked)
        inside = Path(f"/proc/{run.pid}/root{target}") / "s1"

        def read(names) -> None:   # opens through the run's own mount, as its processes make them
            for name in names:
                os.close(os.open(inside / name, os.O_RDONLY))

        read(["0.dcm"])
        watcher.drain()
        assert not [e for e in watcher.outbox if e.action == "audit.gap"]   # nothing lost yet
        emptied = watcher.empty_at
        read(f"{i}.dcm" for i in range(limit + 500))   # more than the queue holds, none drained
        watcher.drain(10_000)
        gaps = [e for e in watcher.outbox if e.action == "audit.gap"]
        assert [(g.session, g.actor, g.details["via"], g.details["node"], g.details["cause"]) for g in gaps] == [
            ("ann-lung-1", "vre-observer", "vre-observer", "node-1", "queue overflow")]
        assert gaps[0].details["from"] >= time_text(emptied) and gaps[0].details["user"] == "ann"
        assert watcher.agg.pending() >= limit - 1   # what was queued is still counted

        watcher.outbox.clear()
        read(["1.dcm"])   # the watcher goes on: the next read is recorded, with no new gap
        assert watcher.drain() == 1 and not [e for e in watcher.outbox if e.action == "audit.gap"]
    finally:
        watcher.group.close()


@needs_root
def test_a_run_listing_a_dataset_folder_is_recorded_once_per_folder_and_counted(tmp_path, mounted_run):
    """A listing (``ls``, ``os.scandir``, the Lab's file browser) opens the folder: the run's first
    of each folder is a ``dataset.list``, every one is counted in the minute's summary, reads are
    recorded as before, and hostview's own opens of a run's folders (marking) are not the run's."""
    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "p1" / "s1").mkdir(parents=True)
    (data / "p1" / "s1" / "1.dcm").write_bytes(b"")
    run = mounted_run(data, target)
    watcher = Watcher(Registry(tmp_path / "reg"))
    try:
        watcher.mark(Marked(session="ann-lung-1", user="ann", project="lung", pid=run.pid, pid_start=0,
                            datasets=[{"slug": "ct", "target": str(target)}]))

        def inside(*cmd: str) -> None:   # a process of the run (its mount namespace), then what it queued
            subprocess.run(["nsenter", "-t", str(run.pid), "-m", *cmd], check=True, capture_output=True)
            watcher.drain()

        inside("ls", str(target))
        inside("ls", f"{target}/p1/s1")
        inside("ls", f"{target}/p1/s1")
        inside("cat", f"{target}/p1/s1/1.dcm")
        os.listdir(f"/proc/{run.pid}/root{target}/p1")   # this process is hostview's here: not the run's
        watcher.drain()
        lists = [e for e in watcher.outbox if e.action == "dataset.list"]
        assert [(e.actor, e.session, e.dataset, e.target, e.details["folder"]) for e in lists] == [
            ("ann", "ann-lung-1", "ct", str(target), "."), ("ann", "ann-lung-1", "ct", f"{target}/p1/s1", "p1/s1")]
        assert all(e.source == "host" for e in lists)
        (read,) = [e for e in watcher.outbox if e.action == "dataset.read"]
        assert read.target == f"{target}/p1/s1/1.dcm" and read.details["series"] == "p1/s1"
        watcher._flush()
        (summary,) = [e for e in watcher.outbox if e.action == "dataset.read_summary"]
        assert summary.details["opens"] == 1 and summary.details["listings"] == 3
    finally:
        watcher.group.close()


def time_text(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


FLOOD = """import os, sys
names = [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])]
while True:
    for n in names:
        os.close(os.open(n, os.O_RDONLY))
"""


@needs_root
@contextlib.contextmanager
def marked_runs(tmp_path, commands: dict[str, str]):
    """One run per session, each in a cgroup and mount namespace of its own with its read-only
    bind of the dataset (30,000 empty files in s1), marked by a watcher that is 0.5 s patient;
    yields (watcher, freezer file per session, process per session)."""
    from vre.backends.cgroups import SessionCgroup
    from vre.hostview.pause import freezer_of

    data = tmp_path / "dataset"
    if not data.exists():
        (data / "s1").mkdir(parents=True)
        for i in range(30_000):   # distinct files: the kernel merges an open with a queued one of the same file
            (data / "s1" / f"{i}.dcm").write_bytes(b"")
        (tmp_path / "flood.py").write_text(FLOOD)
    cgroups, runs, states = {}, {}, {}
    watcher = Watcher(Registry(tmp_path / "reg"), Group())
    watcher.behind_s = 0.5
    try:
        for session, command in commands.items():
            target = tmp_path / session / "data" / "ct"
            target.mkdir(parents=True)
            cgroups[session] = SessionCgroup(f"{session}-{os.getpid()}", parent="vre-test")
            cgroups[session].create(cpu=1, mem_mb=512, pids_max=16)
            runs[session] = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                 f"mount --bind {data} {target} && mount -o remount,bind,ro {target} && echo mounted && "
                 + command.format(target=target, flood=tmp_path / "flood.py", python=sys.executable)],
                preexec_fn=cgroups[session].join, stdout=subprocess.PIPE)
            assert runs[session].stdout.readline() == b"mounted\n"
            watcher.mark(Marked(session=session, user=session[:3], project="lung", pid=runs[session].pid,
                                pid_start=0, datasets=[{"slug": "ct", "target": str(target)}]))
            states[session] = freezer_of(runs[session].pid)
            assert states[session] is not None and states[session].parent.name == cgroups[session].name
        yield watcher, states, runs
    finally:
        for session, run in runs.items():
            cgroups[session].kill_all(2)
            run.wait()
        for cgroup in cgroups.values():
            cgroup.remove()
        for parent in {d.parent for cgroup in cgroups.values() for d in cgroup.dirs.values()}:
            parent.rmdir()
        watcher.group.close()


FLOODER = "exec {python} {flood} {target}/s1"
MODEST = "exec sh -c 'while :; do cat " + " ".join(f"{{target}}/s1/{i}.dcm" for i in range(20)) + \
    "; sleep 0.02; done'"   # about 800 opens a second


def read_slowly(watcher, until, what: str, *, never: str = "", timeout: float = 60, every: float = 0.05,
                reads: int = 1) -> None:
    """A slow observer: ``reads`` batches every ``every`` s until ``until()``; ``never`` is not
    frozen meanwhile."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, what
        watcher.drain(reads=reads)
        assert never not in watcher.paused, f"{never} was frozen"
        time.sleep(every)


@needs_root
def test_a_run_opening_faster_than_its_reads_are_recorded_is_frozen_until_they_are(tmp_path):
    """The queue is unlimited (no open goes unrecorded) but costs the host memory it cannot
    reclaim: a run that keeps the observer behind is frozen in its cgroup, nothing is dropped,
    and it is thawed, with a record of the pause, once the queue is read empty. A modest reader
    beside it is not frozen, nor while the flood's backlog is read."""
    from vre.hostview.pause import freezer_of

    assert freezer_of(os.getpid()) is None   # never the observer's own cgroup
    with marked_runs(tmp_path, {"ann-lung-1": FLOODER, "bob-lung-2": MODEST}) as (watcher, states, runs):
        read_slowly(watcher, lambda: "ann-lung-1" in watcher.paused, "never frozen", never="bob-lung-2")
        assert Registry(tmp_path / "reg").load()["ann-lung-1"].frozen   # a successor would thaw it
        assert frozen(states["ann-lung-1"]) and not frozen(states["bob-lung-2"])
        # frozen, it opens nothing more: its backlog is read (bob's reads go on) as hostview reads,
        # then the queue is read empty and it is thawed, with nothing dropped
        read_slowly(watcher, lambda: not watcher.paused, "the queue of a frozen run never ended", never="bob-lung-2",
                    reads=8)
        assert not frozen(states["ann-lung-1"]) and not [e for e in watcher.outbox if e.action == "audit.gap"]
        (pause,) = [e for e in watcher.outbox if e.action == "dataset.read_pause"]
        assert (pause.actor, pause.session, pause.source) == ("ann", "ann-lung-1", "host")
        assert pause.details["opens_while_behind"] > 0 and pause.details["seconds"] > 0
        time.sleep(0.2)
        assert runs["ann-lung-1"].poll() is None and watcher.drain() > 0   # thawed, it reads on


@needs_root
def test_a_second_flood_behind_the_first_ones_backlog_is_frozen_too(tmp_path):
    """A second flood that starts once the first is frozen queues behind the first's backlog,
    unread: the queue still growing with the first frozen says that someone unread outruns the
    observer, and every run is frozen (before any of the second's opens is read) until the
    queue is read empty."""
    later = "sleep 1 && " + FLOODER
    with marked_runs(tmp_path, {"ann-lung-1": FLOODER, "cy-lung-3": later}) as (watcher, states, runs):
        read_slowly(watcher, lambda: set(watcher.paused) == {"ann-lung-1", "cy-lung-3"}, "not both frozen",
                    timeout=30, every=0.1)
        assert frozen(states["ann-lung-1"]) and frozen(states["cy-lung-3"])
        while watcher.paused:   # frozen, they open nothing more: the queue ends
            watcher.drain()
        pauses = {e.session: e for e in watcher.outbox if e.action == "dataset.read_pause"}
        assert set(pauses) == {"ann-lung-1", "cy-lung-3"} and not frozen(states["cy-lung-3"])
        assert pauses["cy-lung-3"].details["opens_while_behind"] == 0   # frozen before one was read


def frozen(state: Path) -> bool:
    deadline = time.monotonic() + 5   # v1 passes through FREEZING
    while (value := state.read_text().strip()) == "FREEZING" and time.monotonic() < deadline:
        time.sleep(0.01)
    return value in ("FROZEN", "1")


@needs_root
def test_a_node_observer_freezes_through_the_hosts_cgroups_where_the_chart_mounts_them(tmp_path):
    """On Kubernetes the observer sees the node's cgroups at ``VRE_OBSERVER_CGROUPS`` (a hostPath
    of /sys/fs/cgroup), not at its own /sys/fs/cgroup: a run's freezer is found there."""
    from vre.backends.cgroups import SessionCgroup

    cgroup = SessionCgroup(f"node-{os.getpid()}", parent="vre-test")
    cgroup.create(cpu=1, mem_mb=64, pids_max=4)
    run = subprocess.Popen(["sleep", "30"], preexec_fn=cgroup.join)
    host = tmp_path / "host" / "cgroup"
    host.mkdir(parents=True)
    probe = (f"import sys; sys.path[:0] = {sys.path!r}; from pathlib import Path; "
             f"from vre.hostview.pause import freezer_of; print(freezer_of({run.pid}, Path('{host}')))")
    try:
        out = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                              f"mount --rbind /sys/fs/cgroup {host} && exec {sys.executable} -c \"{probe}\""],
                             capture_output=True, text=True, timeout=30)
        state = Path(out.stdout.strip())
        assert state.is_relative_to(host) and state.parent.name == cgroup.name, (out.stdout, out.stderr)
        assert state.name in ("freezer.state", "cgroup.freeze")
    finally:
        cgroup.kill_all(2)
        run.wait()
        cgroup.remove()
        for parent in {d.parent for d in cgroup.dirs.values()}:
            parent.rmdir()


@needs_root
def test_a_batch_of_events_is_read_whole_under_the_usual_open_file_limit(tmp_path):
    """The kernel opens a descriptor in hostview for each event read, and drops an event whose
    descriptor cannot be opened: under the usual soft limit of 1,024 a batch of 2,730 lost opens.
    The group raises the limit, and every open is counted."""
    import resource

    from vre.hostview.fanotify import NEEDED_FDS
    from vre.hostview.watcher import ALL

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "s1").mkdir(parents=True)
    for i in range(6000):
        (data / "s1" / f"{i}.dcm").write_bytes(b"")
    target.mkdir(parents=True)
    run = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                            f"mount --bind {data} {target} && echo mounted && exec sleep 60"], stdout=subprocess.PIPE)
    watcher = None
    try:
        assert run.stdout.readline() == b"mounted\n"
        watcher = Watcher(Registry(tmp_path / "reg"), Group())
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= NEEDED_FDS
        watcher.mark(Marked(session="ann-lung-1", user="ann", project="lung", pid=run.pid, pid_start=0,
                            datasets=[{"slug": "ct", "target": str(target)}]))
        inside = Path(f"/proc/{run.pid}/root{target}") / "s1"
        for i in range(6000):
            os.close(os.open(inside / f"{i}.dcm", os.O_RDONLY))
        assert watcher.drain(ALL) == 6000 and watcher.group.queued() == 0
    finally:
        run.kill()
        run.wait()
        if watcher is not None:
            watcher.group.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_registry_written_by_a_newer_hostview_is_read_without_its_new_fields(tmp_path):
    """Rolling hostview back must not make it crash on the registry its successor wrote."""
    import json

    registry = Registry(tmp_path / "reg")
    registry.path.write_text(json.dumps({"marks": [{"session": "ann-lung-1", "user": "ann", "project": "lung",
                                                    "pid": 1, "pid_start": 0, "frozen": True, "later": 1}]}))
    (m,) = registry.load().values()
    assert (m.session, m.frozen) == ("ann-lung-1", True)


@needs_root
def test_a_workers_job_changes_only_once_every_earlier_read_is_counted_for_the_job_before(tmp_path, mounted_run):
    """A batch worker's next job is another member's perhaps: the watcher re-assigns its marks
    only once the kernel's queue is read empty (every earlier open is the previous job's). A
    backlog beyond what one assignment reads leaves the worker counting for its job, saying so
    (``Behind``: the engine's hand-out waits) until the queue was read empty after it was asked."""
    from vre.hostview.watcher import Behind

    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "s1").mkdir(parents=True)
    for i in range(6_000):   # distinct files (the kernel merges repeated opens of one): over two batches
        (data / "s1" / f"{i}.dcm").write_bytes(b"")
    run = mounted_run(data, target)
    watcher = Watcher(Registry(tmp_path / "reg"))
    try:
        watcher.mark(Marked(session="lung-worker-1", user="ann", project="lung", pid=run.pid, pid_start=0,
                            role="worker", job=1, datasets=[{"slug": "ct", "target": str(target)}]))
        watcher.drain()
        inside = Path(f"/proc/{run.pid}/root{target}") / "s1"
        for i in range(6_000):
            os.close(os.open(inside / f"{i}.dcm", os.O_RDONLY))
        asked = watcher.emptied
        with pytest.raises(Behind, match="keeps counting for job 1"):   # one batch read: the rest is a backlog
            watcher.assign("lung-worker-1", "bob", 2, since=asked, reads=1)
        assert (watcher.marks["lung-worker-1"].user, watcher.marks["lung-worker-1"].job) == ("ann", 1)
        with pytest.raises(Behind):
            watcher.assign("lung-worker-1", "bob", 2, since=asked, reads=0)   # reads nothing itself
        while watcher.emptied == asked:   # the service's reading loop reads the rest
            watcher.drain()
        watcher.assign("lung-worker-1", "bob", 2, since=asked, reads=0)   # then the job changes
        assert (watcher.marks["lung-worker-1"].user, watcher.marks["lung-worker-1"].job) == ("bob", 2)
        watcher._flush()
        summaries = [e for e in watcher.outbox if e.action == "dataset.read_summary"]
        assert sum(e.details["opens"] for e in summaries) == 6_000
        assert {(e.actor, e.details["job"]) for e in summaries} == {("ann", 1)}
    finally:
        watcher.group.close()
