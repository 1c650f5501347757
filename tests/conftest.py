"""Shared fixtures: databases (SQLite and a real PostgreSQL server started here) and a real hub.

The hub fixture runs ``vre up`` exactly as the README's first command does (real JupyterHub,
real configurable-http-proxy, real bubblewrap sandboxes), on a small demo, with its state in a
fresh directory, once per database backend.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))

from hubclient import HubClient  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Every directory this run made for hubs and database servers: what is left of them (processes,
#: cgroups) when the run ends is a leak (``pytest_sessionfinish``).
RUN_DIRS: list[Path] = []


def short_tmp(prefix: str) -> Path:
    """Lowercase and short: socket paths must fit 107 bytes and aiohttp lowercases them."""
    path = Path(f"/tmp/{prefix}-{secrets.token_hex(3)}")
    path.mkdir(mode=0o755)
    RUN_DIRS.append(path)
    return path


def processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, command line, environment) of every process this user may read, but this one."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            yield int(proc.name), (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:
            continue


def leftovers(dirs: list[Path]) -> list[str]:
    """Processes that still run from ``dirs`` (in their command line or environment: hubs, the
    proxy, managed services, PostgreSQL) and session cgroups of their instances."""
    if not dirs:
        return []
    needles = [str(d).encode() for d in dirs] + [quote(str(d), safe="").encode() for d in dirs]
    found = []
    for pid, cmd, env in processes():
        seen = cmd + b"\0" + env
        if any(n in seen for n in needles):
            command = cmd.replace(b"\0", b" ")[:160].decode(errors="replace")
            of = next((str(d) for d in dirs if str(d).encode() in seen), "")  # which hub's, for the log
            found.append(f"pid {pid} (of {of}): {command}")
    for d in dirs:
        for controller in ("pids", "memory"):
            cg = Path(f"/sys/fs/cgroup/{controller}/{d.name}")
            procs = [p for p in cg.rglob("cgroup.procs") if p.read_text().strip()] if cg.is_dir() else []
            found += [f"cgroup {p.parent}: pids {' '.join(p.read_text().split())}" for p in procs]
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a hub shows the end of that hub's log: CI keeps only this output."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Hub) and value.log_path.exists():
                report.sections.append((f"hub log ({name}: {value.backend}, last 80 lines)", value.log_tail(80)))


#: Seconds spent per test folder (setup, call and teardown): printed at the end of the run.
FOLDER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    folder = "/".join(report.nodeid.split("/")[:2])
    FOLDER_SECONDS[folder] = FOLDER_SECONDS.get(folder, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Where a run's time went, per folder: a slower CI run says which part slowed down."""
    if len(FOLDER_SECONDS) > 1:
        terminalreporter.write_sep("-", "time per test folder")
        for folder, seconds in sorted(FOLDER_SECONDS.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds / 60:6.1f} min  {folder}")
    # the interpreter joins these before it exits: a slow exit after the summary is one of them
    import threading
    import traceback

    frames = sys._current_frames()
    waiting = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if waiting:
        terminalreporter.write_sep("-", f"{len(waiting)} thread(s) the exit waits for")
        for t in waiting:
            stack = traceback.format_stack(frames[t.ident])[-2:] if t.ident in frames else []
            terminalreporter.write_line(f"{t.name}:\n" + "".join(stack).rstrip())


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves no process behind: whatever still runs from this run's directories fails it."""
    left = leftovers(RUN_DIRS)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "processes left behind by the test run:\n  " + "\n  ".join(left)
        if reporter:
            reporter.write_line(text, red=True)
        else:
            print(text, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- PostgreSQL ---------------------------------------------------------------------------
class Postgres:
    """A throwaway PostgreSQL cluster on a unix socket, run as the 'postgres' system user."""

    def __init__(self):
        self.dir = short_tmp("vre-pg")
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "--auth=trust", "-U", "postgres",
                           "--encoding=UTF8", "--locale=C.UTF-8"])
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                           "-o", f"-c listen_addresses='' -k {self.dir} -p {self.port} -c fsync=off "
                           # one test run makes a hundred databases, and its process keeps a
                           # connection pool (and the audit writer's connection) for each
                           "-c max_connections=400", "start"])
        self._n = 0

    def _as_postgres(self, argv: list[str]) -> None:
        r = subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv],
                           capture_output=True, text=True, cwd="/")
        if r.returncode:
            raise AssertionError(f"{Path(argv[0]).name} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")

    def new_database(self) -> str:
        self._n += 1
        name = f"vre{self._n}"
        self._as_postgres([str(PG_BIN / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", name])
        return f"postgresql+psycopg://postgres@/{name}?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing; scripts/setup --test installs them")
        pytest.skip("PostgreSQL server not installed (scripts/setup --test installs it)")
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, migrated VRE database on each backend."""
    from vre import db

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    db.upgrade(url)
    return url


# --- a real hub ---------------------------------------------------------------------------
class Hub:
    """A running ``vre up`` with its own state directory, ports and database.

    ``backend`` labels the hub (logs, per-hub caches); ``session_backend`` is the VRE's
    ``backend`` setting: ``sandbox`` or ``docker``.
    """

    def __init__(self, backend: str, db_urls: tuple[str, str] | None, session_backend: str = "sandbox"):
        self.backend = backend
        self.session_backend = session_backend
        self.base_dir = short_tmp("vret")
        port, api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "VRE_STATE_DIR": str(self.base_dir / "state"),
            "VRE_RUN_DIR": str(self.base_dir / "run"),
            "VRE_BIND_URL": self.url,
            "VRE_PROXY_API_URL": f"http://127.0.0.1:{api_port}",
            "VRE_INSTANCE": self.base_dir.name,  # its own cgroups and islands: hubs run side by side
            "VRE_DEMO_SIZE": "small",
            "VRE_POLL_INTERVAL": "2",
            "VRE_LOCKOUT_THRESHOLD": "3",
            "VRE_LOCKOUT_SECONDS": "60",
            # the demo's admin and auditor log in with passwords alone in tests; the second factor's
            # own tests (test_login_totp.py) turn it on
            "VRE_TOTP_ROLES": "",
        }
        if db_urls:
            self.env["VRE_DB_URL"], self.env["VRE_HUB_DB_URL"] = db_urls
        if session_backend == "docker":
            self.env["VRE_BACKEND"] = "docker"
            self.env.setdefault("VRE_NOTEBOOK_IMAGE", NOTEBOOK_IMAGE)
        self.state = Path(self.env["VRE_STATE_DIR"])
        self.instance = self.env["VRE_INSTANCE"]
        self.log_path = self.base_dir / "hub.log"
        self.proc: subprocess.Popen | None = None
        self.passwords: dict[str, str] = {}

    def vre(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(VENV_BIN / "vre"), *args], env=self.env, input=input, capture_output=True,
                           text=True, timeout=300)
        if check and r.returncode:
            raise AssertionError(f"vre {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "vre"), "up"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 300  # first start writes the demo cohorts
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vre up exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy starting
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"hub did not come up:\n{self.log_tail()}")
        creds = self.state / "secrets" / "demo-credentials.txt"
        for line in creds.read_text().splitlines():
            name, _role, password = line.split("\t")
            self.passwords[name] = password

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the hub; one that does not stop on SIGTERM within ``timeout`` is an error (raised
        after it is killed, so nothing of it lingers)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(f"the hub did not stop within {timeout} s of signal {sig}:\n{self.log_tail()}")

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        self.start()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def account(self, name: str, password: str | None = None) -> str:
        """A local account of a test's own (made with the CLI once per hub; the demo's stay as
        they are); returns its password."""
        if name not in self.passwords:
            password = password or secrets.token_urlsafe(16)
            self.vre("user", "add", name, "--password-stdin", input=f"{password}\n")
            self.passwords[name] = password
        return self.passwords[name]

    def client(self, user: str, password: str | None = None) -> HubClient:
        c = HubClient(self.url, user)
        c.get_token(password or self.passwords[user])
        return c

    # --- what a session is on the host, per backend ------------------------------------------
    @property
    def docker(self):
        """The engine's API client (docker backend)."""
        import docker

        if getattr(self, "_docker", None) is None:
            self._docker = docker.APIClient(base_url=self.env.get("VRE_DOCKER_URL", DOCKER_URL), version="auto")
        return self._docker

    def container(self, session_id: str) -> dict | None:
        """The engine's record of a session's container (docker backend), None when there is none."""
        import docker

        try:
            return self.docker.inspect_container(f"{self.instance}-{session_id}")
        except docker.errors.NotFound:
            return None

    def cgroup(self, session_id: str, controller: str = "pids") -> Path:
        """The session's cgroup directory for ``controller`` (a path that does not exist when the
        session does not run)."""
        if self.session_backend == "docker":
            c = self.container(session_id)
            pid = c["State"]["Pid"] if c and c["State"].get("Running") else 0
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines() if pid else []
            except FileNotFoundError:
                lines = []
            for line in lines:
                _, controllers, path = line.split(":", 2)
                if controller in controllers.split(","):
                    mount = next(d for d in Path("/sys/fs/cgroup").iterdir() if controller in d.name.split(","))
                    return mount / path.lstrip("/")
            return Path(f"/nonexistent/{self.instance}/{session_id}/{controller}")
        return Path(f"/sys/fs/cgroup/{controller}/{self.instance}/{session_id}")

    def session_exists(self, session_id: str) -> bool:
        """Whether anything of the session is left on the host (cgroup; container)."""
        if self.session_backend == "docker":
            return self.container(session_id) is not None
        return self.cgroup(session_id).exists() or self.cgroup(session_id, "memory").exists()

    def island(self, project: str) -> Path:
        return Path(f"/run/netns/{self.instance}-{project}")

    def island_exists(self, project: str) -> bool:
        """Whether the project's network (namespace; internal network) exists."""
        if self.session_backend == "docker":
            import docker

            try:
                self.docker.inspect_network(f"{self.instance}-{project}")
                return True
            except docker.errors.NotFound:
                return False
        return self.island(project).exists()

    def island_host_addresses(self, project: str) -> list[str]:
        """The host's own addresses on the project's network (its side of the bridge): a session
        must not reach them. The sandbox's islands have none."""
        if self.session_backend != "docker":
            return []
        net = self.docker.inspect_network(f"{self.instance}-{project}")
        return [c["Gateway"] for c in (net.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")]

    def teardown(self) -> None:
        try:
            self.kill()
        finally:
            self._clean_up()

    def _clean_up(self) -> None:
        self.vre("down", check=False)
        if self.session_backend == "docker":
            from vre.backends.docker import remove_instance_containers
            from vre.settings import Settings

            try:
                remove_instance_containers(Settings(instance=self.instance, docker_url=self.env.get(
                    "VRE_DOCKER_URL", DOCKER_URL)), self.docker)
            except Exception as e:  # noqa: BLE001 - go on cleaning up
                print(f"warning: removing the docker hub's containers: {e}", file=sys.stderr)
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        if self.log_path.exists():  # a hub made but never started has none
            shutil.copy(self.log_path, artifacts / f"hub-{self.backend}-{self.instance}.log")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _require_root_sandbox():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (the hub manages sandboxes, cgroups and namespaces)")
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap missing; scripts/setup installs it")


DOCKER_URL = os.environ.get("VRE_DOCKER_URL", "unix:///run/podman/podman.sock")
NOTEBOOK_IMAGE = os.environ.get("VRE_NOTEBOOK_IMAGE", "localhost/vre-notebook:latest")
#: hub parameter -> (database, session backend). A module runs on the docker backend too with
#: ``pytest.mark.parametrize("hub", SESSION_BACKENDS, indirect=True)`` (see test_sessions.py).
HUBS = {"sqlite": ("sqlite", "sandbox"), "postgresql": ("postgresql", "sandbox"), "docker": ("sqlite", "docker")}


def _require_docker() -> None:
    """The engine answers and the notebook image exists (built here if missing); in CI nothing
    of it may be missing, elsewhere the docker tests skip with the reason."""
    import docker

    def missing(reason: str):
        if os.environ.get("CI"):
            pytest.fail(f"docker backend: {reason}")
        pytest.skip(f"docker backend: {reason}")

    try:
        client = docker.APIClient(base_url=DOCKER_URL, version="auto", timeout=120)  # slow while images build
        client.ping()
    except Exception as e:  # noqa: BLE001
        missing(f"no container engine at {DOCKER_URL} ({type(e).__name__}); scripts/podman-setup starts one")
    build_error = None
    if NOTEBOOK_IMAGE == "localhost/vre-notebook:latest":
        # the image of this checkout, as tests/docker builds it (skipped when its inputs are unchanged)
        from vre import images

        try:
            images.build(["notebook"], quiet=True)
        except Exception as e:  # noqa: BLE001
            build_error = e
            print(f"warning: `vre images build --only notebook` failed: {e}", file=sys.stderr)
    try:
        client.inspect_image(NOTEBOOK_IMAGE)
    except docker.errors.NotFound:
        missing(f"image {NOTEBOOK_IMAGE} not found" + (f"; building it failed: {build_error}" if build_error else
                                                       " (VRE_NOTEBOOK_IMAGE)"))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def hub(request):
    """A running hub with the small demo; one per database backend (sandbox sessions). Modules that
    parametrise it indirectly with ``"docker"`` also get one with docker sessions (on SQLite)."""
    _require_root_sandbox()
    database, session_backend = HUBS[request.param]
    if session_backend == "docker":
        _require_docker()
    db_urls = None
    if database == "postgresql":
        pg = request.getfixturevalue("postgres")
        db_urls = (pg.new_database(), pg.new_database())
    h = Hub(request.param, db_urls, session_backend)
    try:
        h.start()
        yield h
    finally:
        h.teardown()


@pytest.fixture(scope="session")
def sqlite_hub():
    """A hub on SQLite only, for tests whose subject is not the database (browser, faults)."""
    _require_root_sandbox()
    h = Hub("sqlite-only", None)
    try:
        h.start()
        yield h
    finally:
        h.teardown()


@pytest.fixture(scope="module")
def make_hub():
    """Start hubs of this module's own (SQLite, extra ``VRE_*`` settings); all are torn down after
    the module. ``make_hub("label", VRE_GPU_DEVICES="0")``; ``started=False`` gives the hub unstarted
    (its URL is known: an OIDC provider registers it), to ``start()`` later."""
    _require_root_sandbox()
    hubs = []

    def start(label: str, started: bool = True, **env: str) -> Hub:
        h = Hub(label, None)
        h.env.update(env)
        hubs.append(h)
        if started:
            h.start()
        return h
    yield start
    for h in hubs:
        h.teardown()


@pytest.fixture
def hub_kit():
    """The Hub class and the leftover check, for tests that manage a whole hub life themselves
    (start, kill, restart, stop)."""
    from types import SimpleNamespace

    _require_root_sandbox()
    return SimpleNamespace(Hub=Hub, leftovers=leftovers)
