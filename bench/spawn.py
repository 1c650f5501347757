"""Spawn-to-ready latency: the sandbox and docker backends against JupyterHub's LocalProcessSpawner.

    sudo .venv/bin/python bench/spawn.py [--n 20] [--profile small] [--project lung-screening]
                                         [--backends sandbox,docker,local[,kubernetes[,kubernetes-unobserved]]]

Starts real hubs side by side with ``vre up`` (the same JupyterHub, configurable-http-proxy,
jupyterhub-singleuser and default url ``/lab``, each on its own free 127.0.0.1 ports, with the small
demo in a temp dir):

- ``sandbox``: the VRE as shipped (bubblewrap sandbox in the project's network namespace, a cgroup
  per session, server on a unix socket);
- ``docker``: the VRE with ``backend = "docker"``: a container of the notebook image
  (``VRE_NOTEBOOK_IMAGE``, default localhost/vre-notebook:latest) on the project's internal network,
  through the engine at ``VRE_DOCKER_URL`` (default: Podman's socket, ``scripts/podman-setup``);
- ``kubernetes`` (only when asked for): the Helm chart on this machine's test cluster
  (``scripts/k8s-cluster up``, taken like the Kubernetes tests take it, and ``down`` at the end):
  hub and sessions in pods, this checkout's images imported, single node (``tests/k8s/chart.py``),
  each session with datasets behind the gate of the per-node observer of dataset reads;
- ``kubernetes-unobserved`` (only when asked for): the same chart without the observer (reads
  accepted unobserved): the baseline of what the observer's gate costs a spawn;
- ``local``: the same hub with JupyterHub's ``LocalProcessSpawner`` (a subclass that names the
  sandbox's default access policy, which the access layer requires) loaded last
  (a JupyterHub config of its own that loads the VRE's first, named by VRE_HUB_CONFIG): the server runs
  unisolated as a throwaway system user of the same name.

One throwaway account (VRE account on both hubs + system user for ``local``) starts a named server
for the project through the REST API. Latency is measured from just before the POST
``/hub/api/users/<u>/servers/<project>`` until the hub reports the server ready (the POST answers
201 once ready; a 202 is followed by polling the user model for ``ready``), i.e. what a user waits
for. Every spawn is then checked through the proxy (``/api/status``) and stopped; none of that is
timed. One warm-up spawn per backend is not counted; the counted spawns go through the backends in
turn, in forward and then reverse order (ABBA) so that machine noise hits all alike. Prints a
table; asserts nothing on timings. Everything is removed at the end, also on failure: the hubs,
then ``vre down`` for each (its own VRE_INSTANCE: sessions, proxy, islands; the docker hub's
containers and networks), the system user and the temp dirs.

For ``local``, JupyterHub learns that the server is up by polling its port with randomised
exponential backoff; the sandbox spawner watches its socket every 50 ms. The script reads that
polling delay from the local hub's log and also prints the ratio without it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "hub"))

from conftest import DOCKER_URL, Hub, short_tmp  # noqa: E402
from hubclient import HubClient, HubError  # noqa: E402
from vre.backends.cgroups import SessionCgroup  # noqa: E402

TARGET = 1.2          # sandbox p50 within this ratio of LocalProcessSpawner
DOCKER_TARGET_S = 5.0  # docker p50 under this many seconds
BACKENDS = ("sandbox", "docker", "local", "kubernetes", "kubernetes-unobserved")
DEFAULT_BACKENDS = ("sandbox", "docker", "local")   # kubernetes*: asked for (they take the machine's test cluster)

# The local hub's JupyterHub config (VRE_HUB_CONFIG): the VRE's own, then only the spawner changes. Sessions keep the
# same hub API (the hub's unix socket, at its host path instead of the sandbox's bind mount), the
# same jupyterhub-singleuser from the same environment, the same server flags that make sense
# outside a sandbox, and the same environment variables.
LOCAL_CONFIG = '''
load_subconfig(HUB_CONFIG)
import importlib.util
import os
from vre.hostfiles import unix_url
from vre.settings import load

_s = load()
_has_vre_session = importlib.util.find_spec("vre_session") is not None
from jupyterhub.spawner import LocalProcessSpawner


class PolicyLocalProcessSpawner(LocalProcessSpawner):
    """The access layer routes only sessions that name their policy: this one's is the
    sandbox's defaults (no downloads, no cell audit, no egress cap)."""

    def access_policy(self):
        session = f"{self.user.name}-{self.name}"
        return {"session": session, "audit_session": session, "user": self.user.name, "project": self.name,
                "downloads": "none", "audit_cells": False, "egress_cap": 0}


c.JupyterHub.spawner_class = PolicyLocalProcessSpawner
c.Spawner.hub_connect_url = unix_url(_s.hub_socket_dir / "hub.sock")
# Sandboxed sessions reach the socket through the sessions group; a plain system user cannot, so
# open the directory of this throwaway hub (the API itself still requires the server's token).
os.chmod(_s.hub_socket_dir, 0o755)
c.LocalProcessSpawner.ip = "127.0.0.1"
c.LocalProcessSpawner.cmd = [str(_s.session_env / "bin" / "jupyterhub-singleuser")]
c.LocalProcessSpawner.args = ["--KernelManager.transport=ipc"]
if _has_vre_session:  # the sandbox loads the VRE's session extension: so does this server
    c.LocalProcessSpawner.args.append('--ServerApp.jpserver_extensions={"vre_session": True}')
c.LocalProcessSpawner.environment = {
    "PATH": f"{_s.session_env}/bin:/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
}
'''


class BenchHub(Hub):
    """conftest's Hub (``vre up`` in a fresh temp dir), with default polling and a quiet teardown."""

    def __init__(self, backend: str, extra_config: str = ""):
        super().__init__(backend, None, "docker" if backend == "docker" else "sandbox")
        for name in ("VRE_POLL_INTERVAL", "VRE_LOCKOUT_THRESHOLD", "VRE_LOCKOUT_SECONDS"):
            self.env.pop(name, None)  # the shipped defaults, not the tests' faster polling
        self.env.pop("VRE_HUB_CONFIG", None)
        text = (LOCAL_CONFIG if backend == "local" else "") + extra_config
        if text:
            if "load_subconfig(HUB_CONFIG)" not in text:
                text = "load_subconfig(HUB_CONFIG)\n" + text
            config = self.base_dir / "bench_hub_config.py"
            config.write_text(f"HUB_CONFIG = {str(ROOT / 'hub' / 'jupyterhub_config.py')!r}\n" + text)
            self.env["VRE_HUB_CONFIG"] = str(config)

    def teardown(self, logs: Path | None = None) -> None:
        """Stop the hub, then ``vre down``: this hub's sessions, proxy and islands (its own VRE_INSTANCE)."""
        try:
            self.kill()
        except Exception as e:  # noqa: BLE001 - go on cleaning up
            print(f"warning: stopping the {self.backend} hub: {e}", file=sys.stderr)
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
        r = self.vre("down", check=False)
        if r.returncode:
            print(f"warning: vre down ({self.backend}): {r.stderr.strip()}", file=sys.stderr)
        if self.session_backend == "docker":
            from vre.backends.docker import remove_instance_containers
            from vre.settings import Settings

            try:
                remove_instance_containers(Settings(instance=self.instance, docker_url=self.env.get(
                    "VRE_DOCKER_URL", DOCKER_URL)), self.docker)
            except Exception as e:  # noqa: BLE001 - go on cleaning up
                print(f"warning: removing the docker hub's containers: {e}", file=sys.stderr)
        # vre down removes the session cgroups, not their (now empty) per-instance parent
        for d in {p.parent for p in SessionCgroup("x", self.instance).dirs.values()}:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"warning: cgroup {d} left behind: {e}", file=sys.stderr)
        if logs is not None and self.log_path.exists():
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, logs / f"hub-{self.backend}.log")
        shutil.rmtree(self.base_dir, ignore_errors=True)


class ChartHub:
    """The Helm chart on this machine's test cluster (``scripts/k8s-cluster``, taken for the run as
    the Kubernetes tests take it): the hub and the sessions in pods, single node (hostPath state
    and datasets, ``tests/k8s/chart.py``'s release), this checkout's hub and notebook images
    imported. Started with ``up`` and stopped with ``down`` (by the last release to go) unless the
    cluster was already up. ``observed``: with the per-node observer of dataset reads (the chart's
    default: a session waits at its gate until the observer marked it); without it, the release
    accepts unobserved reads (the baseline ``kubernetes-unobserved``)."""

    users = 0   # releases on the cluster in this run

    def __init__(self, observed: bool = True):
        sys.path.insert(0, str(ROOT / "tests" / "k8s"))
        import testcluster
        from chart import HELM, Release, cluster_image

        self.backend = "kubernetes" if observed else "kubernetes-unobserved"
        self.cluster = testcluster
        self.helm_bin = HELM
        if not ChartHub.users:
            testcluster.up()
        ChartHub.users += 1
        self.kube = testcluster.Kube(testcluster.busybox())
        hub_image, notebook = cluster_image("hub"), cluster_image("notebook")
        self.ns = f"bench-{secrets.token_hex(3)}"
        self.kube("create", "namespace", self.ns)
        self.release = Release(self.kube, self.ns, hub_image)
        self.base_dir = self.release.state_dir
        self.args = [*self.release.args, "--set", f"sessions.image={notebook}",
                     "--set", f"hub.state.nodePath={self.release.state_dir}",
                     "--set-json", 'hub.jupyterhub={"KubernetesSpawner": {"image_pull_policy": "Never", '
                                   '"start_timeout": 180}}']
        # two releases' hubs and a session share the 2-core node: the hubs ask for little CPU
        self.args += ["--set", "hub.resources.requests.cpu=100m"]
        if not observed:
            self.args += ["--set", "observer.enabled=false", "--set", "sessions.allowUnobservedReads=true"]
        self.url = ""

    def start(self) -> None:
        self.release.helm("install", self.release.name, str(ROOT / "helm" / "vre"), *self.args)
        self.release.wait_hub_ready()
        self.url = self.release.url()

    def vre(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = self.kube.run("exec", "-i", "-n", self.ns, f"deploy/{self.release.name}-hub", "-c", "hub", "--",
                          "vre", *args, input=input, timeout=300)
        if check and r.returncode:
            raise AssertionError(f"vre {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def client(self, user: str, password: str) -> HubClient:
        c = HubClient(self.url, user)
        c.get_token(password)
        return c

    def log_tail(self, n: int = 60) -> str:
        return self.kube.run("logs", "-n", self.ns, f"deploy/{self.release.name}-hub", "-c", "hub",
                             f"--tail={n}").stdout

    def teardown(self, logs: Path | None = None) -> None:
        try:
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                (logs / f"hub-{self.backend}.log").write_text(self.log_tail(100_000))
            subprocess.run([str(self.helm_bin), "uninstall", self.release.name, "--namespace", self.ns],
                           capture_output=True, env=self.kube.env, timeout=180)
            self.release.cleanup()
        finally:
            ChartHub.users -= 1
            if not ChartHub.users:
                self.cluster.down()


# --- the throwaway user -----------------------------------------------------------------------
def create_system_user(name: str, home_root: Path) -> None:
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home_root / name), "--shell", "/bin/bash",
                    "--user-group", "--comment", "vre spawn benchmark (temporary)", name],
                   check=True, capture_output=True, text=True)


def kill_user_processes(uid: int) -> None:
    """SIGKILL the processes of the benchmark's own user (servers a killed hub left behind), by pid."""
    for _ in range(20):
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        pids.append(int(entry.name))
                except OSError:
                    pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_system_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    kill_user_processes(uid)
    r = subprocess.run(["userdel", "--remove", name], capture_output=True, text=True)
    if r.returncode not in (0, 12):  # 12: could not remove the home (already gone with the temp dir)
        print(f"warning: userdel {name}: {r.stderr.strip()}", file=sys.stderr)


# --- spawning ---------------------------------------------------------------------------------
def add_account(hub: BenchHub, name: str, password: str, project: str) -> HubClient:
    hub.vre("user", "add", name, "--password-stdin", input=password + "\n")
    hub.vre("project", "add-member", project, name)
    return hub.client(name, password)


def spawn(client: HubClient, project: str, profile: str | None, timeout: float = 180) -> float:
    """Seconds from the POST that starts the server until the hub reports it ready."""
    body = {"profile": profile} if profile else {}
    t0 = time.perf_counter()
    r = client.api("POST", f"/users/{client.username}/servers/{project}", json=body, timeout=timeout)
    if r.status_code == 201:  # the hub answers 201 only once the server is up and in the proxy
        elapsed = time.perf_counter() - t0
    elif r.status_code == 202:  # still pending after the hub's slow_spawn_timeout: poll for ready
        deadline = t0 + timeout
        while True:
            state = client.server_state(project)
            if state and state.get("ready"):
                elapsed = time.perf_counter() - t0
                break
            if state is None or time.perf_counter() > deadline:
                raise HubError(f"{project} {'stopped while starting' if state is None else 'never became ready'}")
            time.sleep(0.02)
    else:
        raise HubError(f"start {project}: {r.status_code} {r.text}")
    status = client.server_api(project, "GET", "/status")  # reachable through the proxy (not timed)
    if status.status_code != 200:
        raise HubError(f"{project} is ready but /api/status through the proxy gave {status.status_code}")
    return elapsed


def stop(client: HubClient, project: str) -> None:
    client.stop(project, timeout=120)
    time.sleep(0.5)  # let the stop's own work (cgroup, namespace, reaping) settle before the next spawn


# --- report ------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


_LOG_TIME = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


def poll_lags(log_path: Path) -> list[float]:
    """Per local spawn, in order: seconds from the server logging that it runs until the hub logs
    that it started (JupyterHub found it by polling its port with randomised exponential backoff).
    The sandbox spawner does not pay this: it watches its socket every 50 ms itself."""
    lags, running = [], None
    for line in log_path.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if not m:
            continue
        if "is running at:" in line:
            running = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        elif "seconds to start" in line and running is not None:
            started = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            lags.append((started - running).total_seconds())
            running = None
    return lags


def report(times: dict[str, list[float]], args, cpus: int, lags: list[float] | None = None) -> None:
    rows = []
    backends = [b for b in BACKENDS if times.get(b)]
    for backend in backends:
        t = times[backend]
        rows.append([backend, str(len(t)), f"{statistics.median(t):.2f}", f"{percentile(t, 0.95):.2f}",
                     f"{min(t):.2f}", f"{max(t):.2f}"])
    header = ["backend", "n", "p50 s", "p95 s", "min s", "max s"]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    print()
    print(f"spawn-to-ready latency (REST POST -> hub reports ready), project {args.project!r}, "
          f"profile {args.profile or '(project default)'}, {cpus} CPU(s)")
    if args.server_args or args.extra_config:
        print(f"server args: {args.server_args or '-'}; extra config: {args.extra_config or '-'}")
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    lp = times.get("local") or []
    print()
    for backend in [b for b in backends if b != "local"]:
        s = times[backend]
        if not lp:
            break
        p50_ratio = statistics.median(s) / statistics.median(lp)
        p95_ratio = percentile(s, 0.95) / percentile(lp, 0.95)
        print(f"absolute p50: {backend} {statistics.median(s):.2f} s, LocalProcessSpawner {statistics.median(lp):.2f} s "
              f"(difference {statistics.median(s) - statistics.median(lp):+.2f} s); "
              f"ratio {backend}/local: p50 {p50_ratio:.2f}x, p95 {p95_ratio:.2f}x")
    if "sandbox" in backends and lp:
        s = times["sandbox"]
        p50_ratio = statistics.median(s) / statistics.median(lp)
        p95_ratio = percentile(s, 0.95) / percentile(lp, 0.95)
        print(f"target: sandbox within {TARGET}x of LocalProcessSpawner "
              f"({'met' if p50_ratio <= TARGET else 'not met'} at p50, {'met' if p95_ratio <= TARGET else 'not met'} at p95)")
    if "docker" in backends:
        d50 = statistics.median(times["docker"])
        print(f"target: docker p50 under {DOCKER_TARGET_S:g} s ({'met' if d50 < DOCKER_TARGET_S else 'not met'}: "
              f"{d50:.2f} s)")
    if "kubernetes" in backends:
        k50 = statistics.median(times["kubernetes"])
        against = [f"{b} {k50 / statistics.median(times[b]):.2f}x"
                   for b in ("sandbox", "docker", "kubernetes-unobserved") if times.get(b)]
        print(f"kubernetes (a pod of the chart on the single-node test cluster): p50 {k50:.2f} s"
              + (f"; p50 ratio to {', '.join(against)}" if against else ""))
    if times.get("kubernetes") and times.get("kubernetes-unobserved"):
        gate = statistics.median(times["kubernetes"]) - statistics.median(times["kubernetes-unobserved"])
        print(f"the observer's gate (kubernetes - kubernetes-unobserved): p50 {gate:+.2f} s")
    if lags and lp and "sandbox" in backends and len(lags) == len(lp):
        s = times["sandbox"]
        prompt = [t - lag for t, lag in zip(lp, lags)]
        print()
        print(f"note: for local, JupyterHub polls the server's port with randomised exponential backoff; from the "
              f"hub log that\nadded p50 {statistics.median(lags):.2f} s (max {max(lags):.2f} s) after the server "
              f"was already listening. Without that delay local\nwould be p50 {statistics.median(prompt):.2f} s, "
              f"p95 {percentile(prompt, 0.95):.2f} s: sandbox/local p50 {statistics.median(s) / statistics.median(prompt):.2f}x, "
              f"p95 {percentile(s, 0.95) / percentile(prompt, 0.95):.2f}x (the sandbox spawner watches its socket every 50 ms).")


# --- main --------------------------------------------------------------------------------------
def _raise_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="counted spawns per backend (default 20)")
    parser.add_argument("--project", default="lung-screening", help="demo project to spawn (default lung-screening)")
    parser.add_argument("--profile", default=None, help="resource profile for the sandbox (default: the project's first)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted spawns per backend first (default 1)")
    parser.add_argument("--server-args", default="",
                        help="extra jupyterhub-singleuser arguments for both backends, e.g. "
                             "'--LabApp.extension_manager=readonly' (to measure a flag's effect)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"comma-separated subset of {', '.join(BACKENDS)} (default: "
                             f"{','.join(DEFAULT_BACKENDS)}; kubernetes starts this machine's test cluster)")
    parser.add_argument("--logs", type=Path, default=None, help="copy both hubs' logs into this directory at the end")
    parser.add_argument("--extra-config", type=Path, default=None,
                        help="a JupyterHub config file appended to both hubs' config (loaded last)")
    args = parser.parse_args()
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be >= 1 and --warmup >= 0")
    backends = tuple(b for b in BACKENDS if b in args.backends.split(","))
    if not backends or set(args.backends.split(",")) - set(BACKENDS):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if os.geteuid() != 0:
        parser.error("run as root: the hubs create sandboxes, cgroups, network namespaces and a system user")
    for tool in ("bwrap", "useradd", "userdel"):
        if not shutil.which(tool):
            parser.error(f"{tool} not found")
    signal.signal(signal.SIGTERM, _raise_on_term)

    extra_config = ""
    if args.server_args:
        extra = shlex.split(args.server_args)
        extra_config += (f"\nc.SandboxSpawner.args = {extra!r}\nc.VREDockerSpawner.args = {extra!r}\n"
                         f"c.LocalProcessSpawner.args = c.LocalProcessSpawner.args + {extra!r}\n")
    if args.extra_config:
        extra_config += "\n" + args.extra_config.read_text()

    name = f"vrebench-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    homes = short_tmp("vreb")
    hubs: dict[str, BenchHub] = {}
    clients: dict[str, HubClient] = {}
    times: dict[str, list[float]] = {b: [] for b in backends}
    failed = False
    try:
        create_system_user(name, homes)
        for backend in backends:
            print(f"starting the {backend} hub ...", flush=True)
            hubs[backend] = ChartHub(backend == "kubernetes") if backend.startswith("kubernetes") else \
                BenchHub(backend, extra_config)
            hubs[backend].start()
            clients[backend] = add_account(hubs[backend], name, password, args.project)
            print(f"  {hubs[backend].url} (state in {hubs[backend].base_dir})", flush=True)

        profile = {b: None if b == "local" else args.profile for b in backends}
        for i in range(args.warmup):
            for backend in backends:
                t = spawn(clients[backend], args.project, profile[backend])
                stop(clients[backend], args.project)
                print(f"warm-up {i + 1} {backend:10s} {t:6.2f} s (not counted)", flush=True)
        for i in range(args.n):
            order = backends if i % 2 == 0 else backends[::-1]  # ABBA: no backend always goes first
            for backend in order:
                t = spawn(clients[backend], args.project, profile[backend])
                stop(clients[backend], args.project)
                times[backend].append(t)
                print(f"spawn {i + 1:3d}/{args.n} {backend:10s} {t:6.2f} s", flush=True)
        lags = poll_lags(hubs["local"].log_path)[args.warmup:] if "local" in hubs else None
        report(times, args, os.cpu_count() or 0, lags)
        return 0
    except BaseException as e:
        failed = True
        print(f"\nbenchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
        for backend, hub in hubs.items():
            print(f"--- {backend} hub log (tail) ---\n{hub.log_tail(40)}", file=sys.stderr)
        if any(times.values()):
            report(times, args, os.cpu_count() or 0)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for backend, client in clients.items():
            try:
                if client.server_state(args.project) is not None:
                    client.stop(args.project, timeout=60)
            except Exception as e:  # noqa: BLE001
                print(f"warning: stopping the {backend} session: {e}", file=sys.stderr)
        for hub in hubs.values():
            hub.teardown(logs=args.logs)
        remove_system_user(name)
        shutil.rmtree(homes, ignore_errors=True)
        print("cleaned up" + (" (after a failure)" if failed else ""), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
