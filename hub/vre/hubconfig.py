"""Build JupyterHub's configuration from the VRE settings (``hub/jupyterhub_config.py`` calls this).

Secure defaults: the public port listens on loopback, the hub API and every session server on
unix sockets, sessions in sandboxes without network; sessions survive hub restarts.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .hostfiles import make_private, read_or_create_secret, unix_url
from .plan import INNER_HUB_SOCKET
from .settings import Settings
from .spawn_retry import SpawnRetry

TEMPLATES = Path(__file__).parent / "templates"


def configure(c, settings: Settings) -> None:
    from .access import access_service
    from .access.proxy import VREAccessProxy
    from .api import service_spec
    from .audit.events import make_log_function
    from .auth import VREAuthenticator
    from .hubpages import home_projects
    from .roles import CUSTOM_SCOPES, load_roles

    c.JupyterHub.bind_url = settings.bind_url
    on_k8s = settings.backend == "kubernetes"
    if on_k8s and settings.k8s_unobserved_reads and not settings.k8s_read_observer:
        logging.getLogger("vre").warning(
            "k8s_unobserved_reads = true: session pods mount datasets although nothing outside them records "
            "which dataset files they read (no per-node observer: k8s_read_observer is off)")
    if on_k8s:
        # Sessions are pods: the hub creates no sandbox, cgroup or network namespace on its own
        # machine, so the hub itself needs no root here (the access layer it starts still does:
        # it binds, forks its root broker and drops to access_uid). Its API listens on TCP for
        # session pods (each project's NetworkPolicy lets its pods reach only this port of the
        # hub's pods); its own services, in its pod, reach it on loopback. Sessions are given the
        # hub's cluster address by KubernetesSpawner (its hub_connect_url), never this one.
        c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{settings.k8s_hub_port}"
        c.JupyterHub.hub_connect_url = settings.hub_local_url
        # The VRE service still binds its session socket here; no pod can reach this directory.
        settings.hub_socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        if os.geteuid() != 0:
            raise SystemExit("the VRE hub must run as root: it creates sandboxes, cgroups and network namespaces")
        settings.hub_socket_dir.mkdir(parents=True, exist_ok=True)
        os.chown(settings.hub_socket_dir, 0, settings.sessions_gid)
        os.chmod(settings.hub_socket_dir, 0o750)  # only session uids (and root) may reach the socket
        c.JupyterHub.hub_bind_url = c.JupyterHub.hub_connect_url = settings.hub_local_url
        # The directory (0750, root:sessions) guards the socket (and the VRE service's, vre.sock,
        # beside it); the hub API still requires tokens.
        c.JupyterHub.hub_socket_mode = 0o666
    c.JupyterHub.db_url = settings.jupyterhub_db_url
    if not settings.hub_db_url:  # JupyterHub's own SQLite file (sessions, tokens): the hub's alone
        make_private(settings.state_dir / "jupyterhub.sqlite")
    c.JupyterHub.cookie_secret_file = str(settings.secrets_dir / "jupyterhub_cookie_secret")
    read_or_create_secret(settings.secrets_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(settings.state_dir / "jupyterhub.pid")

    # The access layer (vre.access) answers on bind_url and authenticates every request to a
    # session; configurable-http-proxy routes behind it. VREAccessProxy starts both.
    c.JupyterHub.proxy_class = VREAccessProxy
    c.VREAccessProxy.settings = settings
    c.ConfigurableHTTPProxy.command = settings.chp_command
    c.ConfigurableHTTPProxy.api_url = settings.proxy_api_url
    c.ConfigurableHTTPProxy.auth_token = read_or_create_secret(settings.secrets_dir / "proxy_auth_token")
    c.ConfigurableHTTPProxy.pid_file = str(settings.state_dir / "proxy.pid")
    # Sessions and the proxy outlive a hub restart; the hub re-attaches to both.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False

    c.Authenticator.any_allow_config = True  # the authenticator's check_allowed asks the VRE database
    if settings.auth == "oidc":  # an OpenID Connect provider (vre.oidc)
        from .oidc import configure as configure_oidc

        configure_oidc(c, settings)
    else:
        c.JupyterHub.authenticator_class = VREAuthenticator
        c.VREAuthenticator.settings = settings
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    c.JupyterHub.load_roles = load_roles()
    # the VRE's settings; in a pod also where the cluster's API is (the job engine's in-cluster config)
    vre_env = {k: v for k, v in os.environ.items() if k.startswith(("VRE_", "KUBERNETES_SERVICE_"))}
    vre_env["PATH"] = os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    vre_env["VRE_HUB_PID"] = str(os.getpid())  # its services die with this process (vre.services)
    # Managed services (the hub starts and restarts them; each dies with its hub): the audit
    # sealer seals the trail at intervals; the batch queue's engine admits, runs and follows jobs
    # (its state is in the VRE database); the VRE service serves the VRE's own pages and APIs at
    # /services/vre/ (vre.api), JupyterHub's way to add HTTP endpoints (no extra_handlers); hostview
    # (root) records dataset reads from the host: no session or worker with data starts without it
    # (run_services: no hostview beside a hub on Kubernetes).
    services = [{"name": "vre-audit-sealer", "command": [sys.executable, "-m", "vre.audit.sealer"],
                 "environment": vre_env},
                service_spec(settings, vre_env), access_service(settings)]
    services[:0] = run_services(vre_env, on_k8s)
    c.JupyterHub.services = services
    c.JupyterHub.spawner_class = spawner_class = session_spawner_class(settings)
    c[spawner_class.__name__].settings = settings

    # One named server per (user, project); the home page lists the user's projects.
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = 0
    c.JupyterHub.redirect_to_server = False
    c.JupyterHub.default_url = "/hub/home"
    c.JupyterHub.implicit_spawn_seconds = 0
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {"vre_projects": lambda user: home_projects(settings, user.name) if user else []}

    if not on_k8s:  # pods get the hub's cluster address from KubernetesSpawner
        c.Spawner.hub_connect_url = unix_url(INNER_HUB_SOCKET)
    c.Spawner.env_keep = []                 # nothing of the hub's environment leaks into sessions
    c.Spawner.disable_user_config = True    # a user's ~/.jupyter cannot switch off server policy
    c.Spawner.default_url = "/lab"
    c.Spawner.poll_interval = settings.poll_interval
    c.Spawner.start_timeout = 120
    c.JupyterHub.concurrent_spawn_limit = settings.spawn_limit or 4 * (os.cpu_count() or 1)
    c.JupyterHub.active_server_limit = settings.session_limit
    c.Spawner.http_timeout = 60
    c.JupyterHub.log_level = "DEBUG" if settings.debug else "INFO"
    # Every state-changing API request (and logout) is audited where JupyterHub logs requests.
    # Retry-After of a start refused for spawn_limit: 3-10 s while few wait, not JupyterHub's 30-60 s
    # (a queue that moves), longer for a crowd (vre.spawn_retry). JupyterHub 6 does not take
    # JupyterHub.spawn_throttle_retry_range from config (the trait is not tagged config=True:
    # setting it only logs a warning); its handlers read the setting.
    retry, audit_log = SpawnRetry(), make_log_function(settings)

    def log_function(handler) -> None:
        audit_log(handler)
        retry.saw(handler)
    c.JupyterHub.tornado_settings = {"log_function": log_function, "vre_settings": settings,
                                     "spawn_throttle_retry_range": retry}
    read_or_create_secret(settings.secrets_dir / "audit_relay_key")
    apply_operator_config(c, settings)


def run_services(vre_env: dict[str, str], on_k8s: bool) -> list[dict]:
    """The managed services beside the hub that act on runs:

    - ``vre-hostview`` (not on Kubernetes) marks dataset mounts with fanotify through
      ``/proc/<pid>/root`` of each run: a session pod's mounts are on its node, out of the hub
      pod's sight (and the hub pod must not hold CAP_SYS_ADMIN on a node). On Kubernetes, dataset
      reads are not recorded from outside the session until a per-node observer exists (a
      DaemonSet; not built).
    - ``vre-jobs``, the job engine, starts each pool's Dask scheduler and workers where the
      backend runs sessions (``jobs.engine.executor_for``): sandboxes on this machine, containers,
      or pods in the project's namespace (never in the hub's own pod).
    """
    jobs = {"name": "vre-jobs", "command": [sys.executable, "-m", "vre.jobs.engine"], "environment": vre_env}
    if on_k8s:
        return [jobs]
    return [{"name": "vre-hostview", "command": [sys.executable, "-m", "vre.hostview"], "environment": vre_env}, jobs]


def session_spawner_class(settings: Settings):
    """The spawner of ``settings.backend`` (imported only when chosen: each needs its own client)."""
    if settings.backend == "kubernetes":
        from .backends.kubernetes import KubernetesSpawner
        return KubernetesSpawner
    if settings.backend == "docker":
        from .backends.docker import VREDockerSpawner
        return VREDockerSpawner
    from .backends.sandbox import SandboxSpawner
    return SandboxSpawner


def apply_operator_config(c, settings: Settings) -> list[str]:
    """The ``jupyterhub`` setting's traits, over the VRE's own (validated by the settings: no trait
    the VRE's security rests on). Returns what was set, for the log."""
    applied = []
    for cls, traits in settings.jupyterhub.items():
        for trait, value in traits.items():
            setattr(c[cls], trait, value)
            applied.append(f"{cls}.{trait}")
            if trait == "host_firewall" and not value:
                print(f"[vre] WARNING: {cls}.host_firewall is off: project networks rely on the host's own "
                      "firewall to keep sessions from the host's services", file=sys.stderr)
    if applied:
        print(f"[vre] JupyterHub settings from the jupyterhub table: {', '.join(applied)}", file=sys.stderr)
    return applied
