"""JupyterHub's service auth as the VRE service's handlers use it, without a hub: the unit tests of
the service's pages and APIs install it on ``ServiceHandler._hub_auth``. Who calls is decided by
the test's ``caller(handler)`` (a user model with its scopes, or None). And ``served``: those
pages and APIs on a loopback port for the test's requests."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from jupyterhub.services.auth import check_scopes
from tornado.httpserver import HTTPServer


@contextmanager
def served(make_app, *sockets):
    """The application ``make_app()`` returns, served on ``sockets`` (bound by the test, before
    its requests) from a thread of its own until the block ends. The application is made on that
    thread's loop, as the service makes its own."""
    loop = asyncio.new_event_loop()

    def serve():
        asyncio.set_event_loop(loop)
        HTTPServer(make_app()).add_sockets(list(sockets))
        loop.run_forever()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class FakeHubAuth:
    base_url = "/services/vre/"
    login_url = "/hub/login"
    access_scopes = set()  # every hub user may reach the service; the handlers check their scope

    def __init__(self, caller):
        self._caller = caller

    def get_user(self, handler):
        return self._caller(handler)

    def check_scopes(self, required, user):
        return check_scopes(required, set(user["scopes"]))

    def _persist_url_token_if_set(self, handler):
        pass

    def check_xsrf_cookie(self, handler):
        pass


def named_by_header(scopes_of):
    """A ``caller``: the user named by the ``X-Test-User`` header, with ``scopes_of(name)``."""
    def caller(handler):
        name = handler.request.headers.get("X-Test-User")
        return {"name": name, "kind": "user", "scopes": scopes_of(name)} if name else None
    return caller
