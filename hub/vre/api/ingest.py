"""The VRE service's ingest of audit events: from sessions (validation and attribution:
:mod:`vre.audit.relay`), and from the per-node observers of dataset reads on Kubernetes."""

from __future__ import annotations

import asyncio
import json
import logging

from tornado import web

from ..audit.events import emit_many
from ..audit.relay import IngestError, check_token, store_events
from ..audit.schema import AuditError, Event
from .observers import ObserverRefused, ReviewUnavailable

log = logging.getLogger("vre.service")


class _PostWithCredential(web.RequestHandler):
    """A POST authenticated by a credential in its Authorization header, not by a hub login."""

    def check_xsrf_cookie(self):  # credential in a header, not a cookie: no CSRF exposure
        pass

    def _fail(self, status: int, message: str):
        self.set_status(status)
        self.finish({"status": status, "message": message})


class IngestHandler(_PostWithCredential):
    """POST /services/vre/api/audit/events with ``Authorization: vre-relay <credential>`` (sessions post
    over the service's unix socket; the credential is the authentication, no hub token)."""

    async def post(self):
        settings = self.settings["vre_settings"]
        scheme, _, token = (self.request.headers.get("Authorization") or "").partition(" ")
        try:
            if scheme != "vre-relay":
                raise IngestError("missing relay credential")
            identity = check_token(settings, token.strip())
        except (IngestError, ValueError):
            return self._fail(403, "invalid relay credential")
        try:
            body = json.loads(self.request.body or b"{}")
            stored = await asyncio.to_thread(store_events, settings, identity, body.get("events"))
        except (IngestError, ValueError, AttributeError, RecursionError) as e:
            return self._fail(400, str(e))
        self.finish({"stored": stored})


#: What an observer reports: dataset reads, the runs it froze to keep up with them, and the gaps
#: in their record; nothing else.
HOST_ACTIONS = frozenset({"dataset.read", "dataset.list", "dataset.read_summary", "dataset.read_pause", "audit.gap"})
def host_events(body, node: str) -> list[Event]:
    """The events of an observer's post, each checked as any event is, with ``source = "host"``
    and the node it came from; IngestError says what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise IngestError('send {"node": ..., "events": [...]}')
    out = []
    for i, raw in enumerate(body["events"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("details", {}), dict):
            raise IngestError(f"event {i}: send a JSON object whose details are an object")
        if raw.get("action") not in HOST_ACTIONS:
            raise IngestError(f"event {i}: an observer reports {', '.join(sorted(HOST_ACTIONS))}, "
                              f"not {raw.get('action')}")
        try:
            out.append(Event.from_dict({**raw, "source": "host", "details": {**raw.get("details", {}), "node": node}}))
        except (AuditError, TypeError) as e:
            raise IngestError(f"event {i}: {e}") from None
    return out


class HostEventsHandler(_PostWithCredential):
    """POST /services/vre/api/audit/host-events with ``Authorization: vre-observer <token>``: the
    per-node observers of a Kubernetes deployment (``vre.hostview.node``) store their records of
    dataset reads, as the node the API server says their token's pod runs on
    (``vre.api.observers``). Sessions reach this route; no token of theirs is an observer's."""

    async def post(self):
        settings = self.settings["vre_settings"]
        scheme, _, token = (self.request.headers.get("Authorization") or "").partition(" ")
        tokens = self.settings.get("vre_observer_tokens")
        if scheme != "vre-observer" or not token.strip() or tokens is None:
            return self._fail(403, "invalid observer token")
        try:
            node = await tokens.node(token.strip())
        except ReviewUnavailable as e:
            return self._fail(503, str(e))
        except ObserverRefused as e:
            log.warning("refused records posted as an observer's: %s", e)
            return self._fail(403, f"invalid observer token: {e}")
        try:
            body = json.loads(self.request.body or b"{}")
            claimed = body.get("node") if isinstance(body, dict) else None
            if claimed not in (None, node):
                return self._fail(403, f"this observer's token is its pod's on node {node}, not {claimed!r}")
            events = host_events(body, node)
        except (IngestError, ValueError, RecursionError) as e:
            return self._fail(400, str(e))
        stored = await asyncio.to_thread(emit_many, settings, events)
        self.finish({"stored": stored})
