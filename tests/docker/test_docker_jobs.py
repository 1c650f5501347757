"""The batch queue on the docker backend (issue 13): a pool's Dask scheduler and workers are
containers on the pool's internal network, rendered from the plan like sessions, never bubblewrap
sandboxes on the host.

On the session-scoped docker hub. Everything a job or kernel connects to is a container of this
test's own hub on this machine. The module removes its pools' containers and networks at the end,
so the other docker modules find the project networks as sessions alone leave them.
"""

from __future__ import annotations

import errno
import json
import textwrap
import time
from pathlib import Path

import docker
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.docker,
              pytest.mark.parametrize("hub", ["docker"], indirect=True)]

PROJECT = "lung-screening"
SLUG = "lung-ct-screening"
PROJECT_UID = PROJECT_GID = 300000 + 1   # a project's workers run as its service identity

PROBE = f"""\
import glob, json, os, sys
files = sorted(glob.glob('/data/{SLUG}/**/*.dcm', recursive=True))
r = {{'files': len(files), 'dicm': open(files[0], 'rb').read(132)[128:].decode(),
     'uid': os.getuid(), 'gid': os.getgid(), 'argv0': sys.argv[0]}}
try:
    open('/usr/vre-probe', 'w').close(); r['root_write'] = 'ok'
except OSError as e:
    r['root_write'] = e.errno
r['data_mount'] = [l.split()[3].split(',')[0] for l in open('/proc/self/mounts') if l.split()[1] == '/data/{SLUG}']
r['caps'] = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff'))
r['default_route'] = any(l.split()[1] == '00000000' for l in open('/proc/net/route').read().splitlines()[1:])
out = os.environ['VRE_JOB_OUTPUT']
json.dump(r, open(os.path.join(out, 'probe.json'), 'w'))
print('PROBED', r['files'])
"""


@pytest.fixture(scope="module")
def alice(hub):
    client = hub.client("alice")
    yield client
    _remove_pools(hub)


def _pool_containers(hub, pool: str) -> list[dict]:
    return hub.docker.containers(all=True, filters={"label": [f"vre.instance={hub.instance}", f"vre.pool={pool}"]})


def _remove_pools(hub) -> None:
    """Stop the module's pools as the engine would (containers, then their networks)."""
    from vre.backends.docker import release_island
    from vre.settings import Settings

    settings = Settings(instance=hub.instance, run_dir=Path(hub.env["VRE_RUN_DIR"]))
    for pool in (PROJECT, f"{PROJECT}.held"):
        deadline = time.monotonic() + 60
        while left := _pool_containers(hub, pool):
            for c in left:
                try:
                    hub.docker.remove_container(c["Id"], force=True, v=True)
                except docker.errors.APIError:  # the engine removes it at the same time (an idle worker)
                    pass
            assert time.monotonic() < deadline, f"containers of pool {pool} stay: {left}"
            time.sleep(0.5)
        release_island(hub.docker, settings, f"{hub.instance}-{pool}")   # kept while a session runs


def submit(alice, **body) -> int:
    r = alice.vre_api("POST", "/jobs", json={"project": PROJECT, **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait(alice, job_id: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (j := alice.vre_api("GET", f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, j
        time.sleep(0.3)
    return j


def log(alice, job_id: int) -> str:
    return alice.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]


def audit(hub, action: str) -> list[dict]:
    return json.loads(hub.vre("audit", "query", "--action", action, "--json", "--limit", "500").stdout)


def test_a_job_runs_in_a_worker_container_of_the_project_network(hub, alice):
    workspace = hub.state / "projects" / PROJECT / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "probe.py").write_text(PROBE)
    job_id = submit(alice, kind="script", target="project/probe.py")
    j = wait(alice, job_id)
    assert j["state"] == "succeeded", (j, log(alice, job_id))
    result = workspace / "jobs" / str(job_id) / "probe.json"
    r = json.loads(result.read_text())
    assert r["files"] > 0 and r["dicm"] == "DICM"
    assert (r["uid"], r["gid"]) == (PROJECT_UID, PROJECT_GID)
    assert (result.stat().st_uid, result.stat().st_gid) == (PROJECT_UID, PROJECT_GID)
    assert r["data_mount"] == ["ro"] and r["root_write"] == errno.EROFS
    assert r["caps"] == "0000000000000000" and r["default_route"] is False

    # the engine ran it in containers: a scheduler and a worker, both on the project's network only
    network = f"{hub.instance}-{PROJECT}"
    running = {c["Labels"]["vre.session"]: hub.docker.inspect_container(c["Id"])
               for c in _pool_containers(hub, PROJECT)}
    assert f"{PROJECT}-scheduler" in running and f"{PROJECT}-worker-1" in running, sorted(running)
    for name, c in running.items():
        assert list(c["NetworkSettings"]["Networks"]) == [network], name
        assert c["HostConfig"]["ReadonlyRootfs"] is True, name
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{c['State']['Pid']}/status").read_text().splitlines()
                      if ":\t" in line)
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, (name, status["CapBnd"])
        assert c["Config"]["User"] == f"{PROJECT_UID}:{PROJECT_GID}", name
    worker = running[f"{PROJECT}-worker-1"]
    data = next(m for m in worker["Mounts"] if m["Destination"] == f"/data/{SLUG}")
    assert data["RW"] is False
    assert not any(m["Destination"].startswith("/data") for m in running[f"{PROJECT}-scheduler"]["Mounts"])
    # ... and no sandbox on the host: the sandbox executor's cgroup for the worker does not exist
    assert not Path(f"/sys/fs/cgroup/pids/{hub.instance}/{PROJECT}-worker-1").exists()

    # the worker's dataset reads were recorded from the host (the launch gate held it until marked)
    deadline = time.monotonic() + 30
    while not (reads := [e for e in audit(hub, "dataset.read") if e["details"].get("job") == job_id]):
        assert time.monotonic() < deadline, "no dataset.read record names the job"
        time.sleep(0.5)
    assert all(e["actor"] == "alice" and e["dataset"] == SLUG and e["details"]["role"] == "worker" for e in reads)


def test_a_sessions_dask_client_reaches_its_projects_scheduler_container(hub, alice):
    def workers() -> set[str]:
        return {c["Labels"]["vre.session"] for c in _pool_containers(hub, PROJECT)
                if "-worker-" in c["Labels"]["vre.session"]}

    before = workers()
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        out = k.check(textwrap.dedent("""\
            import json, os
            from vre_session import jobs
            client = jobs.dask_client(workers=1, cpu=0.5, mem_mb=512, max_runtime=300)
            seen = client.submit(lambda: sorted(os.listdir('/data'))).result()
            print(json.dumps({'address': client.scheduler.address, 'data': seen, 'job': client.vre_job.id}))
            client.close()
            """), timeout=180)
        r = json.loads(out.strip().splitlines()[-1])
        assert r["data"] == [SLUG]
        scheduler = hub.docker.inspect_container(f"{hub.instance}.{PROJECT}-scheduler")
        address = scheduler["NetworkSettings"]["Networks"][f"{hub.instance}-{PROJECT}"]["IPAddress"]
        assert r["address"] == f"tcp://{address}:8786"
        assert workers() - before, "the cluster job's worker is not a container of the pool"
        # the dashboard, in the scheduler's container, at the session's usual place
        page = requests.get(f"{alice.server_url(PROJECT)}/proxy/8787/status",
                            headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert page.status_code == 200 and "Dask" in page.text, page.status_code
        alice.vre_api("POST", f"/jobs/{r['job']}/cancel")
        assert wait(alice, r["job"])["state"] == "cancelled"
        deadline = time.monotonic() + 30  # its worker containers go with it
        while workers() - before:
            assert time.monotonic() < deadline, workers()
            time.sleep(0.5)
    finally:
        k.close()
        alice.stop(PROJECT)


HELD = """\
import os
open(os.path.join(os.environ['VRE_JOB_OUTPUT'], 'done.txt'), 'w').write('held')
print('HELD DONE')
"""

REACH = """\
import json, socket
r = {}
for name, address in ADDRESSES.items():
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((address, 8786)); r[name] = 'connected'
    except OSError as e:
        r[name] = type(e).__name__
    finally:
        s.close()
print(json.dumps(r))
"""


def test_held_jobs_have_a_network_no_session_reaches(hub, alice):
    workspace = hub.state / "projects" / PROJECT / "workspace"
    (workspace / "held.py").write_text(HELD)
    job_id = submit(alice, kind="script", target="project/held.py", lane="held")
    j = wait(alice, job_id)
    assert j["state"] == "succeeded" and j["lane"] == "held", j
    held_net, open_net = f"{hub.instance}-{PROJECT}.held", f"{hub.instance}-{PROJECT}"
    held = {c["Labels"]["vre.session"]: hub.docker.inspect_container(c["Id"])
            for c in _pool_containers(hub, f"{PROJECT}.held")}
    scheduler = held[f"{PROJECT}.held-scheduler"]
    assert list(scheduler["NetworkSettings"]["Networks"]) == [held_net]
    assert all(list(c["NetworkSettings"]["Networks"]) == [held_net] for c in held.values())
    done = hub.state / "projects" / PROJECT / "held" / "jobs" / str(job_id) / "done.txt"
    assert done.read_text() == "held"

    # from a session: the open scheduler answers, the held one (another network) does not
    addresses = {"held": scheduler["NetworkSettings"]["Networks"][held_net]["IPAddress"],
                 "open": hub.docker.inspect_container(f"{hub.instance}.{PROJECT}-scheduler")
                 ["NetworkSettings"]["Networks"][open_net]["IPAddress"]}
    alice.start(PROJECT)
    k = alice.kernel(PROJECT)
    try:
        r = json.loads(k.check(f"ADDRESSES = {addresses!r}\n" + REACH, timeout=60).strip().splitlines()[-1])
    finally:
        k.close()
        alice.stop(PROJECT)
    assert r["open"] == "connected", r
    assert r["held"] != "connected", r


def test_a_job_over_its_memory_says_so(hub, alice):
    """The kernel's OOM kill inside the worker container is read from the container's memory
    cgroup: the job fails with the reason, and the next job of the pool still runs."""
    workspace = hub.state / "projects" / PROJECT / "workspace"
    (workspace / "hog.py").write_text("b = bytearray(3 * 1024**3)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')\n")
    j = wait(alice, submit(alice, kind="script", target="project/hog.py", mem_mb=256))
    assert j["state"] == "failed" and "out of memory" in j["reason"], (j, log(alice, j["id"]))
    assert "survived" not in log(alice, j["id"])


def test_a_flushed_host_rule_of_a_held_island_is_put_back(hub, alice):
    """No session runs on a held pool's island, so the job engine, not the hub's poll, restores
    the rule that closes the host's side of its bridge."""
    import subprocess

    from vre.backends.docker import bridge_name

    held = _pool_containers(hub, f"{PROJECT}.held")
    assert held, "the held pool of the earlier test is gone"
    rule = ["INPUT", "-i", bridge_name(f"{hub.instance}-{PROJECT}.held"), "-j", "REJECT"]
    assert subprocess.run(["iptables", "-w", "-C", *rule]).returncode == 0
    subprocess.run(["iptables", "-w", "-D", *rule], check=True)
    deadline = time.monotonic() + 30  # the engine looks every 10 s
    while subprocess.run(["iptables", "-w", "-C", *rule], capture_output=True).returncode:
        assert time.monotonic() < deadline, "the held island's host-side rule was not put back"
        time.sleep(0.5)


def test_what_a_job_leaves_running_ends_with_it_in_the_worker_container(hub, alice):
    """The worker container serves the pool's next job, perhaps another member's: a daemon the
    job left in a session of its own ends with the job (the worker is its subreaper)."""
    workspace = hub.state / "projects" / PROJECT / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "leaves.py").write_text(
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', '615'])\n    os._exit(0)\nos.wait()\n")
    job_id = submit(alice, kind="script", target="project/leaves.py")
    j = wait(alice, job_id)
    text = log(alice, job_id)
    assert j["state"] == "succeeded" and "the job left 1 process(es) running, ended:" in text, (j, text)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == b"sleep\x00615\x00"]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:   # gone meanwhile
        return b""


def test_a_worker_container_the_engine_does_not_know_is_removed(hub, alice):
    """A worker container that none of the engine's starts knows (as one a container engine made
    after the engine's call had timed out would be) holds its name and resources until something
    stops it: the engine's looks remove it. A container without the batch label stays."""
    image = hub.env["VRE_NOTEBOOK_IMAGE"]
    made = {}
    for name, labels in ((f"{hub.instance}.{PROJECT}-worker-99", {"vre.instance": hub.instance, "vre.pool": PROJECT}),
                         (f"{hub.instance}.{PROJECT}-worker-98", {"vre.instance": hub.instance})):
        c = hub.docker.create_container(image, command=["sleep", "600"], name=name, labels=labels,
                                        host_config=hub.docker.create_host_config(network_mode="none"))
        hub.docker.start(c["Id"])
        made[name] = c["Id"]
    try:
        deadline = time.monotonic() + 45   # the engine lists its containers every 10 s
        while any(c["Id"] == made[f"{hub.instance}.{PROJECT}-worker-99"] for c in hub.docker.containers(all=True)):
            assert time.monotonic() < deadline, "the stray worker container is still there"
            time.sleep(0.5)
        assert hub.docker.inspect_container(made[f"{hub.instance}.{PROJECT}-worker-98"])["State"]["Running"]
    finally:
        for cid in made.values():
            try:
                hub.docker.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass
