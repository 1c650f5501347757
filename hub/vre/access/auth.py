"""Who is asking: the access layer's own login to the hub (OAuth) and its token checks.

The layer is the JupyterHub OAuth client ``service-vre-access`` (registered by hubconfig with the
redirect URI :data:`CALLBACK`, which the layer answers itself). A browser without the layer's
cookie is sent through the hub's authorisation once (silent while logged in to the hub); the
cookie then holds the hub token it got, signed with the layer's secret, for ``/user/`` paths only.
API clients send ``Authorization: token ...`` (and websockets may put ``?token=`` in the URL, as
JupyterHub allows). Either way the hub says who the token belongs to and with which scopes
(:class:`jupyterhub.services.auth.HubOAuth`, answers cached briefly); the session's own scope
``access:servers!server=<user>/<server>`` decides.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from jupyterhub.services.auth import HubOAuth, check_scopes
from tornado.web import create_signed_value, decode_signed_value

from ..roles import ACCESS_LAYER

SERVICE = ACCESS_LAYER
CLIENT_ID = f"service-{SERVICE}"
PREFIX = f"/services/{SERVICE}/"
CALLBACK = f"{PREFIX}oauth_callback"
COOKIE = "vre-access"
STATE_COOKIE = "vre-access-state"
#: How long the hub's answer about a token is trusted (a logout revokes it within this time).
CACHE_SECONDS = 30
COOKIE_DAYS = 1


@dataclass(frozen=True)
class Caller:
    name: str
    kind: str            # user | service
    scopes: frozenset
    via: str             # cookie | header | url

    def may_access(self, user: str, server: str) -> bool:
        return bool(check_scopes({f"access:servers!server={user}/{server}"}, self.scopes))


class Login:
    """Token checks against the hub and the OAuth dance, with the layer's signing secret."""

    def __init__(self, *, api_url: str, api_token: str, secret: bytes):
        self.hub = HubOAuth(api_url=api_url, api_token=api_token, oauth_client_id=CLIENT_ID,
                            oauth_redirect_uri=CALLBACK, cache_max_age=CACHE_SECONDS, base_url=PREFIX)
        self.secret = secret

    # -- tokens ----------------------------------------------------------------------------
    async def caller(self, token: str, via: str) -> Caller | None:
        """Who the hub says holds ``token`` (None: unknown, expired or revoked)."""
        try:
            model = await self.hub.user_for_token(token, sync=False)
        except Exception:  # the hub is down or answered an error: nobody is let in
            return None
        if not model or "name" not in model:
            return None
        return Caller(model["name"], model.get("kind", "user"), frozenset(model.get("scopes") or ()), via)

    def cookie_token(self, value: str | None) -> str | None:
        if not value:
            return None
        token = decode_signed_value(self.secret, COOKIE, value, max_age_days=COOKIE_DAYS)
        return token.decode() if token else None

    def cookie_value(self, token: str) -> str:
        return create_signed_value(self.secret, COOKIE, token).decode()

    @staticmethod
    def cookie_options(path: str, max_age: int, secure: bool) -> dict:
        """HttpOnly, same-site, and ``Secure`` when the browser came over HTTPS (to the layer or a
        TLS terminator in front of it)."""
        return {"path": path, "httponly": True, "samesite": "Lax", "secure": secure, "max_age": max_age}

    # -- OAuth ------------------------------------------------------------------------------
    def start(self, next_url: str) -> tuple[str, str]:
        """(authorisation URL, state cookie value) for a browser to log in and come back to ``next_url``."""
        state = secrets.token_urlsafe(16)
        verifier = secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        cookie = create_signed_value(self.secret, STATE_COOKIE, json.dumps(
            {"state": state, "next": next_url, "verifier": verifier, "t": time.time()})).decode()
        query = urlencode({"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "response_type": "code",
                           "state": state, "code_challenge": challenge, "code_challenge_method": "S256"})
        return f"{self.hub.oauth_authorization_url}?{query}", cookie

    def check_state(self, cookie: str | None, state: str) -> dict | None:
        """The stored state if ``state`` is the one this browser was sent with (10 minutes at most)."""
        if not cookie or not state:
            return None
        raw = decode_signed_value(self.secret, STATE_COOKIE, cookie, max_age_days=1)
        if not raw:
            return None
        data = json.loads(raw)
        if not secrets.compare_digest(str(data.get("state")), state) or time.time() - data.get("t", 0) > 600:
            return None
        return data

    async def token_for_code(self, code: str, verifier: str) -> str:
        return await self.hub.token_for_code(code, code_verifier=verifier, sync=False)


def safe_next(url: str | None) -> str:
    """Only local session paths are a place to come back to (no open redirect)."""
    if url and url.startswith("/user/") and not url.startswith("//") and "\\" not in url:
        return url
    return "/hub/home"
