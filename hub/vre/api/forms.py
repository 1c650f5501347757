"""The base of the VRE service's form pages (catalogue, access requests, admin pages): who acts,
URLs under the service's prefix, the posted fields, and how a refusal becomes a status code, so
that every page answers a refused form the same way: the page again, with the message saying what
to fix, never a traceback."""

from __future__ import annotations

from urllib.parse import urlencode

from jupyterhub.utils import url_path_join

from .. import access_requests as AR
from ..errors import Conflict, NotFound, VREError
from .base import ServiceHandler
from .pages import render

class Unexpected(VREError):
    """Not a refusal: handling the form failed on the server's side (a bug, the database gone).
    The user gets this message with their form; the traceback goes to the service's log only."""


#: A refusal's status code, first match wins (``VREError`` last: every other one is a subclass).
STATUS = ((Unexpected, 500), (AR.Forbidden, 403), (NotFound, 404), (AR.Decided, 409), (Conflict, 409),
          (VREError, 400))


def status_of(error: VREError) -> int:
    return next(code for cls, code in STATUS if isinstance(error, cls))


class FormPage(ServiceHandler):
    """A page of plain HTML forms (XSRF-protected, no script needed)."""

    def actor(self) -> AR.Actor:
        """The signed-in account acting in the browser, with the client's address for the audit."""
        return AR.Actor(self.current_user.name, via="web", client=self.request.remote_ip)

    def url(self, *parts: str, **query) -> str:
        """A path under the service's prefix, with a query string."""
        path = url_path_join(self.hub_auth.base_url, *parts)
        return f"{path}?{urlencode(query)}" if query else path

    def form(self, *names: str) -> dict:
        """The posted fields, missing ones as ''."""
        return {n: self.get_body_argument(n, "") for n in names}

    def refusal(self, error: Exception) -> VREError:
        """What a failed POST tells the user, as the page with their form again: a ``VREError`` as
        is; anything else (a bug) logged here with its traceback and answered with ``Unexpected``, so
        the form is not lost to a bare error page and no traceback reaches the browser."""
        if isinstance(error, VREError):
            return error
        self.log.error("%s %s failed", self.request.method, self.request.path, exc_info=error)
        return Unexpected("this could not be done: an unexpected error on the server (the VRE service's log has "
                          "the details). What you typed is kept; try again, and if it fails again tell an "
                          "administrator")

    def page(self, template: str, status: int = 200, **ns) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(render(self, template, **ns))
