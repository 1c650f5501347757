"""Batch queue: submit-to-start latency, throughput of many tiny jobs, and the service's overhead
against the same work submitted straight to a Dask client, in one run.

    sudo .venv/bin/python bench/jobs.py [--jobs 1000] [--latency 10] [--workers 2] [--submit one,list]
                                        [--backends sandbox,docker]

Starts a real hub (``vre up``, small demo, SQLite, its own temp dir and ports) with its vre-jobs
engine for each session backend and way of submitting asked for (``sandbox``: workers are
bubblewrap sandboxes; ``docker``: containers on Podman, with the notebook image built by ``vre
images build``), and sets alice's project quota to ``--workers`` jobs at once (1 CPU, 512 MiB
each: the cgroup CPU limit of a job is then a whole core, as a bare Dask worker process has).

1. **Latency on an idle queue:** ``--latency`` script jobs one after the other, each submitted once
   the previous one ended; submit-to-start is the job's ``started_at`` (its task reached its
   worker) minus the moment before the POST. The first (cold: scheduler and worker start) is
   reported apart from the warm rest.
2. **Throughput:** ``--jobs`` tiny function jobs (``lambda: 1``) submitted as fast as the API takes
   them, a request each (``--submit one``) or as lists (``list``, as ``jobs.map_function`` does);
   jobs per second from the first POST to the last job's end, the machine's CPU and each
   process's share of it.
3. **Bare Dask** (before and after the service; the baseline is their mean, as the load of a
   shared machine moves): the same work straight to a ``distributed.LocalCluster`` with ``--workers``
   single-thread workers: each task runs the very same job runner subprocess (python -m
   vre_session.jobs.runner on a function job), as our worker does; and, for reference, the
   function itself as a plain Dask task (no subprocess).

The ratio service/bare is what the queue adds: the database, admission, the engine's polling,
the sandbox and the API. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import cloudpickle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub  # noqa: E402
from machine import cpu_by_role, machine_cpu, own_cpu, spent  # noqa: E402
from vre.jobs.api import MAX_SUBMIT  # noqa: E402

PROJECT = "lung-screening"
SUBMIT_AS = {"one": "a request each", "list": f"lists of up to {MAX_SUBMIT}"}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def wait_all(client, ids: list[int], timeout: float) -> dict[int, dict]:
    """Wait until none of the project's jobs is queued or running (asking for one of each, so the
    waiting itself costs the hub little), then read them all once."""
    deadline = time.monotonic() + timeout
    base = f"/jobs?project={PROJECT}"
    while time.monotonic() < deadline:
        if not any(client.vre_api("GET", f"{base}&state={s}&limit=1").json()["jobs"] for s in ("queued", "running")):
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"jobs still queued or running after {timeout} s")
    done = {j["id"]: j for j in client.vre_api("GET", f"{base}&limit=5000").json()["jobs"] if j["id"] in set(ids)}
    if len(done) != len(ids):
        raise SystemExit(f"{len(ids) - len(done)} job(s) missing from the listing")
    return done


def submit(client, body: dict) -> int:
    r = client.vre_api("POST", "/jobs", json={"project": PROJECT, "profile": "small", "cpu": 1, "mem_mb": 512,
                                              **body})
    if r.status_code != 201:
        raise SystemExit(f"submit refused: {r.status_code} {r.text}")
    return r.json()["id"]


def submit_list(client, bodies: list[dict]) -> list[dict]:
    r = client.vre_api("POST", "/jobs", json=bodies)
    if r.status_code != 201:
        raise SystemExit(f"submit refused: {r.status_code} {r.text}")
    return r.json()["jobs"]


def bench_service(args, backend: str, submit_as: str) -> dict:
    hub = Hub(f"bench-jobs-{backend}", None, backend)
    hub.env["VRE_JOBS_WORKER_IDLE"] = "600"
    timings_file = Path(tempfile.mkdtemp(prefix="vre-bench-jobs-")) / "timings.json"
    hub.env["VRE_JOBS_TIMINGS"] = str(timings_file)
    try:
        hub.start()
        hub.vre("project", "set-quota", PROJECT, "--jobs", str(args.workers), "--cpu", str(args.workers),
                "--memory", f"{args.workers * 1024}M")
        ws = hub.state / "projects" / PROJECT / "workspace"
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "noop.py").write_text("pass\n")
        alice = hub.client("alice")
        latencies = []
        for _ in range(args.latency):
            t0 = time.time()
            jid = submit(alice, {"kind": "script", "target": "project/noop.py"})
            j = wait_all(alice, [jid], 120)[jid]
            latencies.append(ts(j["started_at"]) - t0)
        payload = base64.b64encode(cloudpickle.dumps((lambda: 1, (), {}))).decode()
        before = read_timings(timings_file)
        needle = str(hub.base_dir).encode()
        roles_before, machine_before, own_before = cpu_by_role(needle, hub.instance), machine_cpu(), own_cpu()
        t0 = time.time()
        job = {"project": PROJECT, "profile": "small", "cpu": 1, "mem_mb": 512, "kind": "function", "payload": payload}
        if submit_as == "one":
            ids = [submit(alice, job) for _ in range(args.jobs)]
        else:
            ids = [j["id"] for start in range(0, args.jobs, MAX_SUBMIT)
                   for j in submit_list(alice, [job] * min(MAX_SUBMIT, args.jobs - start))]
        submitted = time.time() - t0
        done = wait_all(alice, ids, args.jobs * 5 + 120)
        roles = spent(roles_before, cpu_by_role(needle, hub.instance))
        roles["this script (the API client)"] = own_cpu() - own_before
        busy, every = (b - a for a, b in zip(machine_before, machine_cpu()))
        end = max(ts(j["finished_at"]) for j in done.values())
        failed = sum(1 for j in done.values() if j["state"] != "succeeded")
        time.sleep(1.5)  # the engine writes its timings after the tick that saw the last job end
        after = read_timings(timings_file)
        phases = {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1]) for k, v in after.items()}
        task_s = [j["usage"].get("wall_s", 0) for j in done.values()]
        return {"cold": latencies[0], "warm": latencies[1:], "throughput_s": end - t0, "submit_s": submitted,
                "failed": failed, "phases": phases, "task_s": statistics.fmean(task_s),
                "busy": (busy, every), "roles": roles}
    finally:
        hub.teardown()
        shutil.rmtree(timings_file.parent, ignore_errors=True)


def read_timings(path: Path) -> dict:
    """The engine's phase timings (``VRE_JOBS_TIMINGS``): name -> [count, seconds]."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_runner_subprocess(spec_dir: str) -> float:
    """What our worker's task does for a function job: the runner in a subprocess."""
    out = tempfile.mkdtemp(dir=spec_dir)
    with open(os.path.join(out, "function.pkl"), "wb") as f:
        cloudpickle.dump((lambda: 1, (), {}), f)
    spec = {"id": 0, "kind": "function", "target": "f", "project": "bench", "user": "bench", "params": {}}
    Path(out, ".job.json").write_text(json.dumps(spec))
    t = time.time()
    code = subprocess.run([sys.executable, "-m", "vre_session.jobs.runner", os.path.join(out, ".job.json")],
                          cwd=out, stdout=subprocess.DEVNULL).returncode
    return -1.0 if code else time.time() - t


def bench_bare(args) -> dict:
    spec_dir = tempfile.mkdtemp(prefix="vre-bench-")
    try:
        return _bench_bare(args, spec_dir)
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def _bench_bare(args, spec_dir: str) -> dict:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as client:
        client.submit(run_runner_subprocess, spec_dir, pure=False).result()  # warm
        machine_before = machine_cpu()
        t0 = time.time()
        futures = [client.submit(run_runner_subprocess, spec_dir, pure=False) for _ in range(args.jobs)]
        walls = client.gather(futures)
        subprocess_s = time.time() - t0
        busy, every = (b - a for a, b in zip(machine_before, machine_cpu()))
        t0 = time.time()
        client.gather([client.submit(lambda: 1, pure=False) for _ in range(args.jobs)])
        inprocess_s = time.time() - t0
    return {"subprocess_s": subprocess_s, "inprocess_s": inprocess_s, "failed": sum(1 for w in walls if w < 0),
            "task_s": statistics.fmean(w for w in walls if w >= 0), "busy": (busy, every)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--latency", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--submit", default="one,list",
                   help="how the service gets the jobs, comma-separated: one (a request each), list (lists of "
                        f"up to {MAX_SUBMIT}); each is a run of its own")
    p.add_argument("--backends", default="sandbox",
                   help="comma-separated session backends to run the service on: sandbox, docker")
    args = p.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sandbox", "docker"}:
        raise SystemExit("--backends takes sandbox, docker or both (comma-separated)")
    modes = [m.strip() for m in args.submit.split(",") if m.strip()]
    if not modes or set(modes) - set(SUBMIT_AS):
        raise SystemExit("--submit takes one, list or both (comma-separated)")
    # bare, service, bare: on a shared machine the load moves; the baseline is the mean of the two
    # bare runs around the service run
    before = bench_bare(args)
    services = {(b, how): bench_service(args, b, how) for b in backends for how in modes}
    after = bench_bare(args)
    bare = {k: (before[k] + after[k]) / 2 for k in ("subprocess_s", "inprocess_s", "task_s")}
    bare["busy"] = tuple((a + b) / 2 for a, b in zip(before["busy"], after["busy"]))
    bare["failed"] = before["failed"] + after["failed"]
    for (backend, how), service in services.items():
        report(args, backend, how, service, bare, before, after)


def report(args, backend: str, how: str, service: dict, bare: dict, before: dict, after: dict) -> None:
    n = args.jobs
    warm = service["warm"]
    print(f"\nBatch queue on the {backend} backend, {n} tiny jobs, {args.workers} workers ({os.cpu_count()} cores)\n")
    print(f"{'measure':<52} {'value':>12}")
    print(f"{'submit-to-start, cold (scheduler + worker start)':<52} {service['cold'] * 1000:>10.0f} ms")
    if warm:
        print(f"{'submit-to-start, idle queue, warm worker: p50':<52} {statistics.median(warm) * 1000:>10.0f} ms")
        print(f"{'submit-to-start, idle queue, warm worker: max':<52} {max(warm) * 1000:>10.0f} ms")
    print(f"{'service: submit ' + str(n) + ' jobs (API, ' + SUBMIT_AS[how] + ')':<52} {service['submit_s']:>10.2f} s")
    print(f"{'service: ' + str(n) + ' jobs end to end':<52} {service['throughput_s']:>10.2f} s"
          f"  ({n / service['throughput_s']:.1f} jobs/s, {service['failed']} failed)")
    print(f"{'bare Dask: same runner subprocess per task':<52} {bare['subprocess_s']:>10.2f} s"
          f"  ({n / bare['subprocess_s']:.1f} jobs/s, {bare['failed']} failed; mean of "
          f"{before['subprocess_s']:.2f} s before and {after['subprocess_s']:.2f} s after the service)")
    print(f"{'bare Dask: the function as a plain task':<52} {bare['inprocess_s']:>10.2f} s")
    print(f"\nservice / bare Dask (same work per job): {service['throughput_s'] / bare['subprocess_s']:.2f}x")
    w = args.workers
    print(f"\nWhere a job's time goes (per job, ms; a worker slot is wall time x workers / jobs)")
    print(f"{'worker slot per job, service / bare':<52} {service['throughput_s'] * w / n * 1000:>8.0f} / "
          f"{bare['subprocess_s'] * w / n * 1000:.0f}")
    print(f"{'the task on its worker (runner subprocess), service / bare':<52} {service['task_s'] * 1000:>8.0f} / "
          f"{bare['task_s'] * 1000:.0f}")
    print(f"{'what a worker waits between jobs, service / bare':<52} "
          f"{(service['throughput_s'] * w / n - service['task_s']) * 1000:>8.0f} / "
          f"{(bare['subprocess_s'] * w / n - bare['task_s']) * 1000:.0f}")
    print(f"\nThe machine's CPU during the {n} jobs: busy {service['busy'][0] / service['busy'][1]:.0%} (bare Dask "
          f"{bare['busy'][0] / bare['busy'][1]:.0%}); {service['busy'][0] / n * 1000:.0f} CPU-ms per job "
          f"(bare Dask {bare['busy'][0] / n * 1000:.0f}). By process (CPU-ms per job, children waited for "
          "included, e.g. a worker's runners):")
    for name, secs in sorted(service["roles"].items(), key=lambda kv: -kv[1]):
        if secs >= 0.0005 * n:
            print(f"  {name:<50} {secs / n * 1000:>8.1f}")
    print(f"\nThe engine's wall time by phase during the {n} jobs (VRE_JOBS_TIMINGS; phases nest: 'total' "
          "rows include the rows below them)")
    print(f"{'phase':<52} {'count':>7} {'total s':>9} {'ms/job':>8}")
    for name, (count, secs) in sorted(service["phases"].items(), key=lambda kv: -kv[1][1]):
        if count:
            print(f"{name:<52} {count:>7} {secs:>9.2f} {secs / n * 1000:>8.2f}")


if __name__ == "__main__":
    main()
