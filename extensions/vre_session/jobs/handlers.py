"""``<server>/vre/api/jobs/...``: the Lab's jobs panel talks to the hub's queue through its own
server (``service_relay``)."""

from __future__ import annotations

from ..service_relay import ServiceRelayHandler


class JobsProxyHandler(ServiceRelayHandler):
    SUPPORTED_METHODS = ("GET", "POST")
    section = "jobs"
    service = "the hub's batch queue"
    timeout = 300.0   # a list of jobs is checked whole in one request


ROUTES = [(r"/vre/api/jobs(/\d+(?:/log|/cancel|/rerun)?)?/?", JobsProxyHandler)]
