"""Scale by simulation: N users start sessions through one hub on simulated Kubernetes nodes (kwok).

    sudo .venv/bin/python bench/k8s_scale.py [--users 100,1000] [--nodes 8] [--projects 10]
                                             [--deadline 900] [--setting VRE_X=V ...] [--logs DIR]

The hub is a real ``vre up`` on ``backend = "kubernetes"`` (the process on this machine, as in
``tests/k8s/test_k8s_hub.py``), against the real API server of this machine's test cluster
(``scripts/k8s-cluster up``, under the Kubernetes tests' lock). The cluster gets ``--nodes``
simulated nodes: Node objects that kwok (``scripts/k8s-build kwok``, built from its Go module)
keeps ready, and whose pods it reports running at once, each with an address from its node's pod
range. Everything else is real: the hub creates each project's namespace, policies and quota, each
session's Secret and pod, the scheduler places the pods, and the hub waits for them, then for the
session's server to answer, as for a real session.

What is simulated, and where it stays:

- The nodes' pod ranges are ``127.77.<node>.0/24``: every session's address is on this machine's
  loopback. The session's server is a stub of this script's own, listening on each of those
  addresses at the session port, answering any request with 200: what JupyterHub waits for.
  Nothing is sent anywhere else (no traffic leaves 127.0.0.0/8).
- The bench projects' profile selects the simulated nodes (``node_selector``, as a hospital's GPU
  profile selects its nodes), so no session lands on the real node.
- The projects have no datasets (a simulated pod has no process for the observer's gate).

Rounds: N = 1 first (the baseline, in the same run), then each ``--users``. In a round every user
asks for a session at once (``POST /hub/api/users/<u>/servers/<project>``; a 429 from the hub's
spawn limit is retried after its Retry-After, as the spawn page does) and waits until the hub says
it is ready; then all stop. Printed per round:

- spawn-to-ready p50/p95/max, spawn throughput (sessions ready per second), failures by cause,
  429 answers;
- the hub REST API's latency p50/p95 under the load: a probe reads ``GET /hub/api/user`` every
  0.25 s (the target at 1,000: p95 < 1 s);
- hub, proxy and access-layer CPU seconds and peak RSS;
- API-server requests per spawn: the hub's own (counted in the hub process, by verb and
  resource) and the API server's total (``apiserver_request_total``: every client, kwok's status
  writes and the scheduler's bindings included).

Needs root, the test cluster's binaries (``scripts/k8s-build``) and kwok (built on first use, about
2 minutes). Nothing is asserted on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))
sys.path.insert(0, str(ROOT / "tests" / "k8s"))   # testcluster (after tests/: its conftest is not ours)
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub, free_port  # noqa: E402
from hubclient import HubClient, HubError  # noqa: E402
from load import Deadline, LoadUser, Recorder, Sampler, pct  # noqa: E402

import testcluster  # noqa: E402

NODE_LABEL = "vre.bench/simulated"
POD_RANGE = "127.77.{}.0/24"
PROFILE = "sim"
#: The stages kwok plays for the simulated nodes and their pods (kwok's Stage API).
STAGES = """
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vre-bench-node-ready
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ["True"]
  next:
    statusTemplate: |
      conditions:
      - type: Ready
        status: "True"
        reason: KubeletReady
        message: a node simulated by kwok for bench/k8s_scale.py
        lastHeartbeatTime: {{ Now | Quote }}
        lastTransitionTime: {{ Now | Quote }}
      capacity: {cpu: "256", memory: 1Ti, pods: "250"}
      allocatable: {cpu: "256", memory: 1Ti, pods: "250"}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vre-bench-pod-running
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: DoesNotExist
    - key: .status.phase
      operator: In
      values: [Pending]
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vre-bench-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
  next:
    finalizers: {empty: true}
    delete: true
"""

#: The hub's JupyterHub config (VRE_HUB_CONFIG): the VRE's own, plus a count of the hub
#: process's calls to the API server by verb and resource, written to COUNTS every second.
COUNT_CONFIG = '''
load_subconfig(HUB_CONFIG)
import collections, json, os, re, threading, time
from kubernetes_asyncio.client import rest as _rest

_counts = collections.Counter()
_request = _rest.RESTClientObject.request


async def _counted(self, method, url, *args, **kwargs):
    path = re.sub(r"\\?.*", "", url.split("://", 1)[-1].split("/", 1)[-1])
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts[:1] == ["api"] else parts[3:]
    what = parts[0] if parts else "?"
    if len(parts) > 2:
        what += "/" + parts[2]
    _counts[f"{method} {what}"] += 1
    return await _request(self, method, url, *args, **kwargs)


_rest.RESTClientObject.request = _counted


def _dump():
    while True:
        time.sleep(1)
        with open(COUNTS + ".tmp", "w") as f:
            json.dump(_counts, f)
        os.replace(COUNTS + ".tmp", COUNTS)


threading.Thread(target=_dump, daemon=True).start()
'''


class Stub(threading.Thread):
    """The simulated sessions' servers: one listener per address of the simulated pod ranges (all
    on loopback), at the session port, answering 200 to anything: what JupyterHub waits for."""

    def __init__(self, nodes: int, port: int):
        super().__init__(daemon=True)
        self.hosts = [f"127.77.{n}.{h}" for n in range(nodes) for h in range(1, 255)]
        self.port, self.ready, self.loop = port, threading.Event(), asyncio.new_event_loop()
        self.requests = 0

    def run(self) -> None:
        stub = self

        class Answer(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport, self.data = transport, b""

            def data_received(self, data):
                self.data += data
                if b"\r\n\r\n" in self.data:
                    stub.requests += 1
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                    self.transport.close()

        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(self.loop.create_server(Answer, self.hosts, self.port))
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class Simulated:
    """kwok and its nodes on the test cluster (the cluster is brought up here unless it runs)."""

    def __init__(self, nodes: int, workdir: Path):
        self.nodes, self.workdir = nodes, workdir
        self.kube = testcluster.Kube(testcluster.busybox())
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        built = subprocess.run([str(ROOT / "scripts" / "k8s-build"), "kwok"], capture_output=True, text=True)
        if built.returncode:
            sys.exit(f"scripts/k8s-build kwok failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")
        kwok = next(line.split()[2] for line in subprocess.run(
            [str(ROOT / "scripts" / "k8s-build"), "--list"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("kwok "))
        (self.workdir / "stages.yaml").write_text(STAGES)
        log = open(self.workdir / "kwok.log", "ab")
        self.proc = subprocess.Popen(
            [kwok, f"--kubeconfig={testcluster.KUBECONFIG}", f"--config={self.workdir / 'stages.yaml'}",
             f"--manage-nodes-with-label-selector={NODE_LABEL}=true", "--node-lease-duration-seconds=40",
             f"--server-address=127.0.0.1:{free_port()}"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for n in range(self.nodes):
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": f"sim-{n}", "labels": {NODE_LABEL: "true", "kubernetes.io/hostname": f"sim-{n}",
                                                               "kubernetes.io/os": "linux"}},
                    "spec": {"podCIDR": POD_RANGE.format(n), "podCIDRs": [POD_RANGE.format(n)]}}
            self.kube("apply", "-f", "-", input=json.dumps(node))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = self.kube("get", "nodes", "-l", f"{NODE_LABEL}=true", "-o",
                              "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status} {end}").split()
            if ready.count("True") == self.nodes:
                return
            if self.proc.poll() is not None:
                sys.exit(f"kwok exited ({self.proc.returncode}); its log: {self.workdir / 'kwok.log'}")
            time.sleep(1)
        sys.exit(f"the simulated nodes did not become ready in 120 s; kwok's log: {self.workdir / 'kwok.log'}")

    def stop(self) -> None:
        self.kube.run("delete", "nodes", "-l", f"{NODE_LABEL}=true", "--wait=false", timeout=120)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def apiserver_requests(kube: testcluster.Kube) -> collections.Counter:
    """apiserver_request_total by (verb, resource[/subresource]), every client together."""
    out: collections.Counter = collections.Counter()
    for line in kube("get", "--raw", "/metrics", timeout=60).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        what = labels.get("resource", "?") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        out[f"{labels.get('verb')} {what}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def hub_requests(path: Path) -> collections.Counter:
    time.sleep(1.5)   # the hub writes its count every second
    try:
        return collections.Counter(json.loads(path.read_text()))
    except (OSError, ValueError):
        return collections.Counter()


def make_world(hub: Hub, users: int, projects: int) -> list[tuple[str, str, str]]:
    """Projects ``scale-NN`` with the profile ``sim`` (on the simulated nodes, no datasets) and
    ``users`` accounts spread over them; (user, password, project) each."""
    from vre import db as vdb
    from vre import projects as P
    from vre.accounts import add_account
    from vre.settings import load

    settings = load(environ={k: v for k, v in hub.env.items() if k.startswith("VRE_")})
    out = []
    with vdb.session_scope(settings.vre_db_url) as db:
        for p in range(projects):
            P.create_project(db, f"scale-{p:02d}", f"Scale {p}")
        db.flush()
        for p in range(projects):
            P.set_profile(db, f"scale-{p:02d}", PROFILE, cpu=0.1, memory="256M",
                          node_selector=[f"{NODE_LABEL}=true"])
        for i in range(users):
            name, password, project = f"sim{i:04d}", secrets.token_urlsafe(12), f"scale-{i % projects:02d}"
            add_account(db, name, password=password)
            db.flush()
            P.add_member(db, project, name)
            out.append((name, password, project))
    return out


class Probe(threading.Thread):
    """``GET /hub/api/user`` every 0.25 s: the hub API's latency while the round runs."""

    def __init__(self, client: HubClient):
        super().__init__(daemon=True)
        self.client, self.stop_event, self.times, self.errors = client, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            t = time.monotonic()
            try:
                r = self.client.api("GET", "/user")
                if r.status_code != 200:
                    self.errors += 1
            except requests.RequestException:
                self.errors += 1
            self.times.append(time.monotonic() - t)


def run_round(hub: Hub, users: list[tuple[str, str, str]], tokens: dict[str, str], probe_client: HubClient,
              deadline_s: float, kube: testcluster.Kube, counts: Path) -> dict:
    rec, sampler, probe = Recorder(), Sampler(hub), Probe(probe_client)
    api_before, hub_before = apiserver_requests(kube), hub_requests(counts)
    ready_at: list[float] = []
    sampler.start()
    probe.start()
    t0 = time.monotonic()
    deadline = t0 + deadline_s

    def one(name: str, project: str) -> None:
        u = LoadUser(hub.url, name, rec, deadline)
        u.token = tokens[name]
        t = time.monotonic()
        try:
            u.spawn(project)
            rec.phase("spawn", time.monotonic() - t)
            with rec.lock:
                ready_at.append(time.monotonic() - t0)
        except Deadline:
            with rec.lock:
                rec.failures["spawn: deadline"] += 1
        except (HubError, requests.RequestException) as e:
            with rec.lock:
                rec.failures[f"spawn: {str(e)[:160]}"] += 1

    threads = [threading.Thread(target=one, args=(n, p), daemon=True) for n, _, p in users]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(0.0, deadline + 60 - time.monotonic()))
    spawn_wall = time.monotonic() - t0
    probe.stop_event.set()
    probe.join()
    api_after, hub_after = apiserver_requests(kube), hub_requests(counts)
    cpu_mid = sampler.cpu()

    t1 = time.monotonic()

    def stop(name: str, project: str) -> None:
        u = HubClient(hub.url, name)
        u.token = tokens[name]
        try:
            u.stop(project, timeout=max(60.0, deadline_s))
            rec.phase("stop", time.monotonic() - t1)
        except Exception as e:  # noqa: BLE001 - counted, the others go on
            with rec.lock:
                rec.failures[f"stop: {str(e)[:160]}"] += 1
    stoppers = [threading.Thread(target=stop, args=(n, p), daemon=True) for n, _, p in users]
    for th in stoppers:
        th.start()
    for th in stoppers:
        th.join(timeout=deadline_s + 120)
    sampler.stop_event.set()
    sampler.join()
    return {"n": len(users), "rec": rec, "spawn_wall": spawn_wall, "stop_wall": time.monotonic() - t1,
            "ready_at": sorted(ready_at), "probe": probe.times, "probe_errors": probe.errors,
            "cpu": {k: cpu_mid.get(k, 0) - sampler.cpu_start.get(k, 0) for k in cpu_mid},
            "peak_rss": dict(sampler.peak_rss),
            "apiserver": api_after - api_before, "hub_calls": hub_after - hub_before}


def report(r: dict, base: dict | None) -> None:
    rec: Recorder = r["rec"]
    n, spawns = r["n"], rec.phases.get("spawn", [])
    failed = sum(v for k, v in rec.failures.items() if k.startswith("spawn"))
    print(f"\n== {n} user(s): {len(spawns)}/{n} sessions ready in {r['spawn_wall']:.1f} s "
          f"({len(spawns) / max(r['spawn_wall'], 1e-9):.1f} per s); {failed} failed spawn(s); "
          f"{rec.throttled} answer(s) 429; all stopped in {r['stop_wall']:.1f} s")
    b = base["rec"].phases.get("spawn") if base else None
    print(f"   spawn-to-ready  p50 {pct(spawns, .5):6.2f} s  p95 {pct(spawns, .95):6.2f} s  max "
          f"{max(spawns or [float('nan')]):6.2f} s" + (f"   (1 user: {pct(b, .5):.2f} s, p50 {pct(spawns, .5) / pct(b, .5):.1f}x)" if b else ""))
    if len(r["ready_at"]) >= 10:
        tenth = [r["ready_at"][int(len(r["ready_at"]) * q) - 1] for q in (0.1, 0.5, 0.9, 1.0)]
        print("   ready by        " + "  ".join(f"{int(q * 100)}%: {t:6.1f} s" for q, t in zip((0.1, 0.5, 0.9, 1.0), tenth)))
    probe = r["probe"]
    bp = base["probe"] if base else None
    print(f"   hub API GET /user under load: n {len(probe)}, p50 {pct(probe, .5) * 1000:5.0f} ms, "
          f"p95 {pct(probe, .95) * 1000:5.0f} ms, max {max(probe or [float('nan')]) * 1000:5.0f} ms, "
          f"{r['probe_errors']} error(s)" + (f"   (1 user: p95 {pct(bp, .95) * 1000:.0f} ms)" if bp else ""))
    print("   target at 1,000: no failed spawns, hub API p95 < 1 s")
    for role in ("hub", "proxy", "access layer"):
        print(f"   {role:<13} CPU {r['cpu'].get(role, 0):6.1f} s during the spawns   "
              f"peak RSS {r['peak_rss'].get(role, 0) / 2**20:6.0f} MiB")
    per = max(len(spawns), 1)
    hub_calls, api = r["hub_calls"], r["apiserver"]
    print(f"   API-server requests per ready session: the hub's own {sum(hub_calls.values()) / per:.1f}, "
          f"every client {sum(api.values()) / per:.1f}")
    print("     hub's:  " + ", ".join(f"{k} {v / per:.2f}" for k, v in hub_calls.most_common(8)))
    print("     server: " + ", ".join(f"{k} {v / per:.2f}" for k, v in api.most_common(8)))
    for cause, count in rec.failures.most_common(8):
        print(f"   failed x{count}: {cause}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="100,1000", help="comma-separated N per round (default 100,1000)")
    ap.add_argument("--nodes", type=int, default=8, help="simulated nodes (250 pods each; default 8)")
    ap.add_argument("--projects", type=int, default=10, help="projects the users are spread over (default 10)")
    ap.add_argument("--deadline", type=float, default=900.0, help="a round's spawns stop after this many seconds")
    ap.add_argument("--setting", action="append", default=[], metavar="VRE_X=V",
                    help="an extra VRE_* setting for the hub, e.g. VRE_SPAWN_LIMIT=50 (repeatable)")
    ap.add_argument("--logs", type=Path, help="keep the hub's and kwok's logs in this directory")
    args = ap.parse_args()
    rounds = [int(n) for n in args.users.split(",") if n.strip()]
    if os.geteuid() != 0:
        sys.exit("bench/k8s_scale.py needs root (the test cluster's daemons)")
    if not 1 <= args.nodes <= 200 or max(rounds) > args.nodes * 240:
        sys.exit(f"--nodes must be 1-200 and hold the largest round ({max(rounds)} sessions: 240 per node)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))   # the stub's listeners, the users

    from vre.backends.kubernetes import SESSION_PORT

    was_up = subprocess.run([str(testcluster.CLUSTER), "status"], capture_output=True).returncode == 0
    testcluster.up()
    hub = Hub("k8s-scale", None)
    sim = Simulated(args.nodes, hub.base_dir)
    stub = Stub(args.nodes, SESSION_PORT)
    counts = hub.base_dir / "hub-api-calls.json"
    try:
        stub.start()
        stub.ready.wait(60)
        sim.start()
        config = hub.base_dir / "count_config.py"
        config.write_text(f"HUB_CONFIG = {str(ROOT / 'hub' / 'jupyterhub_config.py')!r}\n"
                          f"COUNTS = {str(counts)!r}\n" + COUNT_CONFIG)
        spawner = {"hub_address": "10.245.0.1", "image_pull_policy": "Never", "start_timeout": int(args.deadline)}
        hub.env.update(VRE_BACKEND="kubernetes", VRE_K8S_KUBECONFIG=testcluster.KUBECONFIG,
                       VRE_K8S_HUB_PORT=str(free_port()), VRE_K8S_SERVICE_PORT=str(free_port()),
                       VRE_NOTEBOOK_IMAGE=sim.kube.image, VRE_K8S_UNOBSERVED_READS="true",   # the demo's projects
                       VRE_JUPYTERHUB=json.dumps({"KubernetesSpawner": spawner}), VRE_HUB_CONFIG=str(config),
                       VRE_POLL_INTERVAL="30")
        for setting in args.setting:
            key, _, value = setting.partition("=")
            hub.env[key] = value
        hub.start()
        print(f"hub at {hub.url} on backend kubernetes; {args.nodes} simulated nodes; creating "
              f"{max(rounds)} users in {args.projects} projects ...", flush=True)
        world = make_world(hub, max(rounds) + 1, args.projects)
        t = time.monotonic()
        tokens: dict[str, str] = {}

        def login(entry):
            c = HubClient(hub.url, entry[0])
            tokens[entry[0]] = c.get_token(entry[1])
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(login, world))
        print(f"{len(world)} logins (8 at a time) in {time.monotonic() - t:.0f} s", flush=True)
        probe = HubClient(hub.url, world[-1][0])
        probe.token = tokens[world[-1][0]]
        print(f"machine: {os.cpu_count()} CPUs; spawn limit: {hub.env.get('VRE_SPAWN_LIMIT', 'default')}", flush=True)
        base = run_round(hub, world[:1], tokens, probe, args.deadline, sim.kube, counts)
        report(base, None)
        for n in rounds:
            report(run_round(hub, world[:n], tokens, probe, args.deadline, sim.kube, counts), base)
        print(f"\nstub answered {stub.requests} request(s)")
    finally:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for f in ("hub.log", "kwok.log"):
                if (hub.base_dir / f).exists():
                    (args.logs / f).write_bytes((hub.base_dir / f).read_bytes())
        try:
            hub.teardown()   # the hub, then `vre down`: its proxy and access layer go too
        except Exception as e:  # noqa: BLE001 - go on cleaning up
            print(f"warning: stopping the hub: {e}", file=sys.stderr)
        namespaces = sim.kube("get", "namespaces", "-o", "name").split()
        mine = [n for n in namespaces if n.startswith(f"namespace/{hub.instance}-")]
        if mine:
            sim.kube.run("delete", *mine, "--wait=true", timeout=600)
        sim.stop()
        stub.stop()
        if not was_up:
            testcluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
