"""The VRE service process (``python -m vre.api.service``), started by the hub as the managed
service ``vre`` (see :mod:`vre.api`): the auditor page, the audit and batch-queue REST APIs and the
sessions' audit ingest and the airlock, behind the proxy at ``/services/vre/``.

It listens twice:

* on the loopback port of ``JUPYTERHUB_SERVICE_URL``: the proxy's target (all routes);
* on ``<hub_socket_dir>/vre.sock``: the sessions' way in (no network in a session; the directory
  is theirs to reach, read-only, as for the hub's socket), with the ingest, the batch queue, the
  requester's side of the airlock and the catalogue's records only. On Kubernetes that is TCP
  ``k8s_service_port``, and a third listener on ``k8s_catalogue_port`` serves pods' first
  containers their catalogue files (``vre.api.catalogue.fetch_handlers``) and nothing else.

Like the hub's other services it dies with its hub and is the only one of its instance
(``vre.services``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from ..services import die_with_hub, take_over
from ..settings import Settings, load
from . import SOCKET_NAME, routes
from .catalogue import fetch_handlers

log = logging.getLogger("vre.api.service")


def prefix() -> str:
    return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/vre/"


def make_app(settings: Settings, *, sessions_only: bool = False, catalogue_only: bool = False,
             observer_tokens=None) -> web.Application:
    """The service's application (``catalogue_only``: the catalogue listener's); ``observer_tokens``
    (``vre.api.observers.ObserverTokens``) answers whose node an observer's token speaks for
    (None: no observer may post)."""
    base = prefix()
    chosen = fetch_handlers(settings) if catalogue_only else routes(settings, sessions_only=sessions_only)
    handlers = [(url_path_join(base, pattern), *rest) for pattern, *rest in chosen]
    if not (sessions_only or catalogue_only):
        handlers.append((url_path_join(base, "oauth_callback"), HubOAuthCallbackHandler))
    # The login cookie's key: new at each start (a restarted service sends browsers through the
    # hub's OAuth again, which is silent while they are logged in to the hub).
    return web.Application(handlers, vre_settings=settings, cookie_secret=os.urandom(32),
                           vre_observer_tokens=observer_tokens)


def token_reviews(settings: Settings):
    """The reviews of observers' tokens, on Kubernetes with the observers' account configured."""
    if settings.backend != "kubernetes" or not settings.k8s_observer_service_account:
        return None
    from .observers import ObserverTokens, cluster_review

    return ObserverTokens(settings, cluster_review(settings))


def proxied_server(app: web.Application) -> HTTPServer:
    """The server on the proxy's side. Its requests come from configurable-http-proxy, which got
    them from the access layer (``vre.access.layer``); the layer puts the browser's address, as
    its TCP peer, in ``X-Real-Ip`` and drops any the browser sent, so with ``xheaders`` that
    address is ``request.remote_ip``, the ``client`` of the pages' audit records.

    ``trusted_downstream`` is deliberately not set: without ``X-Real-Ip`` tornado takes the last
    ``X-Forwarded-For`` entry (the proxy's own peer, loopback), never an entry a browser wrote,
    whereas skipping loopback entries would reach the browser's entries whenever the layer's peer
    is on loopback too (a TLS terminator on the same host)."""
    return HTTPServer(app, xheaders=True)


def socket_path(settings: Settings):
    return settings.hub_socket_dir / SOCKET_NAME


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the hub stops its services with SIGINT
        loop.add_signal_handler(sig, stop.set)
    url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:8890")
    proxied = proxied_server(make_app(settings))
    proxied.listen(url.port, url.hostname or "127.0.0.1")
    path = socket_path(settings)
    sessions = HTTPServer(make_app(settings, sessions_only=True, observer_tokens=token_reviews(settings)))
    catalogue = None
    if settings.backend == "kubernetes":
        # Session pods connect over TCP (their project's NetworkPolicy allows this port of the
        # hub's pods and nothing else); the credentials are checked as on the socket.
        sessions.listen(settings.k8s_service_port, "0.0.0.0")
        path = f"0.0.0.0:{settings.k8s_service_port}"
        # Pods' catalogue fetchers, batch pods' among them, on a port with nothing else on it;
        # what a job's code may send there is kept small (GETs with a ticket are all it serves)
        catalogue = HTTPServer(make_app(settings, catalogue_only=True), max_header_size=16 << 10,
                               max_body_size=0, idle_connection_timeout=60)
        catalogue.listen(settings.k8s_catalogue_port, "0.0.0.0")
        path += f", catalogue files at 0.0.0.0:{settings.k8s_catalogue_port}"
    else:
        # Session uids connect (as to the hub's socket): the directory (0750, root:sessions) guards it.
        sessions.add_sockets([bind_unix_socket(str(path), mode=0o666)])
    log.info("VRE service at %s (proxy) and %s (sessions)", url.geturl(), path)
    await stop.wait()
    proxied.stop()
    sessions.stop()
    if catalogue is not None:
        catalogue.stop()
    try:
        socket_path(settings).unlink()
    except FileNotFoundError:
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-service] %(message)s")
    die_with_hub()
    settings = load()
    lock = take_over(settings.run_dir / "vre-service.lock", "VRE service", log)  # noqa: F841 (held)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
