"""The VRE service: the VRE's own pages and APIs, served by a hub-managed JupyterHub service named
``vre`` (``python -m vre.api.service``; JupyterHub's way to add HTTP endpoints), behind the proxy at
``/services/vre/``. hubconfig adds ``service_spec(settings)`` to ``c.JupyterHub.services``.

* ``/services/vre/audit``: the auditor page (login through the hub's OAuth).
* ``/services/vre/api/audit/{events,export,verify,timeline}``: the auditors' REST API (``vre.api.audit``).
* ``/services/vre/api/audit/events`` is shared: GET (and HEAD) is the auditors' query API, any other
  method goes to the ingest from sessions (``vre.api.ingest``). Tornado routes by path only, so
  that path's target is a small rule list that picks the handler class by method; each class stays
  as its author wrote it (the ingest authenticates relay credentials itself, the audit API uses
  JupyterHub's service auth and scopes).
* ``/services/vre/api/jobs...``: the batch queue's REST API (``vre.jobs.api``).
* ``/services/vre/api/airlock...``: the airlock's REST API (``vre.api.airlock``, docs/airlock.md).
* ``/services/vre/api/catalogue``: the catalogue's records as JSON, read only (``vre.api.catalogue``;
  the Lab's Datasets panel lists the datasets its project does not have).
* ``/services/vre/airlock[/<id>]``: the output checkers' pages; ``.../download`` links for researchers
  (``vre.api.airlock_pages``).
* ``/services/vre/catalogue`` and ``/services/vre/access-requests[/<id>/<action>]``: the catalogue
  for researchers, access requests and their decisions (``vre.api.access_pages``).
* ``/services/vre/admin/users[/<name>/<change>]``: the Users admin page, VRE admins only
  (``vre.api.admin_pages``).
* ``/services/vre/admin/projects[/<slug>[/<change>]]``: the Projects admin pages, VRE admins only
  (``vre.api.admin_projects``).
* ``/services/vre/admin/datasets[/<slug>[/<change>|/progress]]``: the Datasets admin page, VRE admins
  only (``vre.api.admin_datasets``).

The proxy reaches the service on a loopback port (JupyterHub's service ``url`` must be http[s]);
sessions, which have no network, reach it on its unix socket ``SOCKET_NAME`` in the hub's socket
directory (``plan.INNER_SERVICE_SOCKET``), which serves only what sessions use: the ingest, the
batch queue, the requester's side of the airlock (no previews, reviews or releases) and the
catalogue's records (read only: access is asked for on the hub's catalogue page).
"""

from __future__ import annotations

import socket
import sys

from tornado.routing import AnyMatches, Matcher

from ..hostview.podgate import HOST_ASSIGNMENTS_ROUTE, HOST_EVENTS_ROUTE  # the per-node observers' (vre.hostview.node)
from ..roles import (ADMIN_SCOPE, AIRLOCK_REVIEW_SCOPE, AIRLOCK_SCOPE, AUDIT_READ_SCOPE, CATALOGUE_READ_SCOPE,
                     CATALOGUE_SCOPE, JOBS_SCOPE, SERVICE_NAME)

EVENTS_ROUTE = r"api/audit/events"
#: The service's unix socket in ``settings.hub_socket_dir`` (in sessions: ``plan.INNER_SERVICE_SOCKET``).
SOCKET_NAME = "vre.sock"


class MethodMatches(Matcher):
    """Matches requests by HTTP method (used below a path rule)."""

    def __init__(self, *methods: str):
        self.methods = frozenset(m.upper() for m in methods)

    def match(self, request):
        return {} if request.method in self.methods else None

    def __repr__(self):
        return f"MethodMatches({', '.join(sorted(self.methods))})"


def routes(settings, *, sessions_only: bool = False) -> list[tuple]:
    """The service's routes (relative to its prefix); ``sessions_only``: the ingest, the batch queue,
    the requester's side of the airlock and the catalogue's records."""
    from ..jobs.api import handlers as job_handlers
    from .airlock import handlers as airlock_handlers
    from .access_pages import handlers as access_pages
    from .admin_datasets import handlers as admin_datasets
    from .admin_pages import handlers as admin_pages
    from .admin_projects import handlers as admin_projects
    from .airlock_pages import handlers as airlock_pages
    from .audit import handlers
    from .catalogue import handlers as catalogue_api
    from .ingest import HostAssignmentsHandler, HostEventsHandler, IngestHandler

    result = [*job_handlers(settings), *catalogue_api(settings)]
    if sessions_only:   # the observers of dataset reads post on this listener only (Kubernetes: its TCP port)
        return [(EVENTS_ROUTE, IngestHandler), (HOST_EVENTS_ROUTE, HostEventsHandler),
                (HOST_ASSIGNMENTS_ROUTE, HostAssignmentsHandler), *result,
                *airlock_handlers(settings, sessions_only=True)]
    result += airlock_handlers(settings) + airlock_pages(settings) + access_pages(settings) + admin_pages(settings)
    result += admin_projects(settings)
    result += admin_datasets(settings)
    for pattern, cls, *rest in handlers(settings):
        if pattern == EVENTS_ROUTE:
            kwargs = rest[0] if rest else {}
            result.append((pattern, [
                (MethodMatches("GET", "HEAD"), cls, kwargs),
                (AnyMatches(), IngestHandler),
            ]))
        else:
            result.append((pattern, cls, *rest))
    return result


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_spec(settings, environment: dict[str, str]) -> dict:
    """The service's entry in ``c.JupyterHub.services``: started, restarted and stopped by the hub,
    and dying with it (``vre.services.die_with_hub``). The proxy's target is a loopback port chosen
    at each hub start; the hub re-points the proxy's route to it."""
    return {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{_free_loopback_port()}",
        "command": [sys.executable, "-m", "vre.api.service"],
        "environment": environment,
        # Browser logins (the hub's OAuth) carry the VRE's scopes, as far as the user holds them;
        # a user without them logs in all the same and gets 403 from the handlers.
        "oauth_client_allowed_scopes": [AUDIT_READ_SCOPE, JOBS_SCOPE, AIRLOCK_SCOPE, AIRLOCK_REVIEW_SCOPE,
                                        CATALOGUE_SCOPE, CATALOGUE_READ_SCOPE, ADMIN_SCOPE],
        "oauth_no_confirm": True,  # part of the VRE, not a third party: no "authorize access?" page
        "display": False,          # not in the hub's Services menu
    }
