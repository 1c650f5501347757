"""The access layer: enforcement of session access that the researcher cannot reach.

Every request to the hub's public address passes through one hub-side process (``python -m
vre.access``, :mod:`vre.access.layer`) before it reaches a session: it authenticates the caller
with the hub (it is the OAuth client ``service-vre-access``), applies the project's download
policy, meters and caps what goes to the browser, and records the code sent to kernels when the
project audits cells. JupyterHub's proxy class :class:`vre.access.proxy.VREAccessProxy` starts it
in front of configurable-http-proxy. docs/architecture.md ("The access layer") has the design.
"""

from __future__ import annotations

from ..hostfiles import read_or_create_secret
from .auth import CALLBACK, CLIENT_ID, SERVICE


def socket_dir(settings):
    """The layer's sockets (root-only): only the hub and the proxy connect."""
    return settings.run_dir / "access"


def internal_socket(settings):
    """Where the proxy sends session paths (its routes for sessions target the layer, never a session)."""
    return socket_dir(settings) / "internal.sock"


def control_socket(settings):
    """Where the hub tells the layer that routes changed."""
    return socket_dir(settings) / "control.sock"


def api_token_file(settings):
    return settings.secrets_dir / "access_api_token"


def access_service(settings) -> dict:
    """The layer's entry in ``c.JupyterHub.services``: an OAuth client without a URL of its own
    (the layer answers its callback itself) whose tokens may only reach the user's own servers."""
    return {"name": SERVICE, "api_token": read_or_create_secret(api_token_file(settings)),
            "oauth_client_id": CLIENT_ID, "oauth_redirect_uri": CALLBACK, "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": ["access:servers!user"]}
