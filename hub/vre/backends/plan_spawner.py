"""What every session backend shares: the plan from the database, the form, progress events, the
audit relay, the single-user server's command line, GPU leases and re-checks of the plan.

A backend combines :class:`PlanSessionMixin` with a JupyterHub spawner and implements only how a
plan becomes a running server (``_start``), whether it still runs (``_alive``) and how it ends
(``_cleanup``). Everything a user can influence goes through ``_apply_plan``: the request only
selects a profile; the plan comes from the database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import quote

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import HasTraits, Instance, Integer, List, Unicode, default

from .. import db as vdb
from .. import gpus
from ..audit.events import aemit
from ..audit.relay import Identity, make_token
from ..hostfiles import unix_url
from ..plan import HOME, INNER_HUB_SOCKET, INNER_RUN, INNER_SOCKET, WORKSPACE, PlanRefused, SessionPlan, build_plan
from ..settings import Settings, load

INNER_HUB_URL = unix_url(INNER_HUB_SOCKET)


def user_options_profile(user_options: dict | None) -> str | None:
    """The profile the user chose; the form sends lists of strings, the API may send anything."""
    value = (user_options or {}).get("profile")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None and not isinstance(value, str):
        raise web.HTTPError(400, "profile must be a string naming one of the project's profiles")
    return value or None


def server_args(plan: SessionPlan, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """jupyterhub-singleuser's arguments for a session (after the program itself)."""
    argv = [f"--sock={INNER_SOCKET}",
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
    return argv + list(extra)


def relay_env(settings: Settings, identity: Identity) -> dict[str, str]:
    """How a session's extension reaches the hub's audit endpoint (through the bound hub socket)."""
    return {
        "VRE_SESSION": "/etc/vre/session.json",
        "VRE_AUDIT_URL": f"{INNER_HUB_URL}/hub/api/vre/audit/events",
        "VRE_AUDIT_TOKEN": make_token(settings, identity),
        "VRE_AUDIT_SPOOL": f"{INNER_RUN}/spool",
    }


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


class PlanSessionMixin(HasTraits):
    """Spawner behaviour shared by the VRE's backends (put it before the JupyterHub spawner class)."""

    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")

    @default("settings")
    def _settings_default(self):
        return load()

    # state kept across hub restarts
    session_id = Unicode("")       # stable per (user, project): names containers, cgroups and sockets
    island = Unicode("")           # the project's network
    audit_session = Unicode("")    # unique per run: what audit events call "session"
    gpu_devices = List(Integer())  # GPUs leased to this session (vre.gpus)

    plan: SessionPlan | None = None
    #: what progress() reports as "starting the server" (the sandbox, the container)
    start_noun = "server"

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
        return PlanSessionMixin._apply_plan

    @default("options_form")
    def _default_options_form(self):
        return PlanSessionMixin._render_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return Spawner._simple_options_from_form  # (a default is not validated: give the function)

    @staticmethod
    async def _apply_plan(spawner, user_options: dict) -> None:
        """Build the plan from the database; the request only selects a profile within it."""
        profile = user_options_profile(user_options)
        audit = dict(actor=spawner.user.name, project=spawner.name or None,
                     target=f"{spawner.user.name}/{spawner.name}", details={"profile": profile})
        try:
            plan = await asyncio.to_thread(spawner._build_plan, profile)
            have = len(gpus.host_devices(spawner.settings))
            if plan.gpus > have:
                raise web.HTTPError(503, f"profile {plan.profile!r} asks for {plan.gpus} GPU(s) but this host "
                                         f"has {have}; choose another profile or ask an admin")
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

    def _build_plan(self, profile: str | None) -> SessionPlan:
        with vdb.session_scope(self.settings.vre_db_url) as session:
            return build_plan(session, self.settings, self.user.name, self.name, profile)

    @staticmethod
    def _render_form(spawner) -> str:
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

    def _plan_state(self) -> dict:
        return dict(session_id=self.session_id, island=self.island, audit_session=self.audit_session,
                    gpu_devices=list(self.gpu_devices))

    def _load_plan_state(self, state: dict) -> None:
        self.session_id = state.get("session_id", "")
        self.island = state.get("island", "")
        self.audit_session = state.get("audit_session", "")
        self.gpu_devices = state.get("gpu_devices", [])

    def _clear_plan_state(self) -> None:
        self.session_id, self.island, self.audit_session = "", "", ""
        self.gpu_devices = []

    # -- paths ----------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        return self.settings.sessions_run_dir / self.session_id

    def _socket_path(self) -> Path:
        return self._run_dir() / "sock" / "jupyter.sock"

    def _socket_url(self) -> str:
        return "http+unix://" + quote(str(self._socket_path()), safe="")

    def _prepare_run_dir(self, plan: SessionPlan) -> Path:
        """Home, workspace, and a fresh per-session run directory (the server's socket and the
        audit spool, private to the session's uid), and the hub socket directory sessions may
        reach. The backend writes its identity files into the returned directory."""
        prepare_home_and_workspace(plan)
        run = self._run_dir()
        if run.exists():
            shutil.rmtree(run)
        for private in ("sock", "spool"):  # the server's socket; audit events not yet at the hub
            (run / private).mkdir(parents=True)
            os.chown(run / private, plan.uid, plan.gid)
            os.chmod(run / private, 0o700)
        hub_dir = self.settings.hub_socket_dir
        hub_dir.mkdir(parents=True, exist_ok=True)
        os.chown(hub_dir, 0, self.settings.sessions_gid)
        os.chmod(hub_dir, 0o750)
        return run

    # -- GPUs -----------------------------------------------------------------------------
    @staticmethod
    def _gpu_holder(session_id: str) -> str:
        return f"session:{session_id}"

    def _lease_gpus(self, plan: SessionPlan) -> tuple[int, ...]:
        try:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                return gpus.acquire(db, self.settings, self._gpu_holder(plan.session_id), plan.gpus,
                                    shared=plan.gpu_shared)
        except gpus.NoGpuFree as e:
            raise web.HTTPError(503, f"{e}; try again later or choose a profile without GPUs") from None

    def _release_gpus(self) -> None:
        if self.gpu_devices and self.session_id:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                gpus.release(db, self._gpu_holder(self.session_id))
        self.gpu_devices = []

    # -- progress -------------------------------------------------------------------------
    def _progress(self, pct: int, message: str) -> None:
        if getattr(self, "_events", None) is None:
            self._events, self._event_added = [], asyncio.Event()
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

    # -- audit and re-checks ----------------------------------------------------------------
    def _identity(self, user: str, project: str) -> Identity:
        return Identity(user, project, self.audit_session)

    async def _audit_start(self, plan: SessionPlan, start) -> str:
        """Run ``start()`` (the backend's own) between session.fail / session.start audit events."""
        audit = dict(actor=plan.user, project=plan.project, session=self.audit_session, target=plan.session_id)
        try:
            url = await start()
        except Exception as e:
            await aemit(self.settings, "session.fail", outcome="error", details={"error": str(e)}, **audit)
            raise
        await aemit(self.settings, "session.start", details={
            "datasets": list(plan.datasets), "profile": plan.profile, "cpu": plan.cpu, "mem_mb": plan.mem_mb,
            "gpus": plan.gpus, "network": plan.network, "gpu_devices": list(self.gpu_devices)}, **audit)
        return url

    async def _audit_stop(self, identity: Identity, *, reason: str, outcome: str = "ok") -> None:
        await aemit(self.settings, "session.stop", actor=identity.user, project=identity.project,
                    session=identity.session, target=self.session_id, outcome=outcome, details={"reason": reason})

    async def _stop_if_refused(self):
        """poll()'s second half: stop the session if its plan no longer holds (membership removed,
        permit expired); 0 when stopped, None when it may go on."""
        reason = await asyncio.to_thread(self._refusal)
        if not reason:
            return None
        self.log.warning("Stopping %s: %s", self._log_name, reason)
        self._stop_reason = reason
        await self.stop()
        return 0

    def _refusal(self) -> str | None:
        """Why this running session may no longer run (membership removed, permit expired), or None."""
        try:
            self._build_plan(user_options_profile(self.user_options))
        except PlanRefused as e:
            return str(e)
        except Exception:  # the database being briefly unavailable must not stop sessions
            self.log.exception("Could not re-check %s; leaving it running", self._log_name)
        return None
