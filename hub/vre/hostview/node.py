"""The per-node observer of dataset reads on Kubernetes: ``python -m vre.hostview.node``, the
chart's DaemonSet ``<release>-observer`` (root, privileged, the node's pid namespace).

The same watcher as ``vre-hostview`` (:mod:`.watcher`), told what to mark by the pods the hub
creates instead of by requests on a socket:

- **The gate.** A pod with datasets (label ``vre.reads=observed``) starts behind a gate: its
  container's first process is a shell (``$0`` = ``vre-gate``) that catches SIGUSR1 and exits
  after ``k8s_gate_seconds`` (``podgate.gate_script``). When the pod's container runs
  on this node, the observer finds that process (its cgroup names the container's id, and it is
  pid 1 of its pid namespace), checks that it waits at the gate, marks its dataset mounts through
  ``/proc/<pid>/root`` and only then sends SIGUSR1. Nothing of the researcher's runs before that:
  the gate is the container's only process, and no other pod can see it to signal it.
- **Attribution** comes from the pod's metadata, which only the hub writes (pods get no service
  account token): the audit session, datasets (annotations), user and project (labels); a batch
  worker's current job is an annotation the job engine patches (``vre.audit/job``). Once the
  observer counts the worker's reads for that job it says so to the hub (``host-assignments``):
  the engine hands the job to the worker only then (``vre.jobs.observed``).
- **Records** go to the hub's VRE service (``POST <hub>/services/vre/api/audit/host-events``) with
  the token the kubelet projects into this pod for the audience ``vre-observer`` (read again for
  every post: the kubelet renews it); the hub asks the API server whose it is and stores the
  records with ``source = "host"`` as that pod's node (``vre.api.observers``).
- **Restarts.** The registry is on the node (a hostPath), so a new observer pod marks the live runs
  again and records the gap (``Watcher.restore``). A pod whose container started before this
  observer and is past its gate unmarked (the registry was lost) is marked, with an ``audit.gap``
  from its container's start; one that started later was seen at its gate, so a process of it
  that is not the gate yet is the runtime's step before the command, and is waited for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ctypes
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .podgate import (AUDIT_DATASETS, AUDIT_JOB, AUDIT_JOB_SERIAL, AUDIT_JOB_USER, AUDIT_SESSION, GATE_NAME,
                      HOST_ASSIGNMENTS_ROUTE, HOST_EVENTS_ROUTE, MAX_ASSIGNMENTS_PER_POST, OBSERVED_LABEL)
from .pause import CGROUP_ROOT
from .registry import Marked, Registry, alive
from .service import NICE, Recorder
from .watcher import STEP, Behind, MarkError, Watcher

log = logging.getLogger("vre.hostview.node")

#: The authorisation scheme of the observer's token (``vre.api.ingest.HostEventsHandler``).
SCHEME = "vre-observer"
CLONE_NEWCGROUP = 0x02000000
#: How often the gates of this node's pods not opened yet are looked for (one pass over /proc).
GATE_POLL = 0.1
#: Looks for gates take at most 1/(1+GATE_DUTY) of a CPU: on a node with many processes, a pass
#: over /proc takes longer and the next one waits GATE_DUTY times as long (a pod may wait at its
#: gate through a long image pull).
GATE_DUTY = 4
#: A watch ends after this many seconds and the pods are listed again (a missed event heals).
WATCH_S = 300
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)
#: Records per post to the hub.
CHUNK = 500
#: Seconds between tries to tell the hub which jobs this observer counts reads for.
ACK_RETRY_S = 1


@dataclass
class Run:
    """What the observer reads from one pod: who its reads are for, and where its gate is."""
    uid: str
    name: str                   # namespace/name, for logs
    session: str
    user: str
    project: str
    role: str
    datasets: list[dict]
    job: int | None
    serial: str                 # of the job's hand-out (``AUDIT_JOB_SERIAL``)
    container_id: str           # the runtime's id (containerd://<id> without the scheme)
    started: float | None       # when its container started (None: not running)
    ended: bool


def parse_pod(pod: dict, instance: str) -> Run | None:
    """The run a pod of this instance stands for, or None when it is not one to observe (another
    instance's, no datasets, metadata that does not parse)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    if labels.get("vre.instance") != instance or labels.get(OBSERVED_LABEL) != "observed":
        return None
    try:
        datasets = [{"slug": str(d["slug"]), "target": str(d["target"])} for d in json.loads(notes[AUDIT_DATASETS])]
        job = int(notes[AUDIT_JOB]) if notes.get(AUDIT_JOB) else None
    except (KeyError, TypeError, ValueError):
        log.error("pod %s/%s has no readable %s annotation: not observed", meta.get("namespace"), meta.get("name"),
                  AUDIT_DATASETS)
        return None
    role = labels.get("vre.role", "session")
    user = notes.get(AUDIT_JOB_USER) if job is not None else labels.get("vre.user")
    container_id, started = "", None
    statuses = status.get("containerStatuses") or []
    if statuses:
        running = (statuses[0].get("state") or {}).get("running")
        container_id = (statuses[0].get("containerID") or "").partition("://")[2]
        if running and container_id:
            started = _timestamp(running.get("startedAt"))
    ended = bool(meta.get("deletionTimestamp")) or status.get("phase") in ("Succeeded", "Failed") or (
        bool(statuses) and bool((statuses[0].get("state") or {}).get("terminated")))
    return Run(uid=meta.get("uid", ""), name=f"{meta.get('namespace')}/{meta.get('name')}",
               session=notes.get(AUDIT_SESSION) or meta.get("name", ""),
               user=user or f"{labels.get('vre.project', '?')} worker", project=labels.get("vre.project", ""),
               role=role, datasets=datasets, job=job, serial=str(notes.get(AUDIT_JOB_SERIAL) or ""),
               container_id=container_id, started=started, ended=ended)


def _timestamp(text) -> float | None:
    if not text:
        return None
    if isinstance(text, dt.datetime):
        return text.timestamp()
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def find_inits(runs: list[Run], proc: Path = Path("/proc")) -> dict[str, int]:
    """pod uid -> host pid of its container's first process, for the runs found, in one pass over
    ``proc``: a process pid 1 of its pid namespace, in the container's cgroup (the path names the
    container's id once the kubelet told it) or, before that, in the pod's cgroup (the path names
    the pod's uid, with ``_`` for ``-`` under the systemd driver) and named ``vre-gate`` (the pod's
    other pid 1 is its sandbox's pause). So a gate is found as soon as it runs, without waiting
    for the kubelet's next status of the pod (up to a second later)."""
    marks = {}
    for r in runs:
        if len(r.container_id) >= 12:
            marks[r.uid] = (r.container_id, True)
        elif r.uid:
            marks[r.uid] = (f"pod{r.uid}", False)
    found: dict[str, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit() or len(found) == len(marks):
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue
        for uid, (mark, by_container) in marks.items():
            if uid in found or (mark not in cgroup and mark.replace("-", "_") not in cgroup):
                continue
            try:
                nspid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("NSpid:"))
                named = by_container or GATE_NAME.encode() in (entry / "cmdline").read_bytes().split(b"\0")[:4]
            except (OSError, StopIteration):
                continue
            if nspid.split()[-1] == "1" and named:
                found[uid] = int(entry.name)
    return found


def gate_pause(took: float) -> float:
    """Seconds until the next look for gates, after one that took ``took`` seconds."""
    return max(GATE_POLL, GATE_DUTY * took)


def gate_state(pid: int, proc: Path = Path("/proc")) -> str | None:
    """Where the container's first process is: ``waiting`` at the gate (the shell named
    ``vre-gate`` catches SIGUSR1: a signal before its trap would be lost, as pid 1 ignores what it
    does not catch), ``starting`` (the shell, its trap not set yet), ``past`` (it became the
    container's command), None (gone)."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        caught = next(line for line in (proc / str(pid) / "status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return None
    if GATE_NAME.encode() not in argv[:4]:
        return "past"
    return "waiting" if int(caught.split()[1], 16) & SIGUSR1_BIT else "starting"


class NodeObserver(Recorder):
    """The observer of one node: marks the gated pods running here, and opens their gates."""

    def __init__(self, *, instance: str, node: str, hub_url: str, token_file: Path, state_dir: Path,
                 watcher: Watcher | None = None, cgroups: Path = CGROUP_ROOT):
        super().__init__(watcher or Watcher(Registry(state_dir), via=SCHEME, where={"node": node}, cgroups=cgroups))
        self.instance, self.node, self.token_file = instance, node, Path(token_file)
        self.url = f"{hub_url.rstrip('/')}/services/vre/{HOST_EVENTS_ROUTE}"
        self.assignments_url = f"{hub_url.rstrip('/')}/services/vre/{HOST_ASSIGNMENTS_ROUTE}"
        self.runs: dict[str, Run] = {}      # pod uid -> what it is, for pods seen on this node
        self.opened: set[str] = set()       # pod uids whose gate this observer opened or found open
        self.retry: dict[str, float] = {}   # pod uid -> when to try marking again after a refusal
        self.find_inits = find_inits        # runs -> the host pids of their containers' first processes
        self.since = time.time()            # pods started before this are the ones it may have missed
        self.noted: dict[str, tuple] = {}    # pod uid -> (job, serial) the hub was told its reads are for
        self.to_note: dict[str, tuple] = {}  # pod uid -> (job, serial) to tell the hub of
        # pod uid -> ((job, user), the queue's count of empty reads when that job was seen): a new
        # job a backlog holds back, counted from the first empty read after that
        self.behind: dict[str, tuple[tuple, int]] = {}
        self._notes_due = asyncio.Event()

    # -- pods -----------------------------------------------------------------------------------
    def seen(self, pod: dict, deleted: bool = False) -> None:
        """A pod as listed or watched: note it, open its gate when it waits, follow its job, and
        forget it when it ended (its marks go with its process: ``Recorder.tick``)."""
        run = parse_pod(pod, self.instance)
        if run is None:
            return
        if deleted or run.ended:
            # its marks stay until its process is gone (``Recorder.tick``): a pod being deleted
            # still runs for its grace period, and a worker's name comes back for its successor
            self.forget(run.uid)
            return
        self.runs[run.uid] = run
        self.follow_job(run)
        self.open_gates([run])

    def follow_job(self, run: Run) -> None:
        """Count a marked worker's reads for the job its pod names now, and then tell the hub:
        once the kernel's queue was read empty after the new job was seen (every earlier read is
        the previous job's). Behind a flood's backlog, not yet: the reading loop reads it on and
        the gates' loop tries again (``retry_jobs``), while the engine's hand-out waits."""
        marked = self.watcher.marks.get(run.session)
        if marked is not None and marked.pod_uid in ("", run.uid) and (marked.job, marked.user) != (run.job, run.user):
            held = self.behind.get(run.uid)
            new = held is None or held[0] != (run.job, run.user)
            if new:
                held = self.behind[run.uid] = ((run.job, run.user), self.watcher.emptied)
            try:   # ("": marked by an older observer)
                self.watcher.assign(run.session, run.user, run.job, since=held[1], reads=STEP)
            except Behind as e:
                if new:
                    log.warning("%s: %s", run.session, e)
                return
        self.behind.pop(run.uid, None)
        self.note_job(run)

    def note_job(self, run: Run) -> None:
        """Tell the hub (soon, in ``_notes``) the job a worker's reads are counted for, once they
        are: for a hand-out the engine waits on (one with a serial; not a pod made for its job)."""
        marked = self.watcher.marks.get(run.session)
        said = (run.job, run.serial)
        if run.job is None or not run.serial or marked is None or marked.pod_uid not in ("", run.uid) or marked.job != run.job \
                or self.noted.get(run.uid) == said:
            return
        self.to_note[run.uid] = said
        self._notes_due.set()

    def retry_jobs(self) -> None:
        """Try again the new jobs of workers that a backlog held back (``follow_job``), once the
        queue was read empty since (until then a try would only read what the reading loop reads)."""
        for uid, (_, since) in list(self.behind.items()):
            run = self.runs.get(uid)
            if run is None:
                self.behind.pop(uid, None)
            elif self.watcher.emptied != since:
                try:
                    self.follow_job(run)
                except Exception:   # one pod's trouble must not stop the others'
                    log.exception("following the job of %s failed; trying again", run.session)
                    if uid in self.behind:   # again after the next empty read, not at every pass
                        self.behind[uid] = (self.behind[uid][0], self.watcher.emptied)

    def forget(self, uid: str) -> Run | None:
        self.behind.pop(uid, None)
        self.opened.discard(uid)
        self.retry.pop(uid, None)
        self.noted.pop(uid, None)
        self.to_note.pop(uid, None)
        return self.runs.pop(uid, None)

    def relisted(self, pods: list[dict]) -> None:
        """A full list: pods no longer there ended while the watch was away (their marks go with
        their processes, in ``Recorder.tick``)."""
        present = set()
        for pod in pods:
            present.add((pod.get("metadata") or {}).get("uid"))
            try:
                self.seen(pod)
            except Exception:   # one pod's trouble must not keep the others unseen
                log.exception("handling pod %s failed", (pod.get("metadata") or {}).get("name"))
        for uid in [u for u in self.runs if u not in present]:
            self.forget(uid)

    def open_gates(self, runs: list[Run]) -> None:
        """Open the gate of each run not opened yet whose first process is there."""
        now, waiting = time.monotonic(), []
        for run in runs:
            if run.uid in self.opened or self.retry.get(run.uid, 0) > now:
                continue
            marked = self.watcher.marks.get(run.session)
            if run.session in self.ending or (marked is not None and marked.pod_uid not in ("", run.uid)):
                # a predecessor of the same name runs out its grace, or has ended and its queued
                # reads are read as its own (``Recorder.tick``): this one is marked after it
                continue
            if marked is not None and alive(marked):
                # marked again from the registry after a restart; one marked just before it
                # may still wait for its signal
                self.opened.add(run.uid)
                if gate_state(marked.pid) == "waiting":
                    self._signal(run, marked.pid)
            else:
                waiting.append(run)
        if waiting:
            pids = self.find_inits(waiting)
            for run in waiting:
                if run.uid in pids:
                    self.open_gate(run, pids[run.uid])

    def open_gate(self, run: Run, pid: int) -> None:
        """Mark the run's dataset mounts, then let it go; a run already past its gate that is not
        marked (the registry was lost) is marked with the gap recorded."""
        state = gate_state(pid)
        if state in (None, "starting"):
            return                      # looked at again in GATE_POLL (``_gates``)
        if state == "past" and (run.started is None or run.started >= self.since - 1):
            # not the gate yet (the runtime's own step before the container's command, e.g. runc
            # init): a container that started after this observer did was seen at its gate
            return
        m = Marked(session=run.session, user=run.user, project=run.project, pid=pid, pid_start=0, role=run.role,
                   job=run.job, datasets=[dict(d) for d in run.datasets], pod_uid=run.uid)
        try:
            self.watcher.mark(m)
        except MarkError as e:
            if run.uid not in self.retry:
                log.error("cannot mark %s (%s): %s; its gate stays shut (trying again each second)",
                          run.name, run.session, e)
            self.retry[run.uid] = time.monotonic() + 1
            return
        self.retry.pop(run.uid, None)
        self.opened.add(run.uid)
        self.note_job(run)
        if state == "waiting":
            self._signal(run, pid)
            return
        now = time.time()
        since = run.started or now
        log.error("%s ran past its gate unmarked (a lost registry?): marked now, the gap recorded", run.name)
        self.watcher.outbox.append(self.watcher.gap(m, since, now, what="dataset reads"))

    @staticmethod
    def _signal(run: Run, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:   # the pod went meanwhile: its end unmarks it
            return
        log.info("opened the gate of %s (%s, pid %s)", run.name, run.session, pid)

    async def _gates(self) -> None:
        """Pods of this node whose gate the observer has not opened yet: their container may not
        run yet, or its shell had not set its trap when last looked at; and workers whose new job
        waits for a backlog (``follow_job``)."""
        while not self._stop.is_set():
            pending = [r for r in self.runs.values() if r.uid not in self.opened]
            began = time.monotonic()
            try:
                if pending:
                    self.open_gates(pending)
            except Exception:   # one pod's trouble must not stop the gates of the others
                log.exception("opening gates failed; trying again")
            self.retry_jobs()
            try:
                await asyncio.wait_for(self._stop.wait(), gate_pause(time.monotonic() - began))
            except asyncio.TimeoutError:
                pass

    async def _pods(self) -> None:
        """List this node's observed pods, then watch them; list again when a watch ends."""
        from kubernetes_asyncio import client, config, watch

        config.load_incluster_config()
        async with client.ApiClient() as api_client:
            api = client.CoreV1Api(api_client)
            selector = {"label_selector": f"vre.instance={self.instance},{OBSERVED_LABEL}=observed",
                        "field_selector": f"spec.nodeName={self.node}"}
            while not self._stop.is_set():
                try:
                    listed = await api.list_pod_for_all_namespaces(**selector, _request_timeout=60)
                    self.relisted([api_client.sanitize_for_serialization(p) for p in listed.items])
                    # a half-open connection must not hold the watch for ever: the client has no timeout of its own
                    async with watch.Watch().stream(api.list_pod_for_all_namespaces, **selector,
                                                    resource_version=listed.metadata.resource_version,
                                                    timeout_seconds=WATCH_S, _request_timeout=WATCH_S + 30) as events:
                        async for event in events:   # a 410 Gone raises: listed again below
                            try:
                                self.seen(event["raw_object"], deleted=event["type"] == "DELETED")
                            except Exception:
                                log.exception("handling an event of pod %s failed",
                                              (event["raw_object"].get("metadata") or {}).get("name"))
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the API server restarts, the network blips: list again soon
                    log.warning("watching the pods of node %s: %s; listing again", self.node, e)
                    await asyncio.sleep(2)

    # -- records ----------------------------------------------------------------------------------
    def store(self, events: list) -> None:
        """Post the records in chunks of ``CHUNK``. A chunk the hub refuses as bad (400) is sent
        one record at a time, and a record it refuses alone is logged in full and dropped: one
        bad record must not hold back every later one. Anything else raises (kept, sent again)."""
        for i in range(0, len(events), CHUNK):
            chunk = events[i:i + CHUNK]
            if self._post(chunk):
                continue
            for event in chunk:
                if not self._post([event]):
                    log.error("the hub refused a record; dropped: %s", json.dumps(event.to_dict()))

    def _post(self, events: list) -> bool:
        """True when stored; False when the hub refused them as bad (400)."""
        return self._send(self.url, {"node": self.node, "events": [e.to_dict() for e in events]})

    def _send(self, url: str, payload: dict) -> bool:
        """POST ``payload`` with this pod's token: True when taken, False when the hub refused it
        as bad (400); anything else raises."""
        body = json.dumps(payload).encode()
        token = self.token_file.read_text().strip()   # OSError: kept, sent again
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Authorization": f"{SCHEME} {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
            return True
        except urllib.error.HTTPError as e:
            if e.code == 400:
                return False
            raise RuntimeError(f"the hub refused the post: {e.code} {e.read()[:300]!r}") from None

    async def _notes(self) -> None:
        """Tell the hub which jobs this node's workers' reads are now counted for, as soon as they
        are (the job engine waits for it to hand a worker its job); retried until taken."""
        while True:
            waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._notes_due.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if self._stop.is_set():
                return
            self._notes_due.clear()
            try:
                await self.send_notes()
            except Exception as e:   # the hub restarts: the engine waits, so try again soon
                log.warning("could not tell the hub which jobs this node's workers run (%s); trying again", e)
                try:
                    await asyncio.wait_for(self._stop.wait(), ACK_RETRY_S)
                except asyncio.TimeoutError:
                    pass
            if self.to_note:
                self._notes_due.set()

    async def send_notes(self) -> None:
        """Post what ``to_note`` holds (at most a post's worth); raises when the hub did not answer."""
        due = dict(list(self.to_note.items())[:MAX_ASSIGNMENTS_PER_POST])
        if not due:
            return
        payload = {"node": self.node, "assignments": [{"pod_uid": u, "job": j, "serial": n}
                                                      for u, (j, n) in due.items()]}
        if not await asyncio.to_thread(self._send, self.assignments_url, payload):
            log.error("the hub refused the jobs of this node's workers as bad; dropped: %s", payload)
        for uid, said in due.items():
            if self.to_note.get(uid) == said:   # not changed meanwhile
                del self.to_note[uid]
                self.noted[uid] = said

    # -- life -------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        back = self.watcher.restore()
        if back:
            log.warning("marked %d run(s) again after a restart: %s", len(back), ", ".join(back))
        log.info("vre observer on node %s (instance %s), records to %s", self.node, self.instance, self.url)
        tasks = [asyncio.create_task(t) for t in (self._reads(), self._ticks(), self._gates(), self._notes())]
        pods = asyncio.create_task(self._pods())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stop, pods], return_when=asyncio.FIRST_COMPLETED)
        self._stop.set()
        pods.cancel()
        await asyncio.gather(*tasks)
        self.watcher.stop()
        await self.deliver()
        if pods.done() and not pods.cancelled() and pods.exception():
            # e.g. no service account: exit, so that the kubelet restarts the pod and says so
            raise SystemExit(f"the observer cannot watch the pods of node {self.node}: {pods.exception()}")
        log.info("vre observer stopped; its marks are re-made by the next one")


def host_cgroup_namespace() -> None:
    """Enter the node's cgroup namespace (that of its pid 1: the pod shares the node's pids), so
    that pods' cgroup paths read as the node's, under the host cgroup filesystem the chart mounts
    (``VRE_OBSERVER_CGROUPS``): how the observer freezes a pod that outruns it (``pause``). A
    container runtime gives a container a namespace of its own on cgroup v2."""
    try:
        if os.stat("/proc/1/ns/cgroup").st_ino == os.stat("/proc/self/ns/cgroup").st_ino:
            return
        fd = os.open("/proc/1/ns/cgroup", os.O_RDONLY)
    except OSError as e:
        log.error("cannot see the node's cgroup namespace (%s): pods that outrun the observer cannot be frozen", e)
        return
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWCGROUP) != 0:
            log.error("cannot enter the node's cgroup namespace (%s): pods that outrun the observer "
                      "cannot be frozen", os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-observer] %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("the observer must run as root (fanotify, /proc/<pid>/root of pods)")
    env = os.environ
    missing = [k for k in ("VRE_INSTANCE", "NODE_NAME", "VRE_OBSERVER_HUB_URL", "VRE_OBSERVER_TOKEN_FILE")
               if not env.get(k)]
    if missing:
        raise SystemExit(f"the observer needs {', '.join(missing)} in its environment (the chart's DaemonSet sets them)")
    os.nice(NICE)   # the researchers' reads first; the kernel queues the events until the observer reads them
    host_cgroup_namespace()
    observer = NodeObserver(instance=env["VRE_INSTANCE"], node=env["NODE_NAME"], hub_url=env["VRE_OBSERVER_HUB_URL"],
                            token_file=Path(env["VRE_OBSERVER_TOKEN_FILE"]),
                            state_dir=Path(env.get("VRE_OBSERVER_STATE", "/var/lib/vre-observer")),
                            cgroups=Path(env.get("VRE_OBSERVER_CGROUPS") or CGROUP_ROOT))
    asyncio.run(observer.run())


if __name__ == "__main__":
    main()
