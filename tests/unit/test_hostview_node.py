"""The per-node observer of dataset reads on Kubernetes (vre.hostview.node), on this machine: the
gate shell a pod with datasets starts with, a real process held at it in a mount namespace of its
own, marked with fanotify and let go by the observer; its read recorded for the user the pod's
metadata names, a batch worker's job followed, and the records posted to the VRE service's
route for observers, which takes them only with the observer's token."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from tornado.testing import bind_unused_port

from fakehub import served
from vre import db as vdb
from vre.api.observers import NODE_NAME, ObserverRefused, ObserverTokens, ReviewUnavailable, node_of
from vre.audit import open_store
from vre.jobs import observed
from vre.hostview.podgate import GATE_NAME, gate_script
from vre.hostview.fanotify import Group
from vre.hostview.node import GATE_DUTY, GATE_POLL, NodeObserver, find_inits, gate_pause, gate_state, parse_pod
from vre.hostview.registry import Marked, Registry
from vre.hostview.watcher import Watcher
from vre.settings import Settings

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="fanotify and mount namespaces need root")
CID = "c0ffee" * 10 + "abcd"


def gate(seconds: int, then: str, *, mount: tuple[Path, Path] | None = None) -> subprocess.Popen:
    """The rendered gate in front of ``then``, as the pod's command runs it (``$0`` = vre-gate);
    ``mount``: first, in a mount namespace of its own, bind (source, target) read-only (one pid
    throughout: unshare and the shell exec)."""
    argv = ["/bin/sh", "-c", f"{gate_script(seconds)}{then}", GATE_NAME]
    if mount:
        source, target = mount
        argv = ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                f'mount --bind {source} {target} && mount -o remount,bind,ro {target} && exec "$@"', "mounter", *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_state(pid: int, want: str, timeout: float = 5.0) -> str | None:
    deadline = time.monotonic() + timeout
    while (state := gate_state(pid)) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    return state


def test_the_gate_waits_for_the_signal_and_gives_up_with_the_reason():
    held = gate(1, "echo past")
    out, err = held.communicate(timeout=10)
    assert held.returncode == 70 and out == ""
    assert f"{GATE_NAME}: dataset reads cannot be recorded" in err and "within 1 s" in err

    opened = gate(30, "echo past")
    assert wait_state(opened.pid, "waiting") == "waiting"
    os.kill(opened.pid, signal.SIGUSR1)
    out, _ = opened.communicate(timeout=10)
    assert opened.returncode == 0 and out == "past\n"

    execd = gate(30, "exec sleep 5")
    assert wait_state(execd.pid, "waiting") == "waiting"
    os.kill(execd.pid, signal.SIGUSR1)
    assert wait_state(execd.pid, "past") == "past"    # became the command: the observer never signals it
    execd.kill()
    execd.wait()
    assert gate_state(execd.pid) is None


def pod(target: Path, started: str = "") -> dict:
    """A pod of the instance as the API shows it; its container started ``started`` (default now)."""
    started = started or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {"name": "ann-lung", "namespace": "vre-lung", "uid": "u-1",
            "labels": {"vre.instance": "vre", "vre.reads": "observed", "vre.user": "ann", "vre.project": "lung",
                       "vre.role": "session"},
            "annotations": {"vre.audit/session": "ann-lung-7f3a",
                            "vre.audit/datasets": json.dumps([{"slug": "ct", "target": str(target)}])}}
    status = {"phase": "Running", "containerStatuses": [
        {"containerID": f"containerd://{CID}", "state": {"running": {"startedAt": started}}}]}
    return {"metadata": meta, "status": status}


def test_parse_pod_takes_only_this_instances_observed_pods():
    p = pod(Path("/data/ct"))
    run = parse_pod(p, "vre")
    assert (run.session, run.user, run.project, run.role, run.container_id) == ("ann-lung-7f3a", "ann", "lung",
                                                                              "session", CID)
    assert run.datasets == [{"slug": "ct", "target": "/data/ct"}] and run.started and not run.ended
    assert parse_pod(p, "other") is None
    bad = pod(Path("/data/ct"))
    bad["metadata"]["annotations"]["vre.audit/datasets"] = "not json"
    assert parse_pod(bad, "vre") is None
    job = pod(Path("/data/ct"))
    job["metadata"]["annotations"].update({"vre.audit/job": "7", "vre.audit/job-user": "bob"})
    assert (parse_pod(job, "vre").job, parse_pod(job, "vre").user) == (7, "bob")
    ended = pod(Path("/data/ct"))
    ended["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 70}}
    assert parse_pod(ended, "vre").ended and parse_pod(ended, "vre").started is None


def test_a_gate_is_found_by_its_pods_cgroup_before_the_kubelet_names_the_container(tmp_path):
    """The first process of a pod's container: pid 1 of its namespace, in the container's cgroup
    (once the pod's status names it) or in the pod's (cgroupfs or systemd naming) and named
    vre-gate, which the pod's pause process is not."""
    uid, other = "0a1b2c3d-1111-2222-3333-444455556666", "99999999-1111-2222-3333-444455556666"
    procs = {
        10: (f"0::/kubepods/besteffort/pod{uid}/{CID}\n", "NSpid:\t10\t1", b"/bin/sh\0-c\0...\0vre-gate\0"),
        11: (f"0::/kubepods/besteffort/pod{uid}/{CID}\n", "NSpid:\t11\t7", b"sleep\0"),
        12: (f"0::/kubepods/besteffort/pod{uid}/pause\n", "NSpid:\t12\t1", b"/pause\0"),
        20: ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
             f"{other.replace('-', '_')}.slice/cri-containerd-x.scope\n", "NSpid:\t20\t1", b"/bin/sh\0-c\0.\0vre-gate\0"),
        30: ("0::/user.slice\n", "NSpid:\t30", b"bash\0"),
    }
    for pid, (cgroup, nspid, argv) in procs.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
        (tmp_path / str(pid) / "status").write_text(f"Name:\tsh\n{nspid}\n")
        (tmp_path / str(pid) / "cmdline").write_bytes(argv)
    target = Path("/data/ct")
    named = parse_pod(pod(target), "vre")            # its status names the container
    unnamed = parse_pod(pod(target), "vre")
    unnamed.container_id, unnamed.uid = "", uid      # the kubelet has not said yet
    systemd = parse_pod(pod(target), "vre")
    systemd.container_id, systemd.uid = "", other
    nowhere = parse_pod(pod(target), "vre")
    nowhere.container_id, nowhere.uid = "f" * 64, "u-9"
    assert find_inits([named], tmp_path) == {"u-1": 10}
    assert find_inits([unnamed, systemd, nowhere], tmp_path) == {uid: 10, other: 20}


def test_looks_for_gates_take_a_bounded_share_of_a_cpu():
    """A pass over /proc on a busy node is followed by a wait of GATE_DUTY times its length (a pod
    may wait at its gate through a long image pull); a quick one by the usual GATE_POLL."""
    assert gate_pause(0.001) == GATE_POLL
    assert gate_pause(0.05) == pytest.approx(0.05 * GATE_DUTY) and 0.05 / (0.05 + gate_pause(0.05)) <= 0.2


#: The API server's answers about tokens in these tests (TokenReview statuses); anything else is
#: not a token it issued.
OBSERVER = "system:serviceaccount:vre:t-vre-observer"
REVIEWS = {
    "o" * 43: {"authenticated": True, "audiences": ["vre-observer"],
               "user": {"username": OBSERVER, "extra": {NODE_NAME: ["node-1"]}}},
    "other-node": {"authenticated": True, "audiences": ["vre-observer"],
                   "user": {"username": OBSERVER, "extra": {NODE_NAME: ["node-2"]}}},
    "unbound": {"authenticated": True, "audiences": ["vre-observer"], "user": {"username": OBSERVER}},
    "default-sa": {"authenticated": True, "audiences": ["vre-observer"],
                   "user": {"username": "system:serviceaccount:vre:default", "extra": {NODE_NAME: ["node-1"]}}},
    "for-the-api": {"authenticated": True, "audiences": ["https://kubernetes.default.svc"],
                    "user": {"username": OBSERVER, "extra": {NODE_NAME: ["node-1"]}}},
}
REVIEWED: list[str] = []
API_DOWN: list[bool] = []


async def review(token: str) -> dict:
    if API_DOWN:
        raise ReviewUnavailable("the cluster's API did not review the token (timed out)")
    REVIEWED.append(token)
    return REVIEWS.get(token, {"authenticated": False, "error": "invalid bearer token"})


@pytest.fixture
def service(tmp_path):
    """The VRE service's routes for sessions and observers (as on the hub pod's TCP port), with
    the API server's reviews of tokens as ``REVIEWS`` says."""
    from vre.api.service import make_app
    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", db_url=url, k8s_observer_service_account="t-vre-observer")
    (tmp_path / "token").write_text("o" * 43 + "\n")   # the observer's projected token
    REVIEWED.clear()
    API_DOWN.clear()
    sock, port = bind_unused_port()
    with served(lambda: make_app(settings, sessions_only=True, observer_tokens=ObserverTokens(settings, review)),
                sock):
        yield settings, f"http://127.0.0.1:{port}"


@needs_root
def test_the_observer_marks_before_it_opens_and_records_what_the_pod_read(tmp_path, service):
    settings, hub = service
    data = tmp_path / "dataset"
    (data / "s1").mkdir(parents=True)
    (data / "s1" / "1.dcm").write_bytes(b"x" * 10)
    s2 = os.fsdecode(b"s\xff2")   # not UTF-8, as in imported trees: recorded escaped, not a crash
    (data / s2).mkdir()
    (data / s2 / "1.dcm").write_bytes(b"y" * 10)
    target = tmp_path / "inside" / "data" / "ct"
    target.mkdir(parents=True)
    # a "pod": its own mount namespace with the dataset bound read-only, held at the gate; it reads
    # series s1 at once when let go, and s2 after it was assigned a job
    flag = tmp_path / "go-on"
    proc = gate(20, f"cat {target}/s1/1.dcm >/dev/null; while [ ! -e {flag} ]; do sleep 0.02; done; "
                    f"cat {target}/s*2/1.dcm >/dev/null", mount=(data, target))
    observer = NodeObserver(instance="vre", node="node-1", hub_url=hub, token_file=tmp_path / "token", state_dir=tmp_path / "reg")
    observer.find_inits = lambda runs: {r.uid: proc.pid for r in runs if r.container_id == CID}
    try:
        deadline = time.monotonic() + 10
        while "u-1" not in observer.opened and time.monotonic() < deadline:
            observer.seen(pod(target))      # the watch's events, and the gate loop's retries
            time.sleep(0.01)
        assert "u-1" in observer.opened, observer.watcher.status()
        marked = observer.watcher.marks["ann-lung-7f3a"]
        assert (marked.user, marked.project, marked.pid) == ("ann", "lung", proc.pid)

        worker = pod(target)
        worker["metadata"]["annotations"].update({"vre.audit/job": "7", "vre.audit/job-user": "bob",
                                                  "vre.audit/job-serial": "41"})
        deadline = time.monotonic() + 5
        while not observer.watcher.drain() and time.monotonic() < deadline:
            time.sleep(0.02)            # the first read, attributed to ann
        assert observer.to_note == {}   # no job yet: nothing to tell the hub
        observer.seen(worker)           # the engine annotated the pod: its next reads are job 7's, bob's
        assert observer.watcher.marks["ann-lung-7f3a"].job == 7
        # ... which the observer tells the hub now, for this hand-out: the engine waits for that word
        assert observer.to_note == {"u-1": (7, "41")}
        asyncio.run(observer.send_notes())
        assert observed.noted(settings.vre_db_url, "u-1", "node-1") == (7, "41")
        assert (observer.to_note, observer.noted) == ({}, {"u-1": (7, "41")})
        observer.seen(worker)           # the same hand-out seen again (a relist): said once
        assert observer.to_note == {}
        flag.touch()
        assert proc.wait(10) == 0, proc.stderr.read()
        gone = pod(target)
        gone["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}
        observer.seen(gone)             # its marks stay until its process is gone ...
        assert "ann-lung-7f3a" in observer.watcher.marks
        asyncio.run(observer.tick())    # ... which the next tick sees: unmarked, its summaries now
        assert "ann-lung-7f3a" not in observer.watcher.marks
    finally:
        proc.kill()
        proc.wait()
        observer.watcher.group.close()

    firsts = [e for e in observer.watcher.outbox if e.action == "dataset.read"]
    assert [(e.actor, e.dataset, e.details["series"], e.details.get("job")) for e in firsts] == [
        ("ann", "ct", "s1", None), ("bob", "ct", "s\\xff2", 7)]
    assert all(e.session == "ann-lung-7f3a" and e.source == "host" for e in firsts)

    # delivered to the hub's route for observers, which stores them as the host's, with the node
    asyncio.run(observer.deliver())
    assert observer.watcher.outbox == []
    stored = open_store(settings).query(action="dataset.read", limit=10)
    assert {(e["actor"], e["source"], e["details"]["node"]) for e in stored} == {("ann", "host", "node-1"),
                                                                                ("bob", "host", "node-1")}


def test_the_observers_word_on_a_workers_job_is_kept_as_its_tokens_node_and_bad_words_are_refused(service,
                                                                                                   monkeypatch):
    """``host-assignments``: what an observer says it counts a worker pod's reads for is kept with
    the node its token's pod runs on (the engine believes only the pod's own node's observer), at
    most ``PER_NODE`` pods' words per node."""
    settings, hub = service
    url = f"{hub}/services/vre/api/audit/host-assignments"
    said = {"pod_uid": "u-1", "job": 7, "serial": "41"}

    def post(body, auth="vre-observer " + "o" * 43):
        return requests.post(url, json=body, headers={"Authorization": auth}, timeout=10)

    assert post({"assignments": [said]}, auth="vre-relay " + "o" * 43).status_code == 403
    assert post({"assignments": [said]}, auth="vre-observer unbound").status_code == 403
    r = post({"node": "node-1", "assignments": [said]}, auth="vre-observer other-node")
    assert r.status_code == 403 and "on node node-2, not 'node-1'" in r.json()["message"], r.text
    for bad, why in (({"assignments": "x"}, "send {"), ({"assignments": [{**said, "job": "7"}]}, "job must be"),
                     ({"assignments": [{**said, "pod_uid": ""}]}, "pod_uid must be"),
                     ({"assignments": [{**said, "serial": 41}]}, "serial must be"),
                     ({"assignments": [said] * 501}, "at most 500")):
        r = post(bad)
        assert r.status_code == 400 and why in r.json()["message"], (bad, r.text)
    r = requests.post(url, data=b"{not json", headers={"Authorization": "vre-observer " + "o" * 43}, timeout=10)
    assert r.status_code == 400 and r.json()["message"].startswith("send JSON"), r.text
    assert observed.noted(settings.vre_db_url, "u-1", "node-1") is None
    assert post({"assignments": [said]}).json() == {"kept": 1}
    assert observed.noted(settings.vre_db_url, "u-1", "node-1") == (7, "41")
    assert post({"assignments": [{**said, "job": 8, "serial": "42"}]}).json() == {"kept": 1}
    assert observed.noted(settings.vre_db_url, "u-1", "node-1") == (8, "42")   # its last word stands
    # a compromised node's observer speaks only as its node: the pod's own node's word stands
    assert post({"assignments": [{**said, "job": 9, "serial": "43"}]}, auth="vre-observer other-node").json() == \
        {"kept": 1}
    assert observed.noted(settings.vre_db_url, "u-1", "node-1") == (8, "42")
    assert observed.noted(settings.vre_db_url, "u-1", "node-2") == (9, "43")
    # a node's flood of words keeps only its newest PER_NODE pods'
    monkeypatch.setattr(observed, "PER_NODE", 3)
    for i in range(5):
        post({"assignments": [{**said, "pod_uid": f"p-{i}"}]}, auth="vre-observer other-node")
    assert [observed.noted(settings.vre_db_url, f"p-{i}", "node-2") for i in range(5)] == [None, None, *[(7, "41")] * 3]
    assert observed.noted(settings.vre_db_url, "u-1", "node-1") == (8, "42")   # another node's are not touched


def test_the_observers_route_takes_only_the_observers_token_and_read_records(service):
    settings, hub = service
    url = f"{hub}/services/vre/api/audit/host-events"
    event = {"action": "dataset.read", "actor": "ann", "actor_role": "researcher", "dataset": "ct",
             "session": "s-1", "target": "/data/ct/s1/1.dcm"}

    def post(body, auth="vre-observer " + "o" * 43):
        return requests.post(url, json=body, headers={"Authorization": auth}, timeout=10)

    assert post({"events": [event]}, auth="vre-observer wrong").status_code == 403
    assert post({"events": [event]}, auth="vre-relay " + "o" * 43).status_code == 403
    for token, why in (("unbound", "bound to no pod"), ("default-sa", "not the observers'"),
                       ("for-the-api", "not issued for vre-observer")):
        r = post({"events": [event]}, auth=f"vre-observer {token}")
        assert r.status_code == 403 and why in r.json()["message"], r.text
    # a node speaks only for itself: the node is its token's pod's, never the post's word
    r = post({"node": "node-1", "events": [event]}, auth="vre-observer other-node")
    assert r.status_code == 403 and "on node node-2, not 'node-1'" in r.json()["message"], r.text
    forged = post({"node": "node-1", "events": [{**event, "action": "airlock.approve"}]})
    assert forged.status_code == 400 and "not airlock.approve" in forged.json()["message"]
    assert post({"node": "node-1", "events": "x"}).status_code == 400
    assert post({"node": "node-1", "events": [{**event, "actor_role": "god"}]}).status_code == 400
    assert post({"node": "node-1", "events": ["x"]}).status_code == 400
    bad = post({"node": "node-1", "events": [event, {**event, "details": ["x"]}]})
    assert bad.status_code == 400 and bad.json()["message"].startswith("event 1: ")
    r = post({"node": "node-1", "events": [{**event, "source": "session"}]})
    assert r.status_code == 200 and r.json() == {"stored": 1}
    (stored,) = open_store(settings).query(action="dataset.read", limit=10)
    assert stored["source"] == "host" and stored["details"] == {"node": "node-1"}   # the host's word
    # one review a minute per token, refusals too (a session posting junk costs the API little)
    assert REVIEWED.count("o" * 43) == 1 and REVIEWED.count("wrong") == 1
    # an API server that does not answer is no refusal to keep: 503, and the next post is reviewed
    API_DOWN.append(True)
    assert post({"events": [event]}, auth="vre-observer fresh-token").status_code == 503
    API_DOWN.clear()
    assert post({"events": [event]}, auth="vre-observer fresh-token").status_code == 403
    assert REVIEWED.count("fresh-token") == 1


def test_a_token_speaks_for_an_observer_only_when_the_api_server_says_so():
    """``node_of``: each answer of a TokenReview that is no observer's pod token is refused."""
    settings = Settings(k8s_observer_service_account="t-vre-observer")
    assert node_of(REVIEWS["o" * 43], settings) == "node-1"
    for status, why in ((REVIEWS["unbound"], "bound to no pod"), (REVIEWS["default-sa"], "not the observers'"),
                        (REVIEWS["for-the-api"], "not issued"), ({"authenticated": False}, "does not accept"),
                        ({**REVIEWS["o" * 43], "user": {"username": OBSERVER, "extra": {NODE_NAME: ["a", "b"]}}},
                         "bound to no pod")):
        with pytest.raises(ObserverRefused, match=why):
            node_of(status, settings)
    with pytest.raises(ObserverRefused, match="no observer is configured"):
        node_of(REVIEWS["o" * 43], Settings())


#: Opens a file through io_uring (IORING_OP_OPENAT), not open(2): a researcher's way around an
#: observer that watched only the open system calls.
IO_URING_OPEN = r'''
import ctypes, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 4, params)                      # io_uring_setup
if ring < 0:
    sys.exit(f"io_uring_setup: {os.strerror(ctypes.get_errno())}")
sq_entries, cq_entries = struct.unpack_from("II", params, 0)
_, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("7I", params, 40)
cq_head, _, cq_mask, _, _, cqes = struct.unpack_from("6I", params, 80)
sq = mmap.mmap(ring, sq_array + sq_entries * 4, offset=0)
cq = mmap.mmap(ring, cqes + cq_entries * 16, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
path = ctypes.create_string_buffer(sys.argv[1].encode())
sqes[0:64] = struct.pack("<BBHiQQIIQ", 18, 0, 0, -100, 0, ctypes.addressof(path), 0, os.O_RDONLY, 7).ljust(64, b"\0")
tail = struct.unpack_from("I", sq, sq_tail)[0]
struct.pack_into("I", sq, sq_array + (tail & struct.unpack_from("I", sq, sq_mask)[0]) * 4, 0)
struct.pack_into("I", sq, sq_tail, tail + 1)
if libc.syscall(426, ring, 1, 1, 1, None, 0) < 0:       # io_uring_enter, wait for the completion
    sys.exit(f"io_uring_enter: {os.strerror(ctypes.get_errno())}")
head = struct.unpack_from("I", cq, cq_head)[0]
_, fd, _ = struct.unpack_from("QiI", cq, cqes + (head & struct.unpack_from("I", cq, cq_mask)[0]) * 16)
print("read", len(os.read(fd, 100)) if fd >= 0 else os.strerror(-fd))
'''


@needs_root
def test_an_open_through_io_uring_is_recorded_as_any_open(tmp_path):
    """The marks see opens made through io_uring as well as open(2) (the kernel's open hook, not
    the system call, raises the event): a reader cannot go around them that way."""
    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "s9").mkdir(parents=True)
    (data / "s9" / "1.dcm").write_bytes(b"z" * 10)
    target.mkdir(parents=True)
    (tmp_path / "probe.py").write_text(IO_URING_OPEN)
    proc = gate(20, f"{sys.executable} {tmp_path / 'probe.py'} {target}/s9/1.dcm", mount=(data, target))
    watcher = Watcher(Registry(tmp_path / "reg"), Group())
    try:
        assert wait_state(proc.pid, "waiting") == "waiting"
        watcher.mark(Marked(session="s-9", user="ann", project="lung", pid=proc.pid, pid_start=0,
                            datasets=[{"slug": "ct", "target": str(target)}]))
        os.kill(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and out == "read 10\n", (out, err)
        watcher.drain()
        assert [(e.actor, e.details["series"]) for e in watcher.outbox if e.action == "dataset.read"] == [("ann", "s9")]
    finally:
        proc.kill()
        watcher.group.close()


NESTED = """set -e
mount --bind {data} {target} && mount -o remount,bind,ro {target}
mount --bind {coll} {target}/coll
touch {flags}/marked-now
while [ ! -e {flags}/go ]; do sleep 0.02; done
mount --bind {late} {target}/late
touch {flags}/mounted-late
while [ ! -e {flags}/read ]; do sleep 0.02; done
cat {target}/s0/0.dcm {target}/coll/s1/1.dcm {target}/late/s2/2.dcm > /dev/null
touch {flags}/done-reading
while [ ! -e {flags}/unmount ]; do sleep 0.02; done
umount {target}/coll
touch {flags}/unmounted
while [ ! -e {flags}/end ]; do sleep 0.02; done
"""


def _flag(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.02)


@needs_root
def test_mounts_below_a_dataset_are_marked_as_the_datasets_when_marked_and_when_they_appear(tmp_path):
    """A collection mounted inside a dataset's folder is a mount of its own id: reads through it
    are the dataset's, whether it was there when the run was marked or appeared later (the
    tick's rescan, which records the interval before it as a gap)."""
    data, coll, late, flags = (tmp_path / n for n in ("dataset", "coll", "late", "flags"))
    target = tmp_path / "inside" / "data" / "ct"
    for d, series, name in ((data, "s0", "0"), (coll, "s1", "1"), (late, "s2", "2")):
        (d / series).mkdir(parents=True)
        (d / series / f"{name}.dcm").write_bytes(b"z" * 10)
    (data / "coll").mkdir()
    (data / "late").mkdir()
    target.mkdir(parents=True)
    flags.mkdir()
    script = NESTED.format(data=data, target=target, coll=coll, late=late, flags=flags)
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script])
    watcher = Watcher(Registry(tmp_path / "reg"), Group())
    try:
        _flag(flags / "marked-now")
        watcher.mark(Marked(session="s-7", user="ann", project="lung", pid=proc.pid, pid_start=0,
                            datasets=[{"slug": "ct", "target": str(target)}]))
        assert list(watcher.marks["s-7"].datasets[0]["nested"]) == [f"{target}/coll"]
        (flags / "go").touch()
        _flag(flags / "mounted-late")
        watcher.tick()
        assert sorted(watcher.marks["s-7"].datasets[0]["nested"]) == [f"{target}/coll", f"{target}/late"]
        (gap,) = [e for e in watcher.outbox if e.action == "audit.gap"]   # unseen until marked: said so
        assert (gap.session, gap.details["mounts"]) == ("s-7", [f"{target}/late"]), gap
        assert sorted(Registry(tmp_path / "reg").load()["s-7"].datasets[0]["nested"]) == [f"{target}/coll",
                                                                                           f"{target}/late"]
        (flags / "read").touch()
        _flag(flags / "done-reading")
        watcher.drain()   # queued events hold the files open: the mount is busy until then
        (flags / "unmount").touch()
        _flag(flags / "unmounted")
        watcher.tick()   # an unmounted one is forgotten (the kernel reuses mount ids)
        assert list(watcher.marks["s-7"].datasets[0]["nested"]) == [f"{target}/late"]
        assert len(watcher.by_mount) == 2
        (flags / "end").touch()
        assert proc.wait(timeout=20) == 0
        reads = sorted((e.actor, e.dataset, e.details["series"], e.target) for e in watcher.outbox
                       if e.action == "dataset.read")
        assert reads == [("ann", "ct", "coll/s1", f"{target}/coll/s1/1.dcm"),
                         ("ann", "ct", "late/s2", f"{target}/late/s2/2.dcm"),
                         ("ann", "ct", "s0", f"{target}/s0/0.dcm")], reads
        assert watcher.unattributed == 0
        watcher.unmark("s-7")
        assert watcher.by_mount == {}
    finally:
        proc.kill()
        watcher.group.close()


@needs_root
def test_a_pod_past_its_gate_unmarked_is_marked_with_the_gap_and_a_new_one_is_waited_for(tmp_path, service):
    """A pod already past its gate when the observer came (its registry lost) is marked, and the
    gap from its container's start recorded; a process that is not the gate yet in a pod that
    started after the observer (the runtime's step before the command) is left alone."""
    settings, hub = service
    data, target = tmp_path / "dataset", tmp_path / "inside" / "data" / "ct"
    (data / "s1").mkdir(parents=True)
    target.mkdir(parents=True)
    past = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                             f'mount --bind {data} {target} && mount -o remount,bind,ro {target} && exec sleep 30'])
    observer = NodeObserver(instance="vre", node="node-1", hub_url=hub, token_file=tmp_path / "token", state_dir=tmp_path / "reg")
    observer.find_inits = lambda runs: {r.uid: past.pid for r in runs}
    try:
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{past.pid}/cmdline").read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            time.sleep(0.01)
        observer.seen(pod(target))                       # started after the observer: not its gate yet
        assert "u-1" not in observer.opened and not observer.watcher.outbox
        observer.seen(pod(target, started="2026-12-05T10:00:00Z"))   # started before: past its gate
        assert "u-1" in observer.opened and observer.watcher.marks["ann-lung-7f3a"].pid == past.pid
        (gap,) = observer.watcher.outbox
        assert (gap.action, gap.session, gap.details["from"], gap.details["user"]) == (
            "audit.gap", "ann-lung-7f3a", "2026-12-05T10:00:00+00:00", "ann")
        assert (gap.actor, gap.details["via"], gap.details["node"]) == ("vre-observer", "vre-observer", observer.node)
    finally:
        past.kill()
        past.wait()
        observer.watcher.group.close()


def test_a_record_the_hub_refuses_does_not_hold_back_the_others(service, caplog, tmp_path):
    """The observer posts in chunks; a chunk refused as bad is sent record by record, and the
    one the hub refuses is logged and dropped, the others stored."""
    from vre.audit.schema import Event

    settings, hub = service
    observer = NodeObserver(instance="vre", node="node-1", hub_url=hub, token_file=tmp_path / "token", state_dir=tmp_path / "reg",
                            watcher=SimpleWatcher())
    good = [Event(action="dataset.read", actor="ann", actor_role="researcher", target=f"/data/ct/s{i}", source="host")
            for i in range(3)]
    bad = Event(action="airlock.approve", actor="ann", actor_role="researcher", source="host")
    observer.store([good[0], bad, *good[1:]])
    assert sorted(e["target"] for e in open_store(settings).query(action="dataset.read", limit=10)) == [
        "/data/ct/s0", "/data/ct/s1", "/data/ct/s2"]
    assert "the hub refused a record; dropped" in caplog.text and "airlock.approve" in caplog.text


class SimpleWatcher:
    """No fanotify group: what ``store`` needs of an observer is its hub and token."""


def test_a_workers_successor_of_the_same_name_is_neither_reassigned_nor_acknowledged_by_its_predecessors_marks(
        tmp_path):
    """Marks are kept by session, which for a batch worker is its pod's name; a successor pod of
    that name (another uid) while its predecessor runs out its grace period: the predecessor's
    marks are not re-assigned to the successor's job, nothing is said to the hub for it, and its
    gate waits until those marks are gone (then it is marked as its own)."""
    from types import SimpleNamespace

    from vre.hostview.registry import process_start
    from vre.hostview.watcher import Behind
    old = Marked(session="ann-lung-7f3a", user="ann", project="lung", pid=os.getpid(),
                 pid_start=process_start(os.getpid()), role="worker", job=6, pod_uid="u-0")
    assigned = []
    watcher = SimpleNamespace(marks={old.session: old}, emptied=0, assign=lambda *a, **kw: assigned.append(a))
    observer = NodeObserver(instance="vre", node="node-1", hub_url="http://127.0.0.1:9", token_file=tmp_path / "t",
                            state_dir=tmp_path / "reg", watcher=watcher)
    observer.find_inits = lambda runs: pytest.fail("looked for the gate while the predecessor runs")
    successor = pod(tmp_path)
    successor["metadata"]["annotations"].update({"vre.audit/job": "7", "vre.audit/job-user": "bob",
                                                 "vre.audit/job-serial": "44"})
    observer.seen(successor)
    assert assigned == [] and observer.to_note == {} and "u-1" not in observer.opened
    old.pod_uid = "u-1"   # the same pod, while a flood's backlog is not read: nothing said yet

    def behind(session, user, job, since, reads):
        raise Behind("the queue of dataset reads was not read empty")
    watcher.assign = behind
    observer.seen(successor)
    assert observer.to_note == {} and observer.behind == {"u-1": ((7, "bob"), 0)}
    # tried again with the gates (no new event), once the queue was read empty since the job was
    # seen, not before: its job is re-assigned, counted from then, and said to the hub
    watcher.assign = lambda session, user, job, since, reads: (assigned.append((job, since)), setattr(old, "job", job))
    observer.retry_jobs()
    assert assigned == [] and observer.to_note == {}
    watcher.emptied = 1
    observer.retry_jobs()
    assert assigned == [(7, 0)] and observer.to_note == {"u-1": (7, "44")} and observer.behind == {}
