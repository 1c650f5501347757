"""Scope checks for the VRE's hub handlers."""

from __future__ import annotations

import functools

from jupyterhub.scopes import needs_scope


def requires_scope(scope: str):
    """``@needs_scope(scope)``, applied at the first request.

    VRE scopes are custom scopes, which JupyterHub defines only after its config is loaded
    (``custom_scopes``), while handler modules are imported as the config loads; ``needs_scope``
    refuses undefined scopes at decoration time, so the decoration waits for the first call.
    """
    def decorate(method):
        checked = None

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            nonlocal checked
            if checked is None:
                checked = needs_scope(scope)(method)
            return checked(self, *args, **kwargs)

        return wrapper

    return decorate
