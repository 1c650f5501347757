"""Many users at once (hubtraf-style): N simulated researchers against one real hub.

    sudo .venv/bin/python bench/load.py [--users 25,50,100] [--ramp 10] [--deadline 300]
                                        [--project lung-screening] [--logs DIR]

One hub (``vre up``, small demo, SQLite, free 127.0.0.1 ports) serves every round. Each simulated
user, in a thread of its own, does what a researcher's browser does:

1. ``login``   the login form (GET, POST with the XSRF cookie), then an API token;
2. ``spawn``   POST ``/hub/api/users/<u>/servers/<project>`` until the hub reports it ready; a 429
               (the hub's spawn throttle or its session limit) is retried after ``Retry-After``
               (or 5 s when the hub gives none): a queue, as JupyterHub's own spawn page does;
3. ``lab``     GET the Lab page through the access layer;
4. ``kernel``  start a kernel and run one cell over the websocket;
5. ``viewer``  list the dataset's series, open one (metadata) and read its middle slice;
6. ``stop``    DELETE the server and wait until it is gone.

Users start spread over ``--ramp`` seconds. Each round stops by itself at ``--deadline``: a user that
has not finished then counts as failed (``deadline``) and its session is stopped. Every request
goes to 127.0.0.1. The baseline is one user alone (N = 1) in the same run, on the same hub.

Printed per round: per-phase p50/p95/max; the hub REST API's p50/p95 per method over every call the
users made (a spawn's POST answers only when the server is ready or after 10 s: it is not the API's
latency, the GETs are);
failures by cause; 429s seen; peak sessions at once; hub, proxy and access-layer CPU seconds and
peak RSS; the simulated users' and the rest's CPU seconds, and the whole machine's busy share
(where a round is CPU-bound, and where it waits); peak total memory of the sessions (their
cgroups). Nothing is asserted on timings.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub, processes  # noqa: E402
from hubclient import HubClient, HubError, Kernel, NotReady  # noqa: E402
from machine import machine_cpu, own_cpu, process_use  # noqa: E402

SLUGS = {"lung-screening": "lung-ct-screening", "prostate-ai": "prostate-mri"}
PHASES = ("login", "spawn", "lab", "kernel", "viewer", "stop")


class Deadline(Exception):
    pass


class Recorder:
    """Timings per phase, hub API latencies, failures by cause and 429s, shared by the user threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phases: dict[str, list[float]] = collections.defaultdict(list)
        self.api: dict[str, list[float]] = collections.defaultdict(list)  # by method
        self.failures: collections.Counter = collections.Counter()
        self.throttled = 0
        self.done = 0

    def phase(self, name: str, seconds: float) -> None:
        with self.lock:
            self.phases[name].append(seconds)

    def api_call(self, method: str, seconds: float) -> None:
        with self.lock:
            self.api[method].append(seconds)


class LoadUser(HubClient):
    """A HubClient that times its hub API calls and honours 429 with Retry-After."""

    def __init__(self, base: str, name: str, rec: Recorder, deadline: float):
        super().__init__(base, name)
        self.rec, self.deadline = rec, deadline

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise Deadline()

    def api(self, method, path, **kw):
        t = time.monotonic()
        r = super().api(method, path, **kw)
        self.rec.api_call(method, time.monotonic() - t)
        return r

    def spawn(self, project: str) -> None:
        while True:
            self.check_deadline()
            r = self.api("POST", f"/users/{self.username}/servers/{project}", json={})
            if r.status_code in (201, 202):
                break
            if r.status_code == 429:
                with self.rec.lock:
                    self.rec.throttled += 1
                time.sleep(min(float(r.headers.get("Retry-After") or 5), max(0.0, self.deadline - time.monotonic())))
                continue
            raise HubError(f"spawn answered {r.status_code}: {r.text[:200]}")
        try:
            self.wait_ready(project, timeout=max(0.0, self.deadline - time.monotonic()), interval=0.5)
        except NotReady:
            raise Deadline() from None


def simulate(hub: Hub, name: str, password: str, project: str, rec: Recorder, deadline: float) -> None:
    u = LoadUser(hub.url, name, rec, deadline)
    started = False
    phase = "login"
    try:
        t = time.monotonic()
        u.get_token(password)
        rec.phase("login", time.monotonic() - t)

        phase, t = "spawn", time.monotonic()
        started = True
        u.spawn(project)
        rec.phase("spawn", time.monotonic() - t)

        phase, t = "lab", time.monotonic()
        r = requests.get(f"{u.server_url(project)}/lab", headers={"Authorization": f"token {u.token}"}, timeout=60)
        if r.status_code != 200 or "jupyter-config-data" not in r.text:
            raise HubError(f"Lab page: {r.status_code}")
        rec.phase("lab", time.monotonic() - t)

        phase, t = "kernel", time.monotonic()
        r = u.server_api(project, "POST", "/kernels", json={"name": "python3"}, timeout=90)
        if r.status_code != 201:
            raise HubError(f"kernel start: {r.status_code}")
        k = Kernel(u, project, r.json()["id"])
        try:
            if k.check("print(6 * 7)", timeout=90).strip() != "42":
                raise HubError("the cell printed something else")
        finally:
            k.close()
        rec.phase("kernel", time.monotonic() - t)

        phase, t = "viewer", time.monotonic()
        series = f"{u.server_url(project)}/vre/api/datasets/{SLUGS[project]}/series"
        auth = {"Authorization": f"token {u.token}"}
        listing = requests.get(series, params={"limit": 1}, headers=auth, timeout=60)
        listing.raise_for_status()
        uid = listing.json()["items"][0]["series_uid"]
        meta = requests.get(f"{series}/{uid}", headers=auth, timeout=60)
        meta.raise_for_status()
        pixels = requests.get(f"{series}/{uid}/slices/{meta.json()['num_slices'] // 2}", headers=auth, timeout=60)
        pixels.raise_for_status()
        rec.phase("viewer", time.monotonic() - t)

        phase, t = "stop", time.monotonic()
        u.stop(project, timeout=max(5.0, deadline + 60 - time.monotonic()))
        started = False
        rec.phase("stop", time.monotonic() - t)
        with rec.lock:
            rec.done += 1
    except Deadline:
        with rec.lock:
            rec.failures[f"{phase}: deadline"] += 1
    except Exception as e:  # noqa: BLE001 - every failure is counted by cause
        cause = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        with rec.lock:
            rec.failures[f"{phase}: {cause}"] += 1
    finally:
        if started:
            try:
                u.deadline = time.monotonic() + 120
                u.stop(project, timeout=120)
            except Exception:  # noqa: BLE001 - counted already
                pass


class Sampler(threading.Thread):
    """Samples the hub's processes (CPU seconds, RSS) and the sessions' cgroup memory every 0.5 s."""

    def __init__(self, hub: Hub):
        super().__init__(daemon=True)
        self.hub, self.stop_event = hub, threading.Event()
        self.peak_rss: dict[str, int] = collections.Counter()
        self.cpu_start = self.cpu()
        self.machine_start, self.own_start = machine_cpu(), own_cpu()
        self.peak_sessions_mem = 0
        self.peak_sessions = 0

    def processes(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = collections.defaultdict(list)
        needle = str(self.hub.base_dir).encode()
        for pid, cmd, env in processes():
            if needle not in cmd + env:
                continue
            if b"jupyterhub" in cmd and b"singleuser" not in cmd and b"vre_session" not in cmd:
                found["hub"].append(pid)
            elif b"configurable-http-proxy" in cmd:
                found["proxy"].append(pid)
            elif b"vre.access" in cmd:
                found["access layer"].append(pid)
        return found

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = collections.Counter()
        for role, pids in self.processes().items():
            for pid in pids:
                try:
                    out[role] += process_use(pid)[0]
                except OSError:
                    pass
        return out

    def sample(self) -> None:
        for role, pids in self.processes().items():
            rss = 0
            for pid in pids:
                try:
                    rss += process_use(pid)[1]
                except OSError:
                    pass
            self.peak_rss[role] = max(self.peak_rss[role], rss)
        cg = Path(f"/sys/fs/cgroup/memory/{self.hub.instance}")
        usage = [int(p.read_text()) for p in cg.glob("*/memory.usage_in_bytes")] if cg.is_dir() else []
        self.peak_sessions_mem = max(self.peak_sessions_mem, sum(usage))
        self.peak_sessions = max(self.peak_sessions, len(usage))

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            self.sample()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_round(hub: Hub, users: list[tuple[str, str]], project: str, ramp: float, deadline_s: float) -> dict:
    rec = Recorder()
    sampler = Sampler(hub)
    sampler.start()
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    threads = []
    for i, (name, password) in enumerate(users):
        delay = ramp * i / max(1, len(users))
        th = threading.Thread(target=lambda n=name, p=password, d=delay: (time.sleep(d), simulate(
            hub, n, p, project, rec, deadline)), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(timeout=max(0.0, deadline + 180 - time.monotonic()))
    wall = time.monotonic() - t0
    sampler.stop_event.set()
    sampler.join()
    cpu_end = sampler.cpu()
    busy, every = (end - start for end, start in zip(machine_cpu(), sampler.machine_start))
    return {"n": len(users), "wall": wall, "rec": rec, "peak_rss": dict(sampler.peak_rss),
            "cpu": {k: cpu_end.get(k, 0) - sampler.cpu_start.get(k, 0) for k in cpu_end},
            "own_cpu": own_cpu() - sampler.own_start,
            "machine_busy": busy, "machine_busy_share": busy / every if every else float("nan"),
            "sessions_mem": sampler.peak_sessions_mem, "sessions": sampler.peak_sessions}


def report(result: dict, baseline: dict | None) -> None:
    rec: Recorder = result["rec"]
    n = result["n"]
    print(f"\n== {n} user(s): {rec.done}/{n} completed in {result['wall']:.1f} s; "
          f"{sum(rec.failures.values())} failed; {rec.throttled} answer(s) 429; "
          f"peak {result['sessions']} session(s) at once")
    print(f"   {'phase':<8} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'max s':>8}   p50 vs 1 user")
    for phase in PHASES:
        v = rec.phases.get(phase, [])
        base = statistics.median(baseline["rec"].phases[phase]) if baseline and baseline["rec"].phases.get(phase) else None
        ratio = f"{statistics.median(v) / base:.2f}x" if v and base else ""
        print(f"   {phase:<8} {len(v):>4} {pct(v, .5):>8.2f} {pct(v, .95):>8.2f} {max(v or [float('nan')]):>8.2f}   {ratio}")
    for method, what in (("GET", "reads (user model, progress)"), ("POST", "spawn and token requests"),
                         ("DELETE", "stop requests")):
        v = rec.api.get(method, [])
        base = baseline["rec"].api.get(method) if baseline else None
        print(f"   hub REST API {method:<6} {len(v):>4} calls, p50 {pct(v, .5) * 1000:5.0f} ms, p95 {pct(v, .95) * 1000:5.0f} ms"
              + (f" (1 user: p95 {pct(base, .95) * 1000:.0f} ms)" if base else "") + f"  {what}")
    print("   target: GET p95 < 500 ms (a POST that starts a server answers when it is ready, up to 10 s)")
    for role in ("hub", "proxy", "access layer"):
        print(f"   {role:<13} CPU {result['cpu'].get(role, 0):6.1f} s   peak RSS {result['peak_rss'].get(role, 0) / 2**20:7.0f} MiB")
    rest = result["machine_busy"] - result["own_cpu"] - sum(result["cpu"].get(r, 0) for r in ("hub", "proxy", "access layer"))
    print(f"   this script   CPU {result['own_cpu']:6.1f} s   (its simulated users and its sampler)")
    print(f"   the rest      CPU {rest:6.1f} s   (the sessions, their sandboxes' setup, anything else running; "
          f"at most {rest / max(1, rec.done):.2f} s per completed user)")
    print(f"   machine: {100 * result['machine_busy_share']:.0f} % of its {os.cpu_count()} CPUs busy over the round "
          "(near 100 %: CPU-bound; below: the round waited)")
    print(f"   sessions: peak memory {result['sessions_mem'] / 2**20:.0f} MiB together"
          + (f", {result['sessions_mem'] / max(1, result['sessions']) / 2**20:.0f} MiB each" if result["sessions"] else ""))
    for cause, count in rec.failures.most_common():
        print(f"   failed x{count}: {cause}")


def make_users(hub: Hub, project: str, count: int) -> list[tuple[str, str]]:
    """Accounts load000... in ``project`` (with the CLI an admin uses; four at a time)."""
    def make(i: int) -> tuple[str, str]:
        name, password = f"load{i:03d}", secrets.token_urlsafe(16)
        hub.vre("user", "add", name, "--password-stdin", input=password + "\n")
        hub.vre("project", "add-member", project, name)
        return name, password
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(make, range(count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="25,50,100", help="comma-separated N per round (default 25,50,100)")
    ap.add_argument("--ramp", type=float, default=10.0, help="spread the users' starts over this many seconds")
    ap.add_argument("--deadline", type=float, default=300.0, help="each round stops after this many seconds")
    ap.add_argument("--project", default="lung-screening", choices=sorted(SLUGS))
    ap.add_argument("--logs", type=Path, help="keep the hub's log in this directory")
    ap.add_argument("--setting", action="append", default=[], metavar="VRE_X=V",
                    help="an extra VRE_* setting for the hub, e.g. VRE_SESSION_LIMIT=40 (repeatable)")
    args = ap.parse_args()
    rounds = [int(n) for n in args.users.split(",") if n.strip()]
    if os.geteuid() != 0:
        sys.exit("bench/load.py needs root (the hub manages sandboxes)")
    hub = Hub("bench-load", None)
    for setting in args.setting:
        key, _, value = setting.partition("=")
        hub.env[key] = value
    try:
        hub.start()
        print(f"hub at {hub.url}; creating {max(rounds)} users in {args.project} ...", flush=True)
        users = make_users(hub, args.project, max(rounds))
        print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
              flush=True)
        baseline = run_round(hub, users[:1], args.project, 0, args.deadline)
        report(baseline, None)
        for n in rounds:
            report(run_round(hub, users[:n], args.project, args.ramp, args.deadline), baseline)
    finally:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", str(hub.log_path), str(args.logs / "hub-load.log")], check=False)
        hub.teardown()


if __name__ == "__main__":
    main()
