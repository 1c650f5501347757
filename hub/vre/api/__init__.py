"""The hub-side web service: audit ingest from sessions, the audit REST API and the auditor page.

``configure(c, settings)`` attaches the handlers to the hub (under /hub/); hubconfig calls it.

* ``/hub/vre/audit``: the auditor page. No other page links to it; auditors open it directly.
* ``/hub/api/vre/audit/{events,export,verify,timeline}``: the auditors' REST API (``vre.api.audit``).
* ``/hub/api/vre/audit/events`` is shared: GET (and HEAD) is the auditors' query API, any other
  method goes to the ingest from sessions (``vre.api.ingest``). Tornado routes by path only, so
  that path's target is a small rule list that picks the handler class by method; each class stays
  as its author wrote it (the ingest authenticates relay credentials itself, the audit API uses
  JupyterHub's login and scopes).
"""

from __future__ import annotations

from tornado.routing import AnyMatches, Matcher

EVENTS_ROUTE = r"/api/vre/audit/events"


class MethodMatches(Matcher):
    """Matches requests by HTTP method (used below a path rule)."""

    def __init__(self, *methods: str):
        self.methods = frozenset(m.upper() for m in methods)

    def match(self, request):
        return {} if request.method in self.methods else None

    def __repr__(self):
        return f"MethodMatches({', '.join(sorted(self.methods))})"


def routes(settings) -> list[tuple]:
    """All extra hub routes (relative to the hub prefix)."""
    from ..jobs.api import handlers as job_handlers
    from .audit import handlers
    from .ingest import IngestHandler

    result = list(job_handlers(settings))
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


def configure(c, settings) -> None:
    c.JupyterHub.extra_handlers = routes(settings)
