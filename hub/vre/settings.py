"""One settings object for the whole VRE: hub config, CLI and backends read it.

Values come from, in increasing priority: the defaults below (the embedded, secure default),
a TOML file (``/etc/vre/vre.toml`` or ``$VRE_CONFIG``), and ``VRE_<NAME>`` environment variables.
The embedded default needs no file at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

DEFAULT_CONFIG_FILE = Path("/etc/vre/vre.toml")


class SettingsError(ValueError):
    """A setting has a value the VRE cannot use; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    #: Where the VRE keeps its databases, secrets, homes, workspaces and demo data.
    state_dir: Path = Path("/var/lib/vre")
    #: Unix sockets (hub API, session servers). Keep it short and lowercase: socket paths are
    #: limited to 107 bytes and aiohttp lowercases the socket "host".
    run_dir: Path = Path("/run/vre")
    #: SQLAlchemy URL of the VRE database (projects, datasets, accounts).
    #: Empty: SQLite in ``state_dir``. Production: ``postgresql+psycopg://...``.
    db_url: str = ""
    #: SQLAlchemy URL of JupyterHub's own database. Empty: SQLite in ``state_dir``.
    hub_db_url: str = ""
    #: Public address of the hub (the proxy). The default listens on loopback only.
    bind_url: str = "http://127.0.0.1:8000"
    #: The address people use to reach the VRE, when it is not ``bind_url`` (behind an Ingress or
    #: a reverse proxy, e.g. ``https://vre.hospital.example``): an OpenID Connect provider sends
    #: them back there after login. Empty: ``bind_url``.
    public_url: str = ""
    #: Address of configurable-http-proxy's REST API (loopback only).
    proxy_api_url: str = "http://127.0.0.1:8001"
    #: Where configurable-http-proxy listens behind the access layer (loopback). Empty: a free
    #: loopback port chosen each time the proxy starts.
    proxy_internal_url: str = ""
    #: Uid (and gid) of the access layer, the process on ``bind_url`` that authenticates every
    #: request to a session and enforces downloads, egress and cell audit. Not a session uid.
    access_uid: int = 199999
    #: Name of this installation on the host: prefixes its cgroups (``<instance>/<session>``) and
    #: project islands (``<instance>-<project>``), so two hubs on one host never touch each other's.
    instance: str = "vre"
    #: Session backend: ``sandbox`` (bubblewrap, the embedded default), ``docker`` (containers
    #: through Docker or Podman's Docker-compatible API; see the docker block below) or
    #: ``kubernetes`` (a pod per session, a namespace per project; see the kubernetes block below).
    backend: str = "sandbox"
    # --- docker backend -------------------------------------------------------------------
    #: API of the container engine for ``backend = "docker"``. The default is Podman's
    #: Docker-compatible service as ``scripts/podman-setup`` starts it (Debian's podman, rootful);
    #: for Docker use ``unix:///var/run/docker.sock``. The engine must run on this host: sessions
    #: bind host directories (datasets, homes, the hub's and the session's sockets).
    docker_url: str = "unix:///run/podman/podman.sock"
    #: Image of session containers (``images/notebook``): JupyterLab, the VRE extensions, kernels.
    notebook_image: str = "localhost/vre-notebook:latest"
    #: Image for profiles with GPUs; empty: ``notebook_image``.
    notebook_gpu_image: str = ""
    # --- kubernetes backend ---------------------------------------------------------------
    #: Kubeconfig file of the cluster whose sessions the hub runs for ``backend = "kubernetes"``;
    #: empty: the hub runs in that cluster and uses its pod's service account.
    k8s_kubeconfig: str = ""
    #: Namespace of the hub and the access layer (the chart's release). Each project gets a
    #: namespace of its own, ``<instance>-<project>``; its sessions accept connections only from
    #: this namespace's hub and access-layer pods, and reach only the hub's API there.
    k8s_hub_namespace: str = "vre"
    #: Port of the hub's API that sessions reach (the hub pod's ``hub_bind_url`` port).
    k8s_hub_port: int = 8081
    #: Port on the hub's pod where the VRE service answers sessions (audit ingest, jobs and airlock
    #: APIs); on the other backends that is a unix socket beside the hub's.
    k8s_service_port: int = 8082
    #: Port on the hub's pod where the first container of a session's or a batch worker's pod
    #: fetches its datasets' catalogue files (``k8s_storage = "pvc"``), with a ticket of its start;
    #: nothing else is served there, so batch pods, which may reach it, reach no API.
    k8s_catalogue_port: int = 8083
    #: Service in ``k8s_hub_namespace`` whose cluster IP the project's pods reach the hub's pods
    #: at (sessions: the hub's API and the VRE service; catalogue fetchers: the catalogue port).
    #: The chart sets it to its hub Service.
    k8s_hub_service: str = "hub"
    #: Images a session pod may run, comma-separated; empty: exactly ``notebook_image`` and
    #: ``notebook_gpu_image``. Anything else is refused before a pod is created.
    k8s_image_allowlist: str = ""
    #: Volume source of dataset mounts (always read-only): ``hostPath`` (the dataset's registered
    #: path on the node: single-node clusters), ``nfs`` (that path exported by ``k8s_nfs_server``)
    #: or ``pvc`` (a ``ReadOnlyMany`` claim ``dataset-<slug>`` in the project's namespace). Under
    #: ``nfs`` and ``pvc`` the hub cannot read a dataset, so a Job in the namespace
    #: ``<instance>-0catalog`` indexes it when it is registered (a claim dataset without a path:
    #: its claim ``dataset-<slug>`` must be in that namespace too) or re-indexed.
    k8s_dataset_volume: str = "hostPath"
    #: NFS server that exports the datasets (their registered paths) for ``k8s_dataset_volume = "nfs"``.
    k8s_nfs_server: str = ""
    #: Volume source of homes and workspaces: ``hostPath`` (their paths under ``state_dir`` on the
    #: node: single-node clusters) or ``pvc`` (per project a ``ReadWriteMany`` claim ``workspace``,
    #: per member a claim ``home-<user>``, for the batch pools ``worker-home``, ``held-home`` and
    #: ``held``, of ``k8s_storage_class``). Under ``pvc`` the hub reads a member's files (exports,
    #: job logs and outputs) through a claims reader pod (``vre.claims``: it cannot mount the
    #: claims), and a batch worker makes its job's folder itself.
    k8s_storage: str = "hostPath"
    #: StorageClass of the claims the hub creates for ``k8s_storage = "pvc"``; empty: the cluster's default.
    k8s_storage_class: str = ""
    #: Where ``state_dir`` is on the node, when the hub runs in a pod whose state volume is a
    #: hostPath (single-node clusters): the hostPath volumes of sessions (``k8s_storage`` and
    #: ``k8s_dataset_volume`` = ``hostPath``: homes, workspaces, catalogue records, demo datasets)
    #: name that path; empty: the hub runs on the node and its paths are the node's.
    k8s_node_state_dir: str = ""
    #: Requested size of each member's home claim and each batch pool's (``k8s_storage = "pvc"``), a
    #: Kubernetes quantity.
    k8s_home_size: str = "10Gi"
    #: Requested size of each project's workspace claim and its held jobs' (``k8s_storage = "pvc"``).
    k8s_workspace_size: str = "50Gi"
    #: Node labels a GPU session must land on (``nodeSelector``), e.g. ``{"nvidia.com/gpu.present": "true"}``.
    k8s_gpu_node_selector: dict = field(default_factory=dict, hash=False)
    #: Dataset reads of pods are recorded by the per-node observer (``python -m vre.hostview.node``,
    #: the chart's DaemonSet ``<release>-observer``): a pod with datasets waits at a gate until the
    #: observer on its node has marked its dataset mounts, and fails after ``k8s_gate_seconds``
    #: if none does. The chart sets this when it deploys the observer (``observer.enabled``).
    k8s_read_observer: bool = False
    #: The observers' service account in ``k8s_hub_namespace``. An observer posts its records
    #: with a token the kubelet issues to its pod (audience ``vre-observer``); the hub asks the
    #: API server whose it is (TokenReview) and stores the records as the node that token's pod
    #: runs on, whatever the post says. Empty: no observer may post.
    k8s_observer_service_account: str = ""
    #: How long a pod with datasets waits for the observer before it exits with the reason.
    k8s_gate_seconds: int = 60
    #: Start pods with datasets although nothing outside them records which dataset files they
    #: read (no ``k8s_read_observer``). Off by default, so such a start is refused with this
    #: reason; when on, the hub logs a warning at start and every ``session.start`` record says
    #: ``reads_observed: false``.
    k8s_unobserved_reads: bool = False
    #: How batch jobs run on Kubernetes: ``dask`` (each project's Dask scheduler and worker pods,
    #: which keep a worker warm for the project's next job) or ``jobs``: notebook, script and
    #: function jobs (they need no Dask) each run as a Kubernetes Job, which a cluster's batch
    #: scheduler can queue (``k8s_kueue_queue``); cluster jobs (a notebook's Dask workers) stay
    #: on the project's Dask pool. Under ``jobs`` with claims, a job's inputs travel in a Secret:
    #: a function's payload and a held job's code may weigh at most 600 KiB.
    k8s_job_runner: str = "dask"
    #: Kueue's LocalQueue that jobs run as Kubernetes Jobs (``k8s_job_runner = "jobs"``) are
    #: queued in (each project's namespace needs one of that name): their Jobs are created
    #: suspended with the label ``kueue.x-k8s.io/queue-name``, and Kueue starts them when the
    #: cluster's queue admits them. The project's own quota is applied first, as ever. Empty:
    #: Jobs start at once.
    k8s_kueue_queue: str = ""
    #: Kueue's ClusterQueue for the LocalQueue ``k8s_kueue_queue``: the hub makes that LocalQueue,
    #: pointing at this ClusterQueue, in each namespace where it creates Jobs (projects' namespaces
    #: come and go with projects; an existing LocalQueue is kept as it is). Empty: the operator
    #: makes the LocalQueues.
    k8s_kueue_cluster_queue: str = ""
    #: Python environment that sessions run from; bound read-only into every sandbox.
    session_env: Path = field(default=Path(sys.prefix), metadata={"shown": "the hub's own (`sys.prefix`)"})
    #: Host uids for session users are ``uid_base + account id``; project gids ``gid_base + project id``.
    uid_base: int = 200000
    gid_base: int = 300000
    #: Group that may connect to the hub's API socket (all session uids are in it).
    sessions_gid: int = 299999
    #: Failed logins before an account is locked, and for how long (seconds).
    lockout_threshold: int = 5
    lockout_seconds: int = 300
    #: Roles whose local logins need a second factor (an authenticator app's code, TOTP; set up
    #: with a QR code at the first login; recovery codes for a lost phone), space-separated among
    #: ``researcher admin auditor``. Empty: nobody is asked to set one up.
    totp_roles: str = "admin auditor"
    #: How often (seconds) the hub re-checks running sessions against membership and expiry.
    poll_interval: int = 10
    #: Session starts in progress at once; a start beyond it is answered 429 with Retry-After
    #: (the spawn page asks to try again, API clients wait and retry): a queue, instead of every
    #: start slowing down until they all time out. 0: four per CPU of this machine.
    spawn_limit: int = 0
    #: Sessions running at once (0: no limit); a start beyond it is answered 429 until one stops.
    session_limit: int = 0
    #: Folders datasets may be registered from (``vre dataset add``, the Datasets admin page),
    #: comma-separated absolute paths, e.g. ``/srv/imaging``: a folder outside them is refused.
    #: Empty: any folder sessions can read, except the VRE's own directories and the system's
    #: (``/etc``, ``/proc``, ``/sys``, ...). Set it where the admin page is reachable from a browser.
    dataset_roots: str = ""
    #: Create demo datasets, projects and accounts on first start.
    demo: bool = True
    #: Size of the demo cohorts; ``small`` is for tests.
    demo_size: str = "full"
    #: Extra log detail.
    debug: bool = False
    # --- GPUs and the batch queue -------------------------------------------------------
    #: GPUs sessions and jobs may be given: ``auto`` (every /dev/nvidiaN of this host), ``none``,
    #: or indices such as ``0,1`` (the allocator hands out exactly these).
    gpu_devices: str = "auto"
    #: Seconds an idle CPU batch worker is kept warm for the project's next job (GPU workers stop
    #: with their job, so their GPU is free at once).
    jobs_worker_idle: int = 120
    #: Longest run time (seconds) a job may ask for; a job without a limit gets ``jobs_default_runtime``.
    jobs_max_runtime: int = 7 * 24 * 3600
    jobs_default_runtime: int = 24 * 3600
    #: What happens to running jobs when their project's scheduler dies: ``requeue`` (once; a
    #: second loss fails the job) or ``fail``.
    jobs_on_scheduler_loss: str = "requeue"
    # --- login ----------------------------------------------------------------------------
    #: How people log in: ``local`` (the VRE's own accounts: passwords, lockout) or ``oidc`` (an
    #: OpenID Connect provider such as Life Science Login or Keycloak; the settings below).
    auth: str = "local"
    #: The provider's issuer URL (its ``/.well-known/openid-configuration`` is read at hub start;
    #: https, or http on loopback for tests).
    oidc_issuer: str = ""
    #: The VRE's client id at the provider; its redirect URI is ``<public_url>/hub/oauth_callback``.
    oidc_client_id: str = ""
    #: The provider's name on the login button ("Sign in with ...").
    oidc_login_service: str = "Life Science Login"
    #: File holding the client secret (root-only, mode 0600 or 0400; never the secret itself in a
    #: setting). Empty: ``state_dir/secrets/oidc_client_secret``.
    oidc_client_secret_file: str = ""
    #: Scopes asked for, separated by spaces (``openid`` is required).
    oidc_scopes: str = "openid profile email"
    #: Claim whose value becomes the VRE user name (lowercased; must be a valid VRE name: 1-32
    #: lowercase letters, digits, '-' or '_', starting with a letter). The account is bound to the
    #: provider's ``sub`` at first login: another person later given the same name is refused.
    oidc_username_claim: str = "preferred_username"
    #: Claim listing the user's groups (from the userinfo answer or the ID token). A plain list of
    #: names (``groups``), or ``eduperson_entitlement`` (Life Science Login): then only URNs that
    #: start with ``oidc_entitlement_namespace`` count, and the group's name is the rest up to
    #: ``:role=`` or ``#`` (AARC-G002): ``urn:geant:lifescience-ri.eu:group:eucaim:vre-admins#aai...``
    #: is ``eucaim:vre-admins``; entries with a role other than ``member`` are ignored.
    oidc_groups_claim: str = "groups"
    oidc_entitlement_namespace: str = "urn:geant:lifescience-ri.eu:group:"
    #: Groups that make a VRE admin, auditor or output checker (empty: nobody gets that role from the
    #: provider). Decided again at every login: a group removed at the provider removes the role.
    #: Admin and auditor together are refused (separation of duties).
    oidc_admin_group: str = ""
    oidc_auditor_group: str = ""
    oidc_checker_group: str = ""
    #: Group name prefix that means project membership: ``<prefix><project>`` makes the user a
    #: member of that project at login, and its absence removes them. Empty: memberships are
    #: managed with the ``vre`` CLI only.
    oidc_project_group_prefix: str = ""
    #: A group the user must be in to log in at all (empty: any account the provider vouches for).
    oidc_required_group: str = ""
    #: Refuse logins whose ID token does not show multi-factor authentication: its ``acr`` is one
    #: of ``oidc_mfa_acr`` or its ``amr`` holds one of ``oidc_mfa_amr`` (both space-separated).
    oidc_require_mfa: bool = False
    oidc_mfa_acr: str = "https://refeds.org/profile/mfa"
    oidc_mfa_amr: str = "mfa"
    # --- JupyterHub itself ----------------------------------------------------------------
    #: JupyterHub traits applied after the VRE's own configuration, as ``{Class: {trait: value}}``
    #: (in vre.toml a ``[jupyterhub.Class]`` table per class; in the environment, JSON merged over
    #: the file's per class). Traits the VRE's security rests on are refused (``PROTECTED_TRAITS``).
    jupyterhub: dict = field(default_factory=dict, hash=False)
    #: Where these values came from (for logs); secrets never live in settings.
    _source: str = field(default="defaults", compare=False, repr=False)

    # --- derived paths -------------------------------------------------------------------
    @property
    def vre_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / 'vre.sqlite'}"

    @property
    def jupyterhub_db_url(self) -> str:
        return self.hub_db_url or f"sqlite:///{self.state_dir / 'jupyterhub.sqlite'}"

    @property
    def public_base(self) -> str:
        """Where people reach the hub, without a trailing slash (``public_url``, else ``bind_url``)."""
        return (self.public_url or self.bind_url).rstrip("/")

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def oidc_client_secret_path(self) -> Path:
        return Path(self.oidc_client_secret_file) if self.oidc_client_secret_file else \
            self.secrets_dir / "oidc_client_secret"

    @property
    def catalog_dir(self) -> Path:
        """Per-dataset DICOM indexes and catalogue records."""
        return self.state_dir / "catalog"

    @property
    def projects_dir(self) -> Path:
        """Per-project workspace and member homes."""
        return self.state_dir / "projects"

    @property
    def hub_socket_dir(self) -> Path:
        return self.run_dir / "hub"

    @property
    def hub_local_url(self) -> str:
        """Where the processes beside the hub (its services, the access layer) reach its API: its
        unix socket, or loopback on ``k8s_hub_port`` where sessions are pods (the hub listens on TCP)."""
        if self.backend == "kubernetes":
            return f"http://127.0.0.1:{self.k8s_hub_port}"
        return "http+unix://" + quote(str(self.hub_socket_dir / "hub.sock"), safe="")

    @property
    def sessions_run_dir(self) -> Path:
        return self.run_dir / "sessions"

    @property
    def chp_command(self) -> list[str]:
        """configurable-http-proxy, with the VRE's keep-alive shim for unix-socket targets
        (``proxy_keepalive.mjs``: without it the proxy answers some requests 503 EPIPE)."""
        shim = Path(__file__).with_name("proxy_keepalive.mjs")
        chp = self.session_env / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
        program = str(chp) if chp.exists() else shutil.which("configurable-http-proxy") or "configurable-http-proxy"
        return [shutil.which("node") or "node", "--import", str(shim), program]

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw, kind: str):
    try:
        if kind in ("Path", Path):
            return Path(str(raw)).expanduser()
        if kind in ("int", int):
            return int(raw)
        if kind in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in ("dict", dict):
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise SettingsError(f"setting {name!r}: not valid JSON ({e}); give an object such as "
                                        '\'{"Spawner": {"start_timeout": 300}}\'') from None
            if not isinstance(raw, dict):
                raise ValueError(raw)
            return raw
        return str(raw)
    except SettingsError:
        raise
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name!r}: cannot read {raw!r} as {kind}") from None


def load(config_file: str | os.PathLike | None = None, environ: dict | None = None) -> Settings:
    """Build the Settings from defaults, the config file and ``VRE_*`` environment variables."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f.type for f in dataclasses.fields(Settings) if not f.name.startswith("_")}
    values: dict = {}
    sources = []

    path = Path(config_file or environ.get("VRE_CONFIG") or DEFAULT_CONFIG_FILE)
    if config_file or environ.get("VRE_CONFIG") or path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist (set by VRE_CONFIG)") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise SettingsError(
                f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        values.update({k: _coerce(k, v, fields[k]) for k, v in data.items()})
        sources.append(str(path))

    for name, kind in fields.items():
        env_name = f"VRE_{name.upper()}"
        if env_name in environ:
            value = _coerce(env_name, environ[env_name], kind)
            if kind == "dict" and name in values:  # merged over the file's, class by class
                value = {**values[name], **{k: {**values[name].get(k, {}), **v} if isinstance(v, dict) else v
                                            for k, v in value.items()}}
            values[name] = value
            sources.append(env_name)

    settings = Settings(**values, _source=", ".join(sources) or "defaults")
    _validate(settings)
    return settings


#: JupyterHub traits the VRE's security rests on: refused in the ``jupyterhub`` setting. Per class
#: (``JupyterHub``, ``ConfigurableHTTPProxy``), and for any class (spawners, authenticators).
PROTECTED_TRAITS = {
    "JupyterHub": {"spawner_class", "authenticator_class", "proxy_class", "bind_url", "hub_bind_url",
                   "hub_connect_url", "hub_socket_mode", "db_url", "cookie_secret", "cookie_secret_file",
                   "services", "load_roles", "custom_scopes", "extra_handlers", "tornado_settings",
                   "allow_named_servers", "default_server_name", "implicit_spawn_seconds", "pid_file"},
    "ConfigurableHTTPProxy": {"command", "auth_token", "api_url", "should_start", "pid_file"},
    "*": {"env_keep", "disable_user_config", "cmd", "args", "environment", "hub_connect_url",
          "apply_user_options", "options_form", "options_from_form", "pre_spawn_hook", "settings",
          "allow_all", "any_allow_config", "admin_users", "allowed_users", "image", "client_kwargs",
          "extra_create_kwargs", "extra_host_config", "client_secret", "volumes", "read_only_volumes", "network_name",
          "use_internal_ip", "remove"},
}


#: Traits that became VRE settings (the job engine needs them too), and those settings.
MOVED_TRAITS = {"hub_service": "k8s_hub_service"}


def _validate_jupyterhub(table: dict) -> None:
    for cls, traits in table.items():
        if not isinstance(cls, str) or not cls.isidentifier() or not cls[:1].isupper():
            raise SettingsError(f"jupyterhub: {cls!r} is not a configurable class name (e.g. Spawner, "
                                "SandboxSpawner, JupyterHub)")
        if not isinstance(traits, dict):
            raise SettingsError(f"jupyterhub.{cls}: give a table of traits ([jupyterhub.{cls}] with "
                                "trait = value lines), not {traits!r}")
        for trait in traits:
            if not isinstance(trait, str) or not trait.isidentifier():
                raise SettingsError(f"jupyterhub.{cls}: {trait!r} is not a trait name")
            if trait in MOVED_TRAITS:
                raise SettingsError(f"jupyterhub.{cls}.{trait} is now the setting {MOVED_TRAITS[trait]}: set that "
                                    "instead")
            if trait in PROTECTED_TRAITS.get(cls, ()) or trait in PROTECTED_TRAITS["*"]:
                raise SettingsError(f"jupyterhub.{cls}.{trait} is decided by the VRE (its security rests on "
                                    "it) and cannot be set here; see the README's Configuration section")


_LOOPBACK_HTTP = re.compile(r"http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/\S*)?")


def _validate_login(s: Settings) -> None:
    unknown = sorted(set(s.totp_roles.split()) - {"researcher", "admin", "auditor"})
    if unknown:
        raise SettingsError(f"totp_roles: {', '.join(unknown)} is not a role; use any of researcher, admin, auditor "
                            "(space-separated), or leave it empty")
    if s.auth not in ("local", "oidc"):
        raise SettingsError(f"auth {s.auth!r}: use 'local' (the VRE's own accounts) or 'oidc' (an OpenID Connect "
                            "provider, configured by the oidc_* settings)")
    if s.public_url and not re.fullmatch(r"https?://[^\s/?#]+/?", s.public_url):
        raise SettingsError(f"public_url {s.public_url!r}: give the scheme and host people use, e.g. "
                            "https://vre.hospital.example (no path)")
    if s.auth != "oidc":
        return
    if not s.public_url and re.match(r"https?://(0\.0\.0\.0|\[::\])[:/]", s.bind_url + "/"):
        raise SettingsError(f"auth = 'oidc' needs public_url: bind_url {s.bind_url} is where the hub listens, not "
                            "an address a browser can be sent back to after login")
    issuer = s.oidc_issuer.strip()
    if not issuer:
        raise SettingsError("auth = 'oidc' needs oidc_issuer: the provider's issuer URL, e.g. "
                            "https://login.aai.lifescience-ri.eu/oidc/")
    if not (re.fullmatch(r"https://[^\s/]+(/\S*)?", issuer) or _LOOPBACK_HTTP.fullmatch(issuer)):
        raise SettingsError(f"oidc_issuer {issuer!r}: use an https:// URL (plain http only on loopback, for tests)")
    if not s.oidc_client_id.strip():
        raise SettingsError("auth = 'oidc' needs oidc_client_id: the client id the provider registered for this VRE")
    if "openid" not in s.oidc_scopes.split():
        raise SettingsError(f"oidc_scopes {s.oidc_scopes!r} must include 'openid' (space-separated scopes)")
    for name in ("oidc_username_claim", "oidc_groups_claim"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", getattr(s, name)):
            raise SettingsError(f"{name} {getattr(s, name)!r}: give the name of one claim, e.g. preferred_username")
    if s.oidc_groups_claim == "eduperson_entitlement" and not s.oidc_entitlement_namespace.startswith("urn:"):
        raise SettingsError(f"oidc_entitlement_namespace {s.oidc_entitlement_namespace!r}: give the URN prefix of "
                            "the groups that count, e.g. urn:geant:lifescience-ri.eu:group:")
    roles = {"oidc_admin_group": s.oidc_admin_group, "oidc_auditor_group": s.oidc_auditor_group}
    if roles["oidc_admin_group"] and roles["oidc_admin_group"] == roles["oidc_auditor_group"]:
        raise SettingsError("oidc_admin_group and oidc_auditor_group are the same group: admins and auditors must "
                            "be different people (separation of duties)")
    if s.oidc_require_mfa and not (s.oidc_mfa_acr.split() or s.oidc_mfa_amr.split()):
        raise SettingsError("oidc_require_mfa is on but oidc_mfa_acr and oidc_mfa_amr are both empty: name the acr "
                            "or amr values that show multi-factor login")


def _validate(s: Settings) -> None:
    _validate_jupyterhub(s.jupyterhub)
    if s.backend not in BACKENDS:
        raise SettingsError(f"backend {s.backend!r} is not available; use 'sandbox' (bubblewrap, the default), "
                            "'docker' (Docker or Podman, at docker_url) or 'kubernetes' (pods; the k8s_* settings)")
    if not re.fullmatch(r"(unix|tcp|ssh|https?)://\S+", s.docker_url):
        raise SettingsError(f"docker_url {s.docker_url!r}: use unix:///path/to/engine.sock "
                            "(or tcp://host:port for an engine on this host)")
    if s.backend == "docker" and not s.notebook_image.strip():
        raise SettingsError("notebook_image must name the session image when backend = 'docker'")
    _validate_kubernetes(s)
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", s.instance):
        raise SettingsError(f"instance {s.instance!r}: use 1-20 lowercase letters, digits and '-'")
    if s.demo_size not in ("full", "small"):
        raise SettingsError(f"demo_size must be 'full' or 'small', not {s.demo_size!r}")
    if str(s.run_dir) != str(s.run_dir).lower():
        raise SettingsError(f"run_dir {s.run_dir} must be lowercase (socket hosts are lowercased)")
    if len(str(s.sessions_run_dir)) > 60:
        raise SettingsError(f"run_dir {s.run_dir} is too long for unix socket paths; keep it short")
    if s.spawn_limit < 0 or s.session_limit < 0:
        raise SettingsError("spawn_limit and session_limit must be 0 (spawn_limit: four per CPU; session_limit: "
                            "none) or a positive number")
    if s.lockout_threshold < 1 or s.lockout_seconds < 1:
        raise SettingsError("lockout_threshold and lockout_seconds must be positive")
    for name in ("uid_base", "gid_base", "sessions_gid", "access_uid"):
        if getattr(s, name) < 1000:
            raise SettingsError(f"{name} must be >= 1000 (never a system account)")
    if (s.uid_base <= s.access_uid < s.uid_base + 100_000 or s.gid_base <= s.access_uid < s.gid_base + 100_000
            or s.access_uid == s.sessions_gid):
        raise SettingsError(f"access_uid {s.access_uid} lies among the uids and gids of accounts, projects or "
                            "sessions (uid_base, gid_base + 100000; sessions_gid): pick one no account can get")
    if s.proxy_internal_url and not re.fullmatch(r"http://127\.0\.0\.1:\d+", s.proxy_internal_url):
        raise SettingsError(f"proxy_internal_url {s.proxy_internal_url!r}: use http://127.0.0.1:<port> (the proxy "
                            "behind the access layer listens on loopback only)")
    if not re.fullmatch(r"auto|none|\d+(,\d+)*", s.gpu_devices.replace(" ", "")):
        raise SettingsError(f"gpu_devices {s.gpu_devices!r}: use 'auto', 'none' or GPU indices such as '0,1'")
    _validate_login(s)
    if s.jobs_on_scheduler_loss not in ("requeue", "fail"):
        raise SettingsError(f"jobs_on_scheduler_loss must be 'requeue' or 'fail', not {s.jobs_on_scheduler_loss!r}")
    if not 60 <= s.jobs_default_runtime <= s.jobs_max_runtime:
        raise SettingsError("jobs_default_runtime must be at least 60 s and at most jobs_max_runtime")
    for root in dataset_roots(s):
        if not root.is_absolute() or root == Path("/"):
            raise SettingsError(f"dataset_roots: {str(root)!r} is not a folder datasets can be limited to: give "
                                "absolute paths such as /srv/imaging, comma-separated")


BACKENDS = ("sandbox", "docker", "kubernetes")
K8S_DATASET_VOLUMES = ("hostPath", "nfs", "pvc")
K8S_STORAGE = ("hostPath", "pvc")
K8S_JOB_RUNNERS = ("dask", "jobs")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]*[a-z0-9]", re.I)


def dataset_roots(s: Settings) -> tuple[Path, ...]:
    """The folders datasets may come from (``dataset_roots``); empty: no such limit."""
    return tuple(Path(r.strip()) for r in s.dataset_roots.split(",") if r.strip())


def k8s_reads_allowed(s: Settings) -> bool:
    """Whether pods may mount datasets: the per-node observer records their reads, or the
    deployment accepted unobserved reads explicitly."""
    return s.k8s_read_observer or s.k8s_unobserved_reads


def files_on_host(s: Settings) -> bool:
    """Whether the hub reaches homes and workspaces by their paths on its own machine: every
    backend but Kubernetes with claims (``k8s_storage = "pvc"``), whose files only pods of the
    project's namespace can mount. The job service needs those paths; the airlock asks a claims
    reader instead (``vre.claims``)."""
    return not (s.backend == "kubernetes" and s.k8s_storage != "hostPath")


def k8s_images(s: Settings) -> tuple[str, ...]:
    """The images session pods may run (``k8s_image_allowlist``, or the session images)."""
    listed = [i.strip() for i in s.k8s_image_allowlist.split(",") if i.strip()]
    return tuple(listed or [i for i in (s.notebook_image, s.notebook_gpu_image) if i.strip()])


def _validate_kubernetes(s: Settings) -> None:
    """The k8s_* settings are checked whatever the backend (a typo should not wait for a switch)."""
    if s.k8s_kubeconfig and not s.k8s_kubeconfig.startswith("/"):
        raise SettingsError(f"k8s_kubeconfig {s.k8s_kubeconfig!r}: give an absolute path, or leave it empty "
                            "when the hub runs in the cluster (its service account)")
    if not _DNS_LABEL.fullmatch(s.k8s_hub_namespace):
        raise SettingsError(f"k8s_hub_namespace {s.k8s_hub_namespace!r} is not a namespace name: use up to 63 "
                            "lowercase letters, digits and '-', starting and ending with a letter or digit")
    if not _DNS_LABEL.fullmatch(s.k8s_hub_service):
        raise SettingsError(f"k8s_hub_service {s.k8s_hub_service!r} is not a Service name: lowercase letters, "
                            "digits and '-' (the chart's <release>-hub)")
    for name in ("k8s_hub_port", "k8s_service_port", "k8s_catalogue_port"):
        if not 1 <= getattr(s, name) <= 65535:
            raise SettingsError(f"{name} {getattr(s, name)} is not a TCP port (1-65535)")
    if s.k8s_observer_service_account and not _DNS_LABEL.fullmatch(s.k8s_observer_service_account):
        raise SettingsError(f"k8s_observer_service_account {s.k8s_observer_service_account!r} is not a service "
                            "account name: lowercase letters, digits and '-' (the chart's <release>-observer)")
    if len({s.k8s_hub_port, s.k8s_service_port, s.k8s_catalogue_port}) < 3:
        raise SettingsError("k8s_hub_port, k8s_service_port and k8s_catalogue_port must differ (the hub's API, the "
                            "VRE service and its catalogue files each have a port of their own)")
    if not 5 <= s.k8s_gate_seconds <= 3600:
        raise SettingsError(f"k8s_gate_seconds {s.k8s_gate_seconds}: give 5 to 3600 seconds (how long a pod with "
                            "datasets waits for the observer on its node)")
    for image in k8s_images(s):
        if not _IMAGE.fullmatch(image):
            raise SettingsError(f"k8s_image_allowlist: {image!r} is not an image reference "
                                "(e.g. registry.example.org/vre-notebook:1.0, comma-separated)")
    if s.k8s_dataset_volume not in K8S_DATASET_VOLUMES:
        raise SettingsError(f"k8s_dataset_volume {s.k8s_dataset_volume!r}: use one of "
                            f"{', '.join(K8S_DATASET_VOLUMES)}")
    if s.k8s_storage not in K8S_STORAGE:
        raise SettingsError(f"k8s_storage {s.k8s_storage!r}: use one of {', '.join(K8S_STORAGE)}")
    if s.k8s_dataset_volume == "nfs" and not s.k8s_nfs_server.strip():
        raise SettingsError("k8s_nfs_server must name the NFS server when k8s_dataset_volume is 'nfs'")
    if s.k8s_storage_class and not _DNS_LABEL.fullmatch(s.k8s_storage_class):
        raise SettingsError(f"k8s_storage_class {s.k8s_storage_class!r} is not a StorageClass name")
    if s.k8s_node_state_dir and not s.k8s_node_state_dir.startswith("/"):
        raise SettingsError(f"k8s_node_state_dir {s.k8s_node_state_dir!r} must be an absolute path on the node")
    for name in ("k8s_home_size", "k8s_workspace_size"):
        if not re.fullmatch(r"[1-9][0-9]*(Ki|Mi|Gi|Ti)", getattr(s, name)):
            raise SettingsError(f"{name} {getattr(s, name)!r} is not a size: write e.g. 10Gi or 500Mi")
    if s.k8s_job_runner not in K8S_JOB_RUNNERS:
        raise SettingsError(f"k8s_job_runner {s.k8s_job_runner!r}: use one of {', '.join(K8S_JOB_RUNNERS)}")
    if s.k8s_kueue_queue:
        if not _DNS_LABEL.fullmatch(s.k8s_kueue_queue):
            raise SettingsError(f"k8s_kueue_queue {s.k8s_kueue_queue!r} is not a LocalQueue name: up to 63 "
                                "lowercase letters, digits and '-', starting and ending with a letter or digit")
        if s.k8s_job_runner != "jobs":
            raise SettingsError(f"k8s_kueue_queue is set but k8s_job_runner is {s.k8s_job_runner!r}: Kueue queues "
                                "Kubernetes Jobs, so set k8s_job_runner = 'jobs' too, or clear k8s_kueue_queue")
    if s.k8s_kueue_cluster_queue:
        if not _DNS_LABEL.fullmatch(s.k8s_kueue_cluster_queue):
            raise SettingsError(f"k8s_kueue_cluster_queue {s.k8s_kueue_cluster_queue!r} is not a ClusterQueue name: "
                                "up to 63 lowercase letters, digits and '-'")
        if not s.k8s_kueue_queue:
            raise SettingsError("k8s_kueue_cluster_queue is set but k8s_kueue_queue is empty: name the LocalQueue "
                                "the hub makes for it (k8s_kueue_queue), or clear k8s_kueue_cluster_queue")
    for key, value in s.k8s_gpu_node_selector.items():
        if node_label_problem(key, value):
            raise SettingsError(f"k8s_gpu_node_selector: {node_label_problem(key, value)}")
    if s.backend == "kubernetes":
        if not k8s_images(s):
            raise SettingsError("backend = 'kubernetes' needs a session image: set notebook_image "
                                "(and list every image sessions may run in k8s_image_allowlist)")
        if s.notebook_image not in k8s_images(s):
            raise SettingsError(f"notebook_image {s.notebook_image!r} is not in k8s_image_allowlist: add it, "
                                "or sessions could never start")


def node_label_problem(key, value) -> str | None:
    """What is wrong with ``key: value`` as a Kubernetes node label in a nodeSelector, or None."""
    if not isinstance(key, str) or not re.fullmatch(r"([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?"
                                                    r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", key):
        return f"{key!r} is not a node label name (e.g. nvidia.com/gpu.present)"
    if not isinstance(value, str) or not re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?", value):
        return (f"{key} = {value!r}: a label value is a string of up to 63 letters, digits, '-', '_' and '.', "
                'e.g. {"nvidia.com/gpu.present": "true"}')
    return None


# --- documentation: the README's settings table is generated from the comments above ------------
def documented_fields() -> list[tuple[list[str], str]]:
    """([field names], documentation) from the ``#:`` comments of :class:`Settings`, in order.
    Fields right below a documented field (no comment between) share its documentation. Raises
    SettingsError naming a field that has none."""
    import inspect

    groups: list[tuple[list[str], str]] = []
    doc: list[str] = []
    grouping = False
    source = inspect.getsource(Settings).splitlines()
    body = source[next(i for i, line in enumerate(source) if line.startswith("class ")) + 1:]
    for line in body:
        text = line.strip()
        if text.startswith("#:"):
            doc.append(text[2:].strip())
            grouping = False
        elif match := re.match(r"([a-z][a-z0-9_]*)\s*:", text):
            name = match.group(1)
            if doc:
                groups.append(([name], " ".join(doc)))
                doc, grouping = [], True
            elif grouping:
                groups[-1][0].append(name)
            else:
                raise SettingsError(f"setting {name!r} has no documentation: add a '#:' comment above it")
        elif text.startswith(("@", "def ")):  # the fields are over: properties and methods follow
            break
        elif text.startswith("#"):  # a section header ends a group
            grouping = False
    return groups


def _shown_default(name: str) -> str:
    f = next(f for f in dataclasses.fields(Settings) if f.name == name)
    if "shown" in f.metadata:
        return f.metadata["shown"]
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value == "" or value == {}:
        return "(empty)"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def settings_table() -> str:
    """The Markdown table of every setting (README.md, between the settings-table markers)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for names, doc in documented_fields():
        doc = re.sub(r"``([^`]+)``", r"`\1`", doc).replace("|", "\\|")
        rows.append(f"| {', '.join(f'`{n}`' for n in names)} | {', '.join(_shown_default(n) for n in names)} | {doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m vre.settings --markdown
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m vre.settings --markdown  (prints the README's settings table)")
    print(settings_table(), end="")
