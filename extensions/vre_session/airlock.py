"""``<server>/vre/api/airlock/...``: the Lab's export-requests panel talks to the hub's airlock
through its own server (``service_relay``), as the jobs panel does.

Only the JSON routes are relayed. Released files are never downloaded through the session (its
downloads are refused by the access layer's policy): the panel links to the VRE service's own
download route, where the user's hub login applies and every download is recorded.
"""

from __future__ import annotations

import re

from .service_relay import ServiceRelayHandler

#: What the panel may ask for (below api/airlock): no downloads, no reviews.
ALLOWED = re.compile(r"/rules/[a-z0-9-]+|/requests(/\d+(/files(/\d+(/update)?)?|/check|/submit|/withdraw|/record)?)?")


class AirlockProxyHandler(ServiceRelayHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PATCH", "DELETE")
    section = "airlock"
    service = "the hub's airlock"
    timeout = 300.0  # a submission copies and hashes every file before it answers

    def allowed(self, path: str) -> bool:
        return bool(ALLOWED.fullmatch(path))  # downloads come from the VRE service, never through here

    def adds_project(self, path: str) -> bool:
        return path == "/requests"


ROUTES = [(r"/vre/api/airlock(/.*)?", AirlockProxyHandler)]
