"""The docker backend: each (user, project) session is a container, through Docker or Podman's
Docker-compatible API (``settings.docker_url``).

Rendering of a SessionPlan (and nothing else; :func:`container_config` is the whole translation):

- filesystem: the notebook image's root, **read-only**, with tmpfs on /tmp, /var/tmp and /run; the
  plan's mounts (datasets and their catalogue records read-only, home and workspace read-write),
  the manifest at /etc/vre/session.json, and the same /run/vre layout as the sandbox: the hub's
  socket *directory* read-only at /run/vre/hub (a restarted hub recreates the socket), the
  session's own socket directory at /run/vre/session and its audit spool at /run/vre/spool;
- identity: the container runs as the account's host uid and the project's gid (``plan.uid:plan.gid``)
  with the sessions group added (to reach the hub socket), so files in home and workspace belong to
  the account and the project on the host, as with the sandbox; /etc/passwd and /etc/group name
  them (jovyan, the project); all capabilities dropped, no-new-privileges, an init as pid 1;
- network: one ``--internal`` network per project (``vre.plan.island_name``), created on demand and
  removed with its last container. Internal networks have no default route; the engine still puts
  a gateway address on the host's side of the bridge (Podman's DNS listens there), so the hub adds
  a firewall rule that rejects everything arriving from the project's bridge (IPv4 and IPv6) and
  IPv6 is switched off inside. A session reaches the other containers of its project and nothing
  else. The single-user server listens on a unix socket in the bound session directory: the proxy
  connects to that socket, so no container address or published port is involved;
- limits: the profile's CPU quota, memory (swap included) and a pids limit on the container's
  cgroup; the kernel OOM-kills the biggest process in it (a kernel), never the host or the hub;
- GPUs: leased from ``vre.gpus`` and given as device nodes (or Docker ``device_requests``).

A session outlives the hub: the container keeps running (the engine owns it) and the spawner
re-attaches from its stored state; ``poll()`` re-checks membership and permit expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import subprocess

import docker
from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from traitlets import Bool, CaselessStrEnum, Dict, Unicode, default

from .. import gpus
from ..hostfiles import locked
from ..plan import HOME, INNER_RUN, SessionPlan
from ..settings import Settings
from . import gate, seccomp
from .plan_spawner import PlanSpawner, server_args, server_command

CFS_PERIOD_US = 100_000
#: The launch gate of a container with datasets: a read-only directory (the hub's) in which the
#: hub creates ``open`` once hostview has marked the container's dataset mounts.
INNER_GATE = f"{INNER_RUN}/gate"
GATE_WAIT_S = 30
#: sysctls of every session: no IPv6 at all (its link-local addresses would reach the host's bridge)
SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
_locks: dict[str, asyncio.Lock] = {}


class DockerBackendError(RuntimeError):
    """The engine or the host refused something a session needs; the message says what to fix."""


def bridge_name(network: str) -> str:
    """The host interface of a project's network: deterministic, at most 15 characters."""
    return "vre" + hashlib.sha256(network.encode()).hexdigest()[:11]


def network_config(settings: Settings, plan: SessionPlan) -> dict:
    """Arguments of ``APIClient.create_network`` for the project's island."""
    return dict(name=plan.network, driver="bridge", internal=True, check_duplicate=True,
                options={"com.docker.network.bridge.name": bridge_name(plan.network)},
                labels={"vre.instance": settings.instance, "vre.project": plan.project, "vre.network": "island"})


def identity_files(plan: SessionPlan, sessions_gid: int | None) -> dict[str, str]:
    """/etc/passwd and /etc/group of a container: jovyan is the plan's host uid. ``sessions_gid``:
    the sessions group it is given (a session's; None for the job engine's runs, which get none)."""
    sessions = f"vre-sessions:x:{sessions_gid}:jovyan\n" if sessions_gid is not None else ""
    return {
        "passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                   f"jovyan:x:{plan.uid}:{plan.gid}:{plan.user}:{HOME}:/bin/bash\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "group": f"root:x:0:\n{plan.project}:x:{plan.gid}:jovyan\n{sessions}users:x:100:\nnogroup:x:65534:\n",
    }


def spawner_option(settings: Settings, name: str, default):
    """A ``VREDockerSpawner`` option as the operator set it (the ``jupyterhub`` setting's table):
    the job engine renders its containers with the hub's choices (host firewall, GPU mode, /tmp)."""
    return (settings.jupyterhub.get("VREDockerSpawner") or {}).get(name, default)


@contextlib.contextmanager
def island_lock(settings: Settings, network: str):
    """Held while a process makes, joins or removes the island ``network``: the hub and the job
    engine both do, and removing a network (and its host rule) between another's check and its
    container's creation would leave that container on a network without its rule."""
    folder = settings.run_dir / "islands"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(folder / f"{network}.lock"):
        yield


def gpu_config(devices: tuple[int, ...] | list[int], nodes: list[str], mode: str = "devices") -> tuple[dict, dict]:
    """(host config, environment) giving a container the GPUs ``devices`` (host indices).

    ``devices`` mode maps the device nodes (``/dev/nvidiaN`` of the lease and the control nodes
    that exist); ``device_requests`` asks Docker's NVIDIA runtime for the same devices. Inside, the
    driver enumerates only the granted GPUs, so CUDA numbers them 0..n-1 (in host PCI order).
    """
    if not devices:
        return {}, {}
    env = {**gpus.gpu_env(devices), "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    if mode == "device_requests":
        request = docker.types.DeviceRequest(driver="nvidia", device_ids=[str(i) for i in devices],
                                             capabilities=[["gpu"]])
        return {"device_requests": [request]}, env
    return {"devices": [f"{node}:{node}:rwm" for node in nodes]}, env


def container_config(settings: Settings, plan: SessionPlan, *, image: str, name: str,
                     env: dict[str, str], command: list[str], gpu_devices=(), gpu_nodes=(),
                     gpu_mode: str = "devices", pids_limit: int = 2048, tmp_size: str = "2g",
                     extra_ro_paths=(), umask: int = 0o002, init: bool = True,
                     engine: str = "podman", seccomp: str | None = None, gate_dir=None,
                     groups: tuple[int, ...] | None = None) -> tuple[dict, dict]:
    """(create_container kwargs without host_config, create_host_config kwargs) for ``plan``.

    ``init``: let the engine run an init as pid 1 (for images without an init entrypoint).
    ``engine``: ``podman`` or ``docker`` (they differ in how a tmpfs becomes the user's).
    ``seccomp``: the ``seccomp=`` security option (``vre.backends.seccomp``: no user namespaces).
    ``gate_dir``: bound read-only at /run/vre/gate; the command waits for ``open`` in it (the
    hub makes it once hostview marked the datasets) before it runs anything else.
    ``groups``: supplementary groups (default: the sessions group, which reaches the hub's socket;
    the job engine's schedulers and workers get none, as in the sandbox).
    """
    binds = []

    def bind(source, target: str, readonly: bool) -> None:
        if ":" in str(source) or ":" in target:
            raise DockerBackendError(f"cannot bind {source} at {target}: container binds cannot name paths "
                                     "with ':'; rename the directory")
        binds.append(f"{source}:{target}:{'ro' if readonly else 'rw'}")

    for m in plan.mounts:  # every mount, the runtime ones (manifest, identity, sockets, spool) included
        bind(m.source, m.target, m.readonly)
    for path in extra_ro_paths:
        bind(path, path, True)
    if gate_dir is not None:
        bind(gate_dir, INNER_GATE, True)

    # the session's own /tmp: Podman chowns it to the container's user ("U"; it ignores "mode"),
    # Docker honours the sticky, world-writable mode
    owner = "U" if engine == "podman" else "mode=1777"
    gpu_host, gpu_env = gpu_config(tuple(gpu_devices), list(gpu_nodes), gpu_mode)
    mem = f"{plan.mem_mb}m"
    host = dict(
        binds=binds,
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,{owner},size={tmp_size}", "/var/tmp": f"rw,nosuid,nodev,{owner},size=64m",
               "/run": "rw,nosuid,nodev,noexec,size=16m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges", *([seccomp] if seccomp else [])],
        group_add=[str(g) for g in ((settings.sessions_gid,) if groups is None else groups)],
        init=init,
        ipc_mode="private",
        network_mode=plan.network,
        sysctls=dict(SYSCTLS),
        mem_limit=mem,
        memswap_limit=mem,  # no escaping the limit into swap
        cpu_period=CFS_PERIOD_US,
        cpu_quota=max(1000, int(plan.cpu * CFS_PERIOD_US)),
        pids_limit=pids_limit,
        auto_remove=False,
        **gpu_host,
    )
    # umask 002: files in the shared workspace stay writable for the project's group
    script = f'umask {umask:04o} && exec "$@"'
    if gate_dir is not None:  # vre-gate: nothing runs before the dataset mounts are marked
        script = (f'n=0; while [ ! -e {INNER_GATE}/open ]; do n=$((n+1)); if [ $n -gt {GATE_WAIT_S * 20} ]; '
                  'then echo "vre-gate: dataset reads cannot be recorded; not starting" >&2; exit 70; fi; '
                  f'sleep 0.05; done; {script}')
    wrapped = ["/bin/sh", "-c", script, "vre-session", *command]
    create = dict(
        image=image,
        name=name,
        command=wrapped,
        user=f"{plan.uid}:{plan.gid}",
        working_dir=HOME,
        hostname=plan.project,
        environment={**env, **gpu_env},
        labels={**plan.labels, "vre.instance": settings.instance},
        stop_signal="SIGTERM",
    )
    return create, host


def engine_of(client: docker.APIClient) -> str:
    """``podman`` or ``docker``: which engine answers at the client's URL."""
    names = " ".join(c.get("Name", "") for c in client.version().get("Components") or [])
    return "podman" if "podman" in names.lower() else "docker"


def ensure_island(client: docker.APIClient, settings: Settings, plan: SessionPlan, *, firewall: bool = True,
                  log=None) -> None:
    """The island of ``plan`` (its project's or held pool's internal network), created if missing,
    with the host side closed (``log``: where to warn that the rule of an existing network had
    to be put back). The hub (sessions) and the job engine (schedulers, workers) both call it:
    whichever comes second finds the network made by the first."""
    log_restored = log
    try:
        net = client.inspect_network(plan.network)
    except NotFound:
        log_restored = None  # a new network has no rule yet: nothing was flushed
        logging.getLogger("vre").info("Creating internal network %s for project %s", plan.network, plan.project)
        try:
            client.create_network(**network_config(settings, plan))
        except APIError as e:
            if e.status_code != 409:  # 409: the other process created it just now
                raise
        net = client.inspect_network(plan.network)
    labels = net.get("Labels") or {}
    if not net.get("Internal") or labels.get("vre.instance") != settings.instance:
        raise DockerBackendError(
            f"a network named {plan.network} exists but is not this VRE's internal project network; "
            f"remove it (`podman network rm {plan.network}`) or choose another instance name")
    if firewall:
        close_host_side(bridge_name(plan.network), log_restored)


def close_host_side(bridge: str, log=None) -> None:
    """Reject everything a project network's containers send to the host's side of ``bridge``
    (IPv4 and IPv6); ``log``: warn when a rule had to be put back."""
    for tool in ("iptables", "ip6tables"):
        rule = ["INPUT", "-i", bridge, "-j", "REJECT"]
        if _run(tool, "-w", "-C", *rule)[0] == 0:
            continue
        if log is not None:
            log.warning("Firewall rule for %s was missing (%s); putting it back", bridge, tool)
        code, out = _run(tool, "-w", "-I", *rule)
        if code:
            raise DockerBackendError(f"could not close the host side of {bridge} ({tool}: {out}); sessions "
                                     "would reach the host's services. Install iptables, or set "
                                     "c.VREDockerSpawner.host_firewall = False where the host firewall does this")


def release_island(client: docker.APIClient, settings: Settings, network: str, *, firewall: bool = True,
                   log=None) -> bool:
    """Remove ``network`` (and its firewall rule) when no container is left on it; True if removed."""
    with island_lock(settings, network):
        return _release_island(client, network, firewall, log or logging.getLogger("vre"))


def _release_island(client: docker.APIClient, network: str, firewall: bool, log) -> bool:
    try:
        if client.containers(all=True, filters={"network": network}):
            return False
        client.remove_network(network)
    except NotFound:
        pass
    except APIError as e:
        log.warning("Could not release network %s: %s", network, e)
        return False
    if firewall:
        _drop_host_rules(bridge_name(network))
    return True


def _drop_host_rules(bridge: str) -> None:
    """Remove the rules ``close_host_side`` put in for ``bridge`` (its network is gone)."""
    for tool in ("iptables", "ip6tables"):
        while _run(tool, "-w", "-D", "INPUT", "-i", bridge, "-j", "REJECT")[0] == 0:
            pass


def _run(*argv: str) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return 127, f"{argv[0]} is not installed"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


class VREDockerSpawner(PlanSpawner, DockerSpawner):
    """Runs each (user, project) session in a container on its project's internal network."""

    start_noun = "container"

    tmp_size = Unicode("2g", config=True, help="Size of the session's /tmp (memory, counted in its limit).")
    host_firewall = Bool(
        True, config=True,
        help="Reject, with a host firewall rule (iptables and ip6tables), everything a project network's "
             "containers send to the host's side of their bridge (the gateway address, the engine's DNS). "
             "Switch off only where the host's own firewall already does so.",
    )
    gpu_mode = CaselessStrEnum(
        ["devices", "device_requests"], "devices", config=True,
        help="How leased GPUs reach a container: device nodes (any engine; the image brings the user-space "
             "driver) or Docker's device_requests (the NVIDIA container toolkit).",
    )
    remove = Bool(True, config=True,
                  help="Remove a session's container when it stops (its state lives in home and workspace).")
    client_kwargs = Dict(config=True,
                         help="Extra arguments of docker.APIClient (default: base_url from settings.docker_url).")

    @default("client_kwargs")
    def _client_kwargs_default(self):
        return {"base_url": self.settings.docker_url}

    @default("image")
    def _image_default(self):
        return self.settings.notebook_image

    def _object_name_default(self):
        # <instance>-<user>-<project>: also what the engine's `ps` shows
        return f"{self.settings.instance}-{self.user.name}-{self.name}"

    def _launched(self) -> bool:
        return bool(self.object_id)

    def _identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return identity_files(plan, self.settings.sessions_gid)

    # -- start ----------------------------------------------------------------------------
    def _image_for(self, plan: SessionPlan) -> str:
        if plan.gpus and self.settings.notebook_gpu_image:
            return self.settings.notebook_gpu_image
        return self.image

    async def _launch(self, plan: SessionPlan) -> None:
        image = self._image_for(plan)
        try:
            image_info = await self.docker("inspect_image", image)
        except NotFound:
            raise DockerBackendError(f"the session image {image} is not on this host; an admin builds it "
                                     "with `vre images build`") from None
        self._progress(30, f"Joining the project's network island (internal network {plan.network}: no route out)")
        await self._remove_container(self.object_name)  # a leftover of a crashed run never lingers
        engine = await self._engine()
        gate_dir = None
        if gate.dataset_mounts(plan):
            gate_dir = plan.run_dir / "gate"
            gate_dir.mkdir()
            os.chmod(gate_dir, 0o755)  # the hub's: the session can look in, never write
        create, host = container_config(
            self.settings, plan, image=image, name=self.object_name,
            env=self._environment(plan), command=[*server_command("python"), *server_args(plan, self.args)],
            gpu_devices=self.gpu_devices, gpu_nodes=gpus.device_nodes(self.gpu_devices), gpu_mode=self.gpu_mode,
            pids_limit=self.pids_limit, tmp_size=self.tmp_size, extra_ro_paths=self.extra_ro_paths,
            umask=self.session_umask,
            # the notebook image's entrypoint is an init (tini); images without one get the engine's
            init=not (image_info.get("Config") or {}).get("Entrypoint"), engine=engine,
            seccomp=await asyncio.to_thread(seccomp.security_opt, self.settings, engine), gate_dir=gate_dir)
        create["host_config"] = self.client.create_host_config(**host)
        async with _locks.setdefault(plan.network, asyncio.Lock()):
            obj = await asyncio.to_thread(self._join_island, plan, create)
        self.object_id = obj["Id"]
        self.log.info("Created container %s (%s) for %s from %s", self.object_name, self.object_id[:12],
                      plan.session_id, image)
        self._progress(50, f"Starting the container ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
        await self.docker("start", self.object_id)
        if gate_dir is not None:
            pid = (await self.docker("inspect_container", self.object_id))["State"]["Pid"]
            await gate.mark_run(self.settings, plan, pid, self.audit_session)
            (gate_dir / "open").touch(mode=0o644)

    async def _log_tail(self, lines: int = 30) -> str:
        try:
            return (await self.docker("logs", self.object_id, tail=lines)).decode(errors="replace")
        except (APIError, OSError):
            return ""

    _engine_name: str | None = None

    async def _engine(self) -> str:
        """``podman`` or ``docker``: which engine answers at docker_url (asked once)."""
        cls = type(self)
        if cls._engine_name is None:
            cls._engine_name = await asyncio.to_thread(engine_of, self.client)
        return cls._engine_name

    # -- the project's network ----------------------------------------------------------------
    def _join_island(self, plan: SessionPlan, create: dict) -> dict:
        """The project's network made (if missing) and the container created on it, as one step
        against the job engine's removing it (``island_lock``)."""
        with island_lock(self.settings, plan.network):
            ensure_island(self.client, self.settings, plan, firewall=self.host_firewall)
            return self.client.create_container(**create)

    async def _release_island(self) -> None:
        """Remove the project's network when no container is left on it (and its firewall rule)."""
        network = self.island
        if not network:
            return
        async with _locks.setdefault(network, asyncio.Lock()):
            await asyncio.to_thread(release_island, self.client, self.settings, network, firewall=self.host_firewall,
                                    log=self.log)

    # -- liveness and removal -------------------------------------------------------------
    async def _container_state(self) -> dict | None:
        try:
            obj = await self.docker("inspect_container", self.object_id or self.object_name)
        except NotFound:
            return None
        return obj.get("State") or {}

    async def _is_running(self) -> bool | None:
        try:
            state = await self._container_state()
        except (APIError, OSError, docker.errors.DockerException) as e:
            # the engine being briefly unavailable must not stop sessions
            self.log.warning("Could not ask the engine about %s: %s; leaving it running", self._log_name, e)
            return None
        if state is None or not state.get("Running"):
            self._exit_code = (state or {}).get("ExitCode")
            return False
        return True

    async def _check_running(self) -> None:
        if self.host_firewall and self.island:
            # the rule is the host's state, not the engine's: put it back if something flushed it
            await asyncio.to_thread(close_host_side, bridge_name(self.island), self.log)

    async def _remove_container(self, ref: str, grace: float = 0) -> None:
        if not ref:
            return
        try:
            if grace:
                await self.docker("stop", ref, timeout=math.ceil(grace))
            await self.docker("remove_container", ref, force=True, v=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # 409: already being removed
                raise

    async def _remove(self, grace: float) -> None:
        try:
            await self._remove_container(self.object_id or self.object_name, grace)
        except APIError as e:
            self.log.error("Could not remove container %s: %s", self.object_name, e)
        self.object_id = ""


def remove_instance_containers(settings: Settings, client: docker.APIClient | None = None) -> int:
    """Remove every session container and project network of this installation (``vre down``)."""
    client = client or docker.APIClient(base_url=settings.docker_url, version="auto")
    removed = 0
    label = f"vre.instance={settings.instance}"
    for c in client.containers(all=True, filters={"label": label}):
        try:
            client.remove_container(c["Id"], force=True, v=True)
            removed += 1
        except NotFound:
            pass
    for net in client.networks(filters={"label": label}):
        try:
            client.remove_network(net["Id"])
        except (NotFound, APIError):
            continue
        _drop_host_rules(bridge_name(net["Name"]))
    return removed
