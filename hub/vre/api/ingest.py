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
from ..jobs import observed
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


class _Refused(Exception):
    """A post refused: its HTTP status and what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _ObserverPost(_PostWithCredential):
    """A post of a per-node observer of a Kubernetes deployment (``vre.hostview.node``), as the
    node the API server says its token's pod runs on (``vre.api.observers``). Sessions reach
    these routes; no token of theirs is an observer's."""

    async def post(self):
        try:
            self.finish(await self.take(*await self._observer()))
        except _Refused as e:
            self._fail(e.status, str(e))

    async def take(self, node: str, body) -> dict:
        """Store what the observer of ``node`` posted; the answer (``_Refused``: bad input)."""
        raise NotImplementedError

    async def _observer(self) -> tuple[str, object]:
        """(the observer's node, the post's JSON)."""
        scheme, _, token = (self.request.headers.get("Authorization") or "").partition(" ")
        tokens = self.settings.get("vre_observer_tokens")
        if scheme != "vre-observer" or not token.strip() or tokens is None:
            raise _Refused(403, "invalid observer token")
        try:
            node = await tokens.node(token.strip())
        except ReviewUnavailable as e:
            raise _Refused(503, str(e)) from None
        except ObserverRefused as e:
            log.warning("refused a post as an observer's: %s", e)
            raise _Refused(403, f"invalid observer token: {e}") from None
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError) as e:
            raise _Refused(400, f"send JSON: {e}") from None
        claimed = body.get("node") if isinstance(body, dict) else None
        if claimed not in (None, node):
            raise _Refused(403, f"this observer's token is its pod's on node {node}, not {claimed!r}")
        return node, body


class HostEventsHandler(_ObserverPost):
    """POST /services/vre/api/audit/host-events: an observer's records of dataset reads, stored
    with ``source = "host"`` and its node."""

    async def take(self, node: str, body) -> dict:
        try:
            events = host_events(body, node)
        except (IngestError, ValueError, RecursionError) as e:
            raise _Refused(400, str(e)) from None
        return {"stored": await asyncio.to_thread(emit_many, self.settings["vre_settings"], events)}


class HostAssignmentsHandler(_ObserverPost):
    """POST /services/vre/api/audit/host-assignments: the jobs an observer now counts batch
    worker pods' reads for (``vre.jobs.observed``: the job engine waits for them)."""

    async def take(self, node: str, body) -> dict:
        try:
            assignments = observed.parse(body)
        except observed.AssignmentsRefused as e:
            raise _Refused(400, str(e)) from None
        return {"kept": await asyncio.to_thread(observed.record, self.settings["vre_settings"].vre_db_url, node,
                                                assignments)}
