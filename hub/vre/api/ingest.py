"""The VRE service's ingest of audit events: from sessions (validation and attribution:
:mod:`vre.audit.relay`), and from the per-node observers of dataset reads on Kubernetes."""

from __future__ import annotations

import asyncio
import hmac
import json

from tornado import web

from ..audit.events import emit_many
from ..audit.relay import IngestError, check_token, store_events
from ..audit.schema import AuditError, Event


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
        except (IngestError, ValueError, AttributeError) as e:
            return self._fail(400, str(e))
        self.finish({"stored": stored})


#: What an observer reports: dataset reads, the runs it froze to keep up with them, and the gaps
#: in their record; nothing else.
HOST_ACTIONS = frozenset({"dataset.read", "dataset.read_summary", "dataset.read_pause", "audit.gap"})
#: The observers' shared token (the chart's generated Secret); absent: no observer may post.
OBSERVER_TOKEN = "observer_token"


def observer_token(settings) -> str:
    try:
        return (settings.secrets_dir / OBSERVER_TOKEN).read_text().strip()
    except FileNotFoundError:
        return ""


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
    dataset reads. Their token is the chart's; sessions never hold it."""

    async def post(self):
        settings = self.settings["vre_settings"]
        scheme, _, token = (self.request.headers.get("Authorization") or "").partition(" ")
        expected = observer_token(settings)
        if scheme != "vre-observer" or not expected or not hmac.compare_digest(expected.encode(), token.strip().encode()):
            return self._fail(403, "invalid observer token")
        try:
            body = json.loads(self.request.body or b"{}")
            node = str(body.get("node") or "") if isinstance(body, dict) else ""
            events = host_events(body, node[:253])
        except (IngestError, ValueError) as e:
            return self._fail(400, str(e))
        stored = await asyncio.to_thread(emit_many, settings, events)
        self.finish({"stored": stored})
