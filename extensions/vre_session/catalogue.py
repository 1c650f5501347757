"""``<server>/vre/api/catalogue``: the Lab's Datasets panel lists the datasets its project does not
have (their catalogue records: metadata only, never files) through its own server
(``service_relay``), from the VRE service's ``api/catalogue`` (filters ``modality``, ``body_part``,
``condition``, ``tier``). Read only: access is asked for on the hub's catalogue page, which the
panel links to (the hub's login and XSRF apply there; a session's token cannot ask).
"""

from __future__ import annotations

from urllib.parse import urlencode

from .service_relay import ServiceRelayHandler

#: The filters the hub's catalogue takes; the Lab's other parameters (its cache-busting one) stay here.
FILTERS = ("modality", "body_part", "condition", "tier")


class CatalogueProxyHandler(ServiceRelayHandler):
    SUPPORTED_METHODS = ("GET",)
    section = "catalogue"
    service = "the hub's catalogue"

    def query(self) -> str:
        return urlencode({k: v for k in FILTERS if (v := self.get_query_argument(k, ""))})


ROUTES = [(r"/vre/api/catalogue/?", CatalogueProxyHandler)]
