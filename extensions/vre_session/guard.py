"""Download guard: dataset files never leave the session over HTTP.

The Lab's root is the home (``/home/jovyan``); datasets are mounted read-only under ``/data`` and
reached from the file browser through a symlink ``~/data -> /data`` that :func:`ensure_data_link`
creates when the extension loads (if nothing else is called ``data`` there). Jupyter would then
happily serve them, so the guard refuses, with **403** and a JSON body
``{"status": 403, "reason": "download_refused", "message": MESSAGE}``:

* ``/files/<path>`` (also ``?download=1``, HEAD), ``/view/<path>``, ``/nbconvert/<format>/<path>``
  for any path that resolves under ``/data`` (or the catalogue mount ``/opt/vre/catalog``);
* ``GET /api/contents/<path>`` *with content* (``content=1``, the default; any ``format``) of a
  file under ``/data``: directory listings and ``content=0`` metadata stay allowed, so the file
  browser can show datasets. Text side-files (clinical CSV/JSON) are refused too: the secure
  default is that raw dataset content reaches the browser only through the viewer API, which
  serves what display needs. Researchers read tables in a notebook (``pandas.read_csv``);
* any static-file handler (tornado ``StaticFileHandler``) asked for a path under those mounts;
* as defence in depth, also DICOM files (``DICM`` magic) *anywhere*, e.g. a copy in the home:
  over ``/files`` and the contents API (with content) they are refused the same way.

"Resolves" means: every way a handler could interpret the URL path (tornado's
``join(root, path)`` and the contents manager's per-segment join, once more URL-decoded for
double-encoded input), normalised (``..``, ``//``) and with symlinks resolved (``realpath``),
so ``~/data/x``, ``~/project/../data/x``, ``%2e%2e``, ``//data/x`` and links to dataset files all
count. Handlers are guarded by wrapping the classes of the matching routes of the running
application (a subclass whose ``prepare`` checks first) and the contents manager's ``get`` (the
backstop for any other caller, e.g. nbconvert). Every refusal of an authenticated request is
recorded: ``audit_hook("download.refused", target=<resolved path>, dataset=<slug or None>,
outcome="denied", details={"route", "url", "method", "reason"})``.

Not covered, by design: kernels and terminals can read ``/data`` (that is what a session is for)
and can print anything; copying inside the session (``cp``, the contents API ``copy_from``) is
allowed. Data leaves the VRE only through the airlock; the network is off.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from urllib.parse import unquote

from tornado import web

from . import relay

log = logging.getLogger("vre_session")

MESSAGE = ("Dataset files cannot be downloaded from the VRE; use the viewer or request an export "
           "through the airlock")
DICOM_MESSAGE = ("DICOM files cannot be downloaded from the VRE; use the viewer or request an export "
                 "through the airlock")


class DownloadRefused(web.HTTPError):
    """403 for a guarded download; handlers wrapped by the guard answer it as JSON."""

    def __init__(self, message: str = MESSAGE, reason: str = "dataset"):
        super().__init__(403, message, reason="Forbidden")  # (no '%' in these messages)
        self.message, self.kind = message, reason

    def __str__(self) -> str:
        return f"403 download refused: {self.message}"

    def body(self) -> dict:
        return {"status": 403, "reason": "download_refused", "message": self.message}


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` is a regular file with the DICOM preamble magic (``DICM`` at byte 128)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            head = f.read(132)
    except (OSError, ValueError):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def ensure_data_link(root_dir: str, data_root: str, name: str = "data") -> str | None:
    """Create ``<root_dir>/<name> -> <data_root>`` if nothing has that name; returns the link path
    if it exists (created now or before) and points at ``data_root``."""
    link = os.path.join(root_dir, name)
    try:
        if not os.path.lexists(link):
            if not os.path.isdir(data_root):
                return None
            os.symlink(data_root, link)
            log.info("VRE: linked %s -> %s for the file browser", link, data_root)
        if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(data_root):
            return link
        log.warning("VRE: %s exists and is not a link to %s; datasets are not shown in the file browser", link,
                    data_root)
    except OSError as e:
        log.warning("VRE: cannot create %s -> %s: %s", link, data_root, e)
    return None


class Guard:
    """Decides whether a path may be served, refuses and audits.

    ``protected``: directories whose contents are never served (dataset and catalogue mounts);
    ``slug_of(real_path)``: the dataset a path belongs to (for the audit event), or None.
    """

    def __init__(self, root_dir: str, protected: list[str], slug_of=None, block_dicom: bool = True):
        self.root_dir = os.path.abspath(root_dir)
        roots = set()
        for p in protected:
            if p:
                roots.add(os.path.normpath(os.path.abspath(p)))
                roots.add(os.path.realpath(p))
        self.protected = sorted(roots)
        self.slug_of = slug_of or (lambda _p: None)
        self.block_dicom = block_dicom

    # -- deciding --------------------------------------------------------------------------------
    def is_protected(self, real_path: str) -> bool:
        return any(real_path == r or real_path.startswith(r.rstrip("/") + "/") for r in self.protected)

    def candidates(self, url_path: str) -> list[str]:
        """Every filesystem path a handler could make of ``url_path`` (already URL-decoded once by
        tornado), absolute and normalised, symlinks not yet resolved."""
        out: list[str] = []
        for variant in dict.fromkeys((url_path, unquote(url_path))):
            if "\x00" in variant:
                continue
            out.append(os.path.abspath(os.path.join(self.root_dir, variant)))  # tornado StaticFileHandler
            parts = [p for p in variant.strip("/").split("/") if p]
            out.append(os.path.abspath(os.path.join(self.root_dir, *parts)))  # contents manager
        return list(dict.fromkeys(out))

    def classify_real(self, real: str, *, sniff: bool) -> tuple[str, str] | None:
        """(reason, message) if the resolved path must not be served, else None."""
        if self.is_protected(real):
            return "dataset", MESSAGE
        if sniff and self.block_dicom and is_dicom_file(real):
            return "dicom", DICOM_MESSAGE
        return None

    def classify(self, url_path: str, *, sniff: bool = True, files_only: bool = False) -> tuple | None:
        """(reason, message, resolved path) for the first candidate that must not be served.
        ``files_only``: directories are fine (contents listings)."""
        for candidate in self.candidates(url_path):
            try:
                real = os.path.realpath(candidate)
            except (OSError, ValueError):
                continue
            if files_only and os.path.isdir(real):
                continue
            verdict = self.classify_real(real, sniff=sniff)
            if verdict:
                return (*verdict, real)
        return None

    # -- refusing --------------------------------------------------------------------------------
    def refuse(self, handler, real: str, reason: str, message: str, route: str) -> DownloadRefused:
        """Audit the refusal (for authenticated requests) and return the exception to raise."""
        request = getattr(handler, "request", None)
        user = None
        try:
            user = handler.current_user if handler is not None else None
        except Exception:
            user = None
        if user:
            details = {"route": route, "reason": reason,
                       "url": (request.path if request is not None else "")[:500],
                       "method": request.method if request is not None else None}
            if request is not None and request.query:
                details["query"] = request.query[:300]
            try:
                relay.audit_hook("download.refused", target=real[:1000], dataset=self.slug_of(real),
                                 outcome="denied", details=details)
            except Exception:  # the refusal stands even if the audit spool is broken
                log.exception("VRE: could not record a refused download of %s", real)
        log.warning("VRE: refused %s of %s (%s)", route, real, reason)
        return DownloadRefused(message, reason)

    def check(self, handler, url_path: str, route: str, *, sniff: bool = True, files_only: bool = False) -> None:
        verdict = self.classify(url_path, sniff=sniff, files_only=files_only)
        if verdict:
            reason, message, real = verdict
            raise self.refuse(handler, real, reason, message, route)

    # -- installing ------------------------------------------------------------------------------
    def install(self, web_app, contents_manager=None) -> int:
        """Wrap the handler classes of the application's routes (idempotent); returns how many."""
        wrapped = 0
        for rule in _rules(web_app.default_router):
            new = self.wrap_class(rule.target)
            if new is not rule.target:
                rule.target = new
                wrapped += 1
        if contents_manager is not None:
            self.wrap_contents_manager(contents_manager)
        return wrapped

    def wrap_class(self, cls):
        """A guarded subclass of a handler class, or ``cls`` itself if it needs no guard."""
        if not isinstance(cls, type) or not issubclass(cls, web.RequestHandler) or getattr(cls, "_vre_guard", None):
            return cls
        route = _route_of(cls)
        if route is None:
            return cls
        attrs = {"_vre_guard": self, "_vre_route": route, "__doc__": cls.__doc__, "__module__": cls.__module__}
        return type(f"VREGuarded{cls.__name__}", (_GuardMixin, cls), attrs)

    def wrap_contents_manager(self, cm) -> None:
        """Refuse ``get(..., content=True)`` of protected files for every caller of the manager."""
        original = cm.get
        if getattr(original, "_vre_guarded", False):
            return
        guard = self

        def check(path, content) -> None:
            if not content:
                return
            verdict = guard.classify(str(path or ""), files_only=True)
            if verdict:
                reason, message, real = verdict
                handler = _current_handler()
                raise guard.refuse(handler, real, reason, message, "contents")

        if inspect.iscoroutinefunction(original):
            @functools.wraps(original)
            async def get(path, content=True, type=None, format=None, **kwargs):
                check(path, content)
                return await original(path, content=content, type=type, format=format, **kwargs)
        else:
            @functools.wraps(original)
            def get(path, content=True, type=None, format=None, **kwargs):
                check(path, content)
                return original(path, content=content, type=type, format=format, **kwargs)
        get._vre_guarded = True
        cm.get = get


def _current_handler():
    try:
        from jupyter_server.base.call_context import CallContext

        return CallContext.get(CallContext.JUPYTER_HANDLER)
    except Exception:
        return None


def _rules(router, seen=None):
    """Every rule whose target is a handler class, through nested routers."""
    seen = seen if seen is not None else set()
    for rule in list(getattr(router, "rules", []) or []):
        target = rule.target
        if isinstance(target, type):
            yield rule
        elif hasattr(target, "rules") and id(target) not in seen:
            seen.add(id(target))
            yield from _rules(target, seen)


def _route_of(cls) -> str | None:
    """Which guard a handler class needs: files, view, nbconvert, contents, static, or none."""
    try:
        from jupyter_server.base.handlers import AuthenticatedFileHandler
        from jupyter_server.files.handlers import FilesHandler
        from jupyter_server.nbconvert.handlers import NbconvertFileHandler
        from jupyter_server.services.contents.handlers import ContentsHandler
        from jupyter_server.view.handlers import ViewHandler
    except ImportError:  # pragma: no cover - jupyter_server is a dependency
        return "static" if issubclass(cls, web.StaticFileHandler) else None
    if issubclass(cls, (AuthenticatedFileHandler, FilesHandler)):
        return "files"
    if issubclass(cls, ViewHandler):
        return "view"
    if issubclass(cls, NbconvertFileHandler):
        return "nbconvert"
    if issubclass(cls, ContentsHandler):
        return "contents"
    if issubclass(cls, web.StaticFileHandler):
        return "static"
    return None


class _GuardMixin:
    """Mixed in front of a guarded handler class: checks the request's path before the handler."""

    _vre_guard: Guard
    _vre_route: str

    async def prepare(self):
        result = super().prepare()
        if inspect.isawaitable(result):
            await result
        if self._finished:
            return
        route = self._vre_route
        if route == "static":
            return  # only validate_absolute_path (below): the URL path may not map to the root
        try:
            user = self.current_user
        except Exception:
            user = None
        if not user:
            return  # the handler's own authentication refuses it; nothing to attribute an event to
        path = self.path_kwargs.get("path") if self.path_kwargs else None
        if path is None and self.path_args:
            path = self.path_args[-1]
        if path is None:
            return
        if route == "contents":
            if self.request.method != "GET" or self.get_query_argument("content", "1") == "0":
                return
            self._vre_guard.check(self, path, route, files_only=True)
        else:
            self._vre_guard.check(self, path, route, sniff=route == "files")

    def validate_absolute_path(self, root, absolute_path):
        # Static-file handlers: whatever the URL, the file that would be opened must not be protected.
        if absolute_path is not None:
            try:
                real = os.path.realpath(absolute_path)
            except (OSError, ValueError):
                real = None
            if real is not None:
                verdict = self._vre_guard.classify_real(real, sniff=self._vre_route == "files")
                if verdict:
                    raise self._vre_guard.refuse(self, real, verdict[0], verdict[1], self._vre_route)
        return super().validate_absolute_path(root, absolute_path)

    def write_error(self, status_code, **kwargs):
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, DownloadRefused):
            self.clear_header("Content-Disposition")
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.finish(json.dumps(exc.body()))
            return
        return super().write_error(status_code, **kwargs)
