"""The embedded default backend: each session is a bubblewrap sandbox in its project's island.

Rendering of a SessionPlan:

- filesystem: a fresh root with only /usr, a few files of /etc, the session environment, the
  plan's mounts (datasets read-only, home and workspace read-write), a private /tmp; the root
  itself is read-only;
- identity: an unprivileged host uid (per account) and the project's gid; inside, user, pid, ipc,
  uts and cgroup namespaces, no capabilities, no_new_privs (bubblewrap always sets it);
- network: ``ip netns exec <island>`` puts the sandbox in the project's loopback-only namespace;
  the single-user server listens on a unix socket that the proxy routes to, and it reaches the
  hub API through the hub's socket directory, bound in read-only;
- limits: a per-session cgroup carries the profile's memory, CPU and pids limits; the kernel
  OOM-kills the biggest process in it (a kernel), never the host or the hub.

A session outlives the hub: the cgroup finds its processes after a restart, and ``poll()`` re-checks
membership and permit expiry, stopping sessions that lost their right to run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Float, Instance, Integer, List, Unicode, default

from .. import db as vdb
from ..api.ingest import Identity, make_token, replay_spool
from ..events import aemit
from ..hubconfig import INNER_HUB_SOCKET, unix_url
from .. import gpus
from ..gpus import device_nodes, gpu_env, host_devices
from ..plan import HOME, WORKSPACE, PlanRefused, SessionPlan, build_plan
from ..settings import Settings, load
from . import netns
from .cgroups import SessionCgroup

INNER_UID, INNER_GID = 1000, 100
INNER_RUN = "/run/vre"
INNER_HUB_URL = unix_url(INNER_HUB_SOCKET)
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts",
             "ssl", "ca-certificates", "alternatives", "mime.types", "fonts", "protocols", "services")


def _user_options_profile(user_options: dict | None) -> str | None:
    """The profile the user chose; the form sends lists of strings, the API may send anything."""
    value = (user_options or {}).get("profile")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None and not isinstance(value, str):
        raise web.HTTPError(400, "profile must be a string naming one of the project's profiles")
    return value or None


def prepare_home_and_workspace(plan: SessionPlan) -> None:
    """Create the plan's home and the project workspace with the right owners (idempotent)."""
    workspace = next(m.source for m in plan.mounts if m.target == WORKSPACE)
    home = next(m.source for m in plan.mounts if m.target == HOME)
    workspace.mkdir(parents=True, exist_ok=True)
    os.chown(workspace, 0, plan.gid)
    os.chmod(workspace, 0o2770)  # setgid: files stay in the project's group
    home.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(home.parent, 0o755)
    (home / "project").mkdir(parents=True, exist_ok=True)  # mount point of the workspace
    os.chown(home, plan.uid, plan.gid)
    os.chown(home / "project", plan.uid, plan.gid)
    os.chmod(home, 0o700)


def write_identity_files(run: Path, plan: SessionPlan) -> None:
    """The passwd, group and manifest files a sandbox sees as /etc/passwd, /etc/group and
    /etc/vre/session.json."""
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o755)
    (run / "session.json").write_text(json.dumps(plan.manifest(), indent=2))
    (run / "passwd").write_text(f"jovyan:x:{INNER_UID}:{INNER_GID}:{plan.user}:{HOME}:/bin/bash\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (run / "group").write_text(f"users:x:{INNER_GID}:\nnogroup:x:65534:\n")


def sandbox_argv(settings: Settings, plan: SessionPlan, run: Path, *, binds=(), devices=(), groups=(),
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=()) -> list[str]:
    """The command prefix that renders ``plan`` as a sandbox: ``ip netns exec <island> setpriv
    <uid/gid, no capabilities> bwrap <filesystem and namespaces> --``; append the program to run.

    ``run`` holds the files of ``write_identity_files``; ``binds`` are extra (source, target,
    read-only) binds of the caller (sockets, spools); ``devices`` are granted GPU indices.
    Shared by sessions and batch workers, so both see exactly the same world.
    """
    env_dir = str(settings.session_env)
    bw = [bwrap,
          "--unshare-user", "--uid", str(INNER_UID), "--gid", str(INNER_GID),
          "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
          "--hostname", plan.project, "--new-session", "--cap-drop", "ALL",
          "--ro-bind", "/usr", "/usr",
          "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
          "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
          "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
          "--dir", "/etc"]
    if os.path.exists("/usr/bin/node"):
        # JupyterLab runs node at every start to ask yarn about builds a session cannot make
        bw += ["--ro-bind", "/dev/null", "/usr/bin/node"]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            bw += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    bw += ["--ro-bind", str(run / "passwd"), "/etc/passwd",
           "--ro-bind", str(run / "group"), "/etc/group",
           "--ro-bind", str(run / "session.json"), "/etc/vre/session.json",
           "--ro-bind", env_dir, env_dir]
    for path in extra_ro_paths:
        bw += ["--ro-bind", path, path]
    for node in device_nodes(devices):  # only the granted GPUs exist in its /dev
        bw += ["--dev-bind", node, node]
    for m in plan.mounts:
        bw += ["--ro-bind" if m.readonly else "--bind", str(m.source), m.target]
    for source, target, readonly in binds:
        bw += ["--ro-bind" if readonly else "--bind", str(source), target]
    bw += ["--chdir", HOME, "--remount-ro", "/", "--"]
    all_groups = ",".join(str(g) for g in (plan.gid, *groups))
    return (["ip", "netns", "exec", plan.network,
             setpriv, f"--reuid={plan.uid}", f"--regid={plan.gid}", f"--groups={all_groups}",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] + bw)


class SandboxSpawner(Spawner):
    """Runs each (user, project) session in a bubblewrap sandbox on this host."""

    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")

    @default("settings")
    def _settings_default(self):
        return load()

    bwrap_path = Unicode("bwrap", config=True, help="The bubblewrap executable.")
    setpriv_path = Unicode("setpriv", config=True, help="util-linux setpriv, used to drop to the session uid.")
    pids_limit = Integer(2048, config=True, help="Most processes (and threads) one session may have.")
    stop_grace = Float(5.0, config=True, help="Seconds between SIGTERM and SIGKILL when stopping a session.")
    extra_ro_paths = List(
        Unicode(), config=True,
        help="Host paths to show read-only inside every sandbox at the same path (shared software).",
    )
    session_umask = Integer(0o002, config=True, help="umask in sessions: group-writable files for the shared workspace.")

    # state kept across hub restarts
    pid = Integer(0)
    session_id = Unicode("")      # stable per (user, project): names the cgroup and sockets
    island = Unicode("")
    audit_session = Unicode("")   # unique per run: what audit events call "session"
    gpu_devices = List(Integer())  # GPUs leased to this session (vre.gpus)

    plan: SessionPlan | None = None
    _proc: subprocess.Popen | None = None

    # -- JupyterHub hooks -------------------------------------------------------------------
    @default("ip")
    def _ip_default(self):
        # Never bound (the server listens on a unix socket); jupyter_server's default port
        # keeps it from refusing --sock with "--port and --sock are mutually exclusive".
        return "127.0.0.1"

    @default("port")
    def _port_default(self):
        return 8888

    @default("apply_user_options")
    def _apply_default(self):
        return SandboxSpawner._apply_plan

    @default("options_form")
    def _options_form_default(self):
        return SandboxSpawner._render_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return Spawner._simple_options_from_form  # (a default is not validated: give the function)

    @staticmethod
    async def _apply_plan(spawner: "SandboxSpawner", user_options: dict) -> None:
        """Build the plan from the database; the request only selects a profile within it."""
        profile = _user_options_profile(user_options)
        audit = dict(actor=spawner.user.name, project=spawner.name or None,
                     target=f"{spawner.user.name}/{spawner.name}", details={"profile": profile})
        try:
            plan = await asyncio.to_thread(spawner._build_plan, profile)
            if plan.gpus > len(host_devices(spawner.settings)):
                raise web.HTTPError(503, f"profile {plan.profile!r} asks for {plan.gpus} GPU(s) but this host "
                                         f"has {len(host_devices(spawner.settings))}; choose another profile "
                                         "or ask an admin")
        except PlanRefused as e:
            await aemit(spawner.settings, "session.request", outcome="denied",
                        **{**audit, "details": {**audit["details"], "reason": str(e)}})
            raise web.HTTPError(403, str(e)) from None
        except web.HTTPError as e:
            await aemit(spawner.settings, "session.request", outcome="error",
                        **{**audit, "details": {**audit["details"], "reason": e.log_message}})
            raise
        await aemit(spawner.settings, "session.request", **audit)
        spawner.plan = plan
        spawner._events, spawner._event_added = [], asyncio.Event()
        spawner._progress(5, f"Permit checked: project {plan.project}, profile {plan.profile}")

    def _lease_gpus(self, plan: SessionPlan) -> tuple[int, ...]:
        try:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                return gpus.acquire(db, self.settings, self._gpu_holder(plan.session_id), plan.gpus,
                                    shared=plan.gpu_shared)
        except gpus.NoGpuFree as e:
            raise web.HTTPError(503, f"{e}; try again later or choose a profile without GPUs") from None

    def _release_gpus(self) -> None:
        if self.gpu_devices or self.session_id:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                gpus.release(db, self._gpu_holder(self.session_id))
        self.gpu_devices = []

    @staticmethod
    def _gpu_holder(session_id: str) -> str:
        return f"session:{session_id}"

    def _build_plan(self, profile: str | None) -> SessionPlan:
        with vdb.session_scope(self.settings.vre_db_url) as session:
            return build_plan(session, self.settings, self.user.name, self.name, profile)

    @staticmethod
    def _render_form(spawner: "SandboxSpawner") -> str:
        from ..hubpages import spawn_form

        return spawn_form(spawner.settings, spawner.user.name, spawner.name, spawner.hub.base_url)

    @property
    def server(self):
        server = Spawner.server.fget(self)
        # JupyterHub rebuilds a socket URL as "<host>:80"; keep the real socket as connect_url,
        # also for Server objects re-created from the database after a hub restart.
        if server is not None and server.proto == "http+unix" and not server.connect_url and self.session_id:
            server.connect_url = self._socket_url()
        return server

    @server.setter
    def server(self, server):
        Spawner.server.fset(self, server)

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(pid=self.pid, session_id=self.session_id, island=self.island,
                         audit_session=self.audit_session, gpu_devices=list(self.gpu_devices))
        return state

    def load_state(self, state):
        super().load_state(state)
        self.pid = state.get("pid", 0)
        self.session_id = state.get("session_id", "")
        self.island = state.get("island", "")
        self.audit_session = state.get("audit_session", "")
        self.gpu_devices = state.get("gpu_devices", [])

    def clear_state(self):
        super().clear_state()
        self.pid, self.session_id, self.island, self.audit_session = 0, "", "", ""
        self.gpu_devices = []

    # -- paths ----------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        return self.settings.sessions_run_dir / self.session_id

    def _socket_path(self) -> Path:
        return self._run_dir() / "sock" / "jupyter.sock"

    def _socket_url(self) -> str:
        return "http+unix://" + quote(str(self._socket_path()), safe="")

    # -- start ----------------------------------------------------------------------------
    async def start(self):
        plan = self.plan or self._build_plan(_user_options_profile(self.user_options))
        self.session_id, self.island = plan.session_id, plan.network
        self.audit_session = f"{plan.session_id}-{secrets.token_hex(4)}"
        self._stop_reason = "stopped"
        if getattr(self, "_events", None) is None:
            self._events, self._event_added = [], asyncio.Event()
        audit = dict(actor=plan.user, project=plan.project, session=self.audit_session, target=plan.session_id)
        try:
            url = await self._start(plan)
        except Exception as e:
            await asyncio.to_thread(self._cleanup)
            await aemit(self.settings, "session.fail", outcome="error", details={"error": str(e)}, **audit)
            raise
        await aemit(self.settings, "session.start", details={
            "datasets": list(plan.datasets), "profile": plan.profile, "cpu": plan.cpu, "mem_mb": plan.mem_mb,
            "gpus": plan.gpus, "network": plan.network}, **audit)
        return url

    async def _start(self, plan: SessionPlan) -> str:
        self._progress(10, f"Preparing project {plan.project}: {len(plan.datasets)} dataset(s) read-only")
        if plan.gpus:
            self.gpu_devices = list(await asyncio.to_thread(self._lease_gpus, plan))
            self._progress(20, f"GPU(s) {', '.join(map(str, self.gpu_devices))} reserved for this session")
        await asyncio.to_thread(self._prepare_host, plan)
        cgroup = SessionCgroup(plan.session_id, self.settings.instance)
        await asyncio.to_thread(cgroup.kill_all, 0)  # a leftover of a crashed run never lingers
        cgroup.create(cpu=plan.cpu, mem_mb=plan.mem_mb, pids_max=self.pids_limit)

        self._progress(30, "Joining the project's network island (loopback only)")
        async with netns.lock(plan.network):
            await netns.ensure(plan.network)
            argv = self._command(plan)
            env = self._environment(plan)
            log_file = open(self._run_dir() / "server.log", "ab")
            self.log.info("Starting sandbox %s: %s", plan.session_id, shlex.join(argv))
            self._progress(50, f"Starting the sandbox ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
            umask = self.session_umask

            def child_setup():
                cgroup.join()
                os.umask(umask)

            try:
                self._proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    preexec_fn=child_setup, start_new_session=True, close_fds=True, cwd="/",
                )
            finally:
                log_file.close()
        self.pid = self._proc.pid

        self._progress(70, "Waiting for JupyterLab to listen")
        await self._wait_for_socket(self._proc)
        self._progress(90, "Server is up; connecting")
        return self._socket_url()

    async def _wait_for_socket(self, proc: subprocess.Popen) -> None:
        sock = self._socket_path()
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while not sock.exists():
            if proc.poll() is not None:
                tail = self._log_tail()
                self.log.error("Sandbox %s exited with %s:\n%s", self.session_id, proc.returncode, tail)
                await asyncio.to_thread(self._cleanup)
                raise RuntimeError(f"the session's server exited during start (code {proc.returncode}); "
                                   "an admin can read its log in the hub's log")
            if asyncio.get_running_loop().time() > deadline:
                await asyncio.to_thread(self._cleanup)
                raise TimeoutError(f"the session's server did not start within {self.start_timeout} s")
            await asyncio.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self._run_dir() / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _prepare_host(self, plan: SessionPlan) -> None:
        """Home, workspace and the per-session run directory, with the right owners."""
        prepare_home_and_workspace(plan)
        run = self._run_dir()
        if run.exists():
            shutil.rmtree(run)
        for private in ("sock", "spool"):  # the server's socket; audit events not yet at the hub
            (run / private).mkdir(parents=True)
            os.chown(run / private, plan.uid, plan.gid)
            os.chmod(run / private, 0o700)
        write_identity_files(run, plan)
        hub_dir = self.settings.hub_socket_dir
        hub_dir.mkdir(parents=True, exist_ok=True)
        os.chown(hub_dir, 0, self.settings.sessions_gid)
        os.chmod(hub_dir, 0o750)

    def _command(self, plan: SessionPlan) -> list[str]:
        """ip netns exec <island> setpriv <uid> bwrap <plan> -- jupyterhub-singleuser ..."""
        run = self._run_dir()
        # The directory, not the socket: a restarted hub recreates the socket file.
        binds = [(self.settings.hub_socket_dir, f"{INNER_RUN}/hub", True),
                 (run / "sock", f"{INNER_RUN}/session", False),
                 (run / "spool", f"{INNER_RUN}/spool", False)]
        return sandbox_argv(self.settings, plan, run, binds=binds, devices=self.gpu_devices,
                            groups=(self.settings.sessions_gid,), bwrap=self.bwrap_path,
                            setpriv=self.setpriv_path, extra_ro_paths=self.extra_ro_paths) + self._server_command(plan)

    def _server_command(self, plan: SessionPlan) -> list[str]:
        singleuser = str(self.settings.session_env / "bin" / "jupyterhub-singleuser")
        argv = [singleuser, f"--sock={INNER_RUN}/session/jupyter.sock",
                "--KernelManager.transport=ipc", f"--ServerApp.root_dir={HOME}",
                # vre_session holds the download guard and audit relay: no session without it.
                # jupyter_lsp (no language servers here) and notebook_shim (no classic extensions)
                # only cost start time.
                '--ServerApp.jpserver_extensions={"vre_session": True, "jupyter_lsp": False, "notebook_shim": False}',
                "--ServerApp.reraise_server_extension_failures=True",
                # nothing a session could install, and nothing to fetch: there is no network
                "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if plan.audit_cells:  # vre_session also tells the researcher, in the Lab's title
            argv += ["--ServerApp.kernel_websocket_connection_class=vre_session.cells.AuditedKernelConnection"]
        return argv + self.args

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        env = self.get_env()  # JUPYTERHUB_* (token, API URL, service prefix, ...)
        env.update(plan.env)
        if plan.gpus:
            env.update(gpu_env(self.gpu_devices))
        env.update({
            "PATH": f"{self.settings.session_env}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
            "VRE_SESSION": "/etc/vre/session.json",
            "VRE_AUDIT_URL": f"{INNER_HUB_URL}/hub/api/vre/audit/events",
            "VRE_AUDIT_TOKEN": make_token(self.settings, self._identity(plan.user, plan.project)),
            "VRE_AUDIT_SPOOL": f"{INNER_RUN}/spool",
        })
        return env

    def _progress(self, pct: int, message: str) -> None:
        self._events.append({"progress": pct, "message": message})
        self._event_added.set()

    async def progress(self):
        sent = 0
        for _ in range(50):  # the list appears when the request is accepted (apply_user_options)
            if getattr(self, "_events", None) is not None or not self.pending:
                break
            await asyncio.sleep(0.1)
        if getattr(self, "_events", None) is None:
            return
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._spawn_future is not None and self._spawn_future.done() and sent >= len(self._events):
                break
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), timeout=1)
            except asyncio.TimeoutError:
                if self._spawn_future is None or self._spawn_future.done():
                    break

    # -- poll and stop --------------------------------------------------------------------
    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if not self.pid or not self.session_id:
            return False
        return bool(SessionCgroup(self.session_id, self.settings.instance).pids())

    async def poll(self):
        if not self._alive():
            if self.pid:  # not yet finished: it died on its own
                code = self._proc.returncode if self._proc is not None else None
                await self._finish(outcome="error", reason=f"the session ended by itself (exit code {code})")
            return 0
        reason = await asyncio.to_thread(self._refusal)
        if reason:
            self.log.warning("Stopping %s: %s", self._log_name, reason)
            self._stop_reason = reason
            await self.stop()
            return 0
        return None

    def _refusal(self) -> str | None:
        """Why this running session may no longer run (membership removed, permit expired), or None."""
        try:
            self._build_plan(_user_options_profile(self.user_options))
        except PlanRefused as e:
            return str(e)
        except Exception:  # the database being briefly unavailable must not stop sessions
            self.log.exception("Could not re-check %s; leaving it running", self._log_name)
        return None

    async def stop(self, now=False):
        if not self.pid:  # never started, or already finished by poll()
            return
        await self._finish(grace=0 if now else self.stop_grace, reason=getattr(self, "_stop_reason", "stopped"))

    async def _finish(self, *, reason: str, outcome: str = "ok", grace: float = 0) -> None:
        """Stop what is left, store the session's spooled audit events, record the stop, clean up."""
        identity = self._identity(self.user.name, self.name)
        await asyncio.to_thread(self._cleanup, grace, identity)
        await self._release_island()
        await aemit(self.settings, "session.stop", actor=identity.user, project=identity.project,
                    session=identity.session, target=self.session_id, outcome=outcome, details={"reason": reason})
        self.audit_session = ""

    def _identity(self, user: str, project: str) -> Identity:
        return Identity(user, project, self.audit_session)

    def _cleanup(self, grace: float = 0, identity: Identity | None = None) -> None:
        """Kill the session's processes, reap, keep its audit spool, remove its cgroup and run
        directory. Idempotent."""
        cgroup = SessionCgroup(self.session_id, self.settings.instance)
        cgroup.kill_all(grace)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        elif self.pid:
            try:  # reap a child of a previous hub incarnation that is ours no longer: ignore
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        cgroup.remove()
        if self.gpu_devices:
            self._release_gpus()
        if identity is not None and identity.session:
            replay_spool(self.settings, identity, self._run_dir() / "spool", self.log)
        shutil.rmtree(self._run_dir(), ignore_errors=True)
        self.pid = 0

    async def _release_island(self) -> None:
        if self.island:
            async with netns.lock(self.island):
                await netns.delete_if_unused(self.island)
