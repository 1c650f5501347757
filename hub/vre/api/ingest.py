"""The VRE service's ingest of audit events from sessions (validation and attribution: :mod:`vre.audit.relay`)."""

from __future__ import annotations

import asyncio
import json

from tornado import web

from ..audit.relay import IngestError, check_token, store_events


class IngestHandler(web.RequestHandler):
    """POST /services/vre/api/audit/events with ``Authorization: vre-relay <credential>`` (sessions post
    over the service's unix socket; the credential is the authentication, no hub token)."""

    def check_xsrf_cookie(self):  # credential in a header, not a cookie: no CSRF exposure
        pass

    def _fail(self, status: int, message: str):
        self.set_status(status)
        self.finish({"status": status, "message": message})

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
