"""The airlock's REST API in the VRE service, under ``/services/vre/api/airlock`` (docs/airlock.md
lists every route with its body and answers).

Every route needs ``custom:vre-airlock`` (the ``user`` and ``server`` roles carry it: the
researcher's browser, scripts with a personal token, the session's server token over the service's
unix socket). What a caller may see and do is then decided per request (``vre.airlock.review``):
author, project member, output checker (the account's checker flag *and* the token's
``custom:vre-airlock:review`` scope, which only logins carry: a session's token can never review).
Strangers get 404 for everything; authors 403 for reviewing, previewing, releasing or downloading
their own unreleased request.

Errors are JSON ``{"status", "message"}``; a refused submission or addition adds ``"files"``
(``[{"path", "name", "size", "problems": [...]}]``) and ``"problems"`` (request-level). Previews
and downloads stream stored files in 1 MiB chunks (a zip is written on the fly with ZIP_STORED,
never assembled in memory) and are recorded in the audit trail before the first byte is sent.
"""

from __future__ import annotations

import asyncio
import io
import json
from urllib.parse import quote

from tornado import web
from tornado.iostream import StreamClosedError

from ..airlock import requests as ops
from ..airlock import review as R
from ..airlock.store import read_chunks, write_zip
from ..claims.files import ReaderUnavailable
from ..errors import NotFound, VREError
from ..plan import PlanRefused
from ..roles import AIRLOCK_REVIEW_SCOPE, AIRLOCK_SCOPE
from .base import ServiceAPIHandler, requires_scope

requires_airlock_scope = requires_scope(AIRLOCK_SCOPE)
QUEUE = 8  # chunks in flight between the zip thread and the connection
#: Preview content types by extension. SVG is shown as text: as an image it could run scripts.
PREVIEW_TYPES = {
    "csv": "text/csv; charset=utf-8", "tsv": "text/tab-separated-values; charset=utf-8",
    "txt": "text/plain; charset=utf-8", "md": "text/plain; charset=utf-8", "log": "text/plain; charset=utf-8",
    "json": "application/json; charset=utf-8", "svg": "text/plain; charset=utf-8",
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "pdf": "application/pdf",
    "ipynb": "application/json; charset=utf-8",
}
#: Whatever a preview holds, it runs nothing and fetches nothing in the checker's browser.
PREVIEW_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:"


class AirlockError(web.HTTPError):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(status, message)
        self.extra = extra


def _disposition(kind: str, name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    ascii_name = base.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(base, safe='')}"


class _AirlockHandler(ServiceAPIHandler):
    def initialize(self, vre_settings=None):
        super().initialize(vre_settings)
        self.vre = self.vre_settings

    def write_error(self, status_code: int, **kwargs):
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, AirlockError) and exc.extra and not self._headers_written:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            return self.finish(json.dumps({"status": status_code, "message": exc.log_message, **exc.extra}))
        return super().write_error(status_code, **kwargs)

    def actor(self) -> ops.Actor:
        who = self.current_user
        return ops.Actor(who.name, checker_scope=bool(self.hub_auth.check_scopes({AIRLOCK_REVIEW_SCOPE}, who)),
                         via="api", client=self.request.remote_ip)

    async def call(self, func, *args, **kwargs):
        """``func(settings, actor, ...)`` in a worker thread; the VRE's errors as HTTP answers."""
        try:
            return await asyncio.to_thread(func, self.vre, self.actor(), *args, **kwargs)
        except ops.Refused as e:
            raise AirlockError(400, str(e), files=e.files, problems=e.problems) from None
        except NotFound as e:
            raise AirlockError(404, str(e)) from None
        except (R.Forbidden, PlanRefused) as e:
            raise AirlockError(403, str(e)) from None
        except R.WrongState as e:
            raise AirlockError(409, str(e)) from None
        except ReaderUnavailable as e:   # the project's claims could not be asked now: try again
            raise AirlockError(503, str(e)) from None
        except VREError as e:
            raise AirlockError(400, str(e)) from None

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):   # not JSON, or nested beyond what the parser takes
            raise AirlockError(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise AirlockError(400, "the body must be a JSON object")
        return data

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))


class RulesHandler(_AirlockHandler):
    """``GET api/airlock/rules/<project>``: the project's rules."""

    @requires_airlock_scope
    async def get(self, project):
        self.reply(await self.call(ops.rules_for, project))


class RequestsHandler(_AirlockHandler):
    """``GET api/airlock/requests[?project=&state=&role=author|review]``; ``POST`` creates a draft."""

    @requires_airlock_scope
    async def get(self):
        role = self.get_query_argument("role", None)
        if role not in (None, "", "author", "review"):
            raise AirlockError(400, "role must be author (my requests) or review (requests I may review)")
        rows = await self.call(ops.list_requests, project=self.get_query_argument("project", None) or None,
                               state=self.get_query_argument("state", None) or None, role=role or None)
        self.reply({"requests": rows})

    @requires_airlock_scope
    async def post(self):
        b = self.body()
        if not isinstance(b.get("project"), str) or not b["project"]:
            raise AirlockError(400, 'name the project: {"project": "<slug>", "title": ..., "files": [...]}')
        self.reply(await self.call(ops.create, b["project"], b.get("title") or "", b.get("justification") or "",
                                   b.get("files") or []), 201)


class RequestHandler(_AirlockHandler):
    """``GET api/airlock/requests/<id>``; ``PATCH`` {title, justification, descriptions: {file id: text}}."""

    @requires_airlock_scope
    async def get(self, rid):
        self.reply(await self.call(ops.get, int(rid)))

    @requires_airlock_scope
    async def patch(self, rid):
        b = self.body()
        descriptions = b.get("descriptions")
        try:
            descriptions = {int(k): str(v) for k, v in (descriptions or {}).items()}
        except (AttributeError, TypeError, ValueError):
            raise AirlockError(400, 'descriptions is {"<file id>": "text"}') from None
        self.reply(await self.call(ops.edit, int(rid), title=b.get("title"), justification=b.get("justification"),
                                   descriptions=descriptions))


class FilesHandler(_AirlockHandler):
    """``POST api/airlock/requests/<id>/files`` {files: [{path, description}]} (or {path, description})."""

    @requires_airlock_scope
    async def post(self, rid):
        b = self.body()
        files = b.get("files") if "files" in b else [b]
        self.reply(await self.call(ops.add_files, int(rid), files), 201)


class FileHandler(_AirlockHandler):
    """``PATCH api/airlock/requests/<id>/files/<fid>`` {description}; ``DELETE`` removes it (editable requests)."""

    @requires_airlock_scope
    async def patch(self, rid, fid):
        b = self.body()
        if not isinstance(b.get("description"), str):
            raise AirlockError(400, 'give {"description": "text"}')
        self.reply(await self.call(ops.edit, int(rid), descriptions={int(fid): b["description"]}))

    @requires_airlock_scope
    async def delete(self, rid, fid):
        self.reply(await self.call(ops.remove_file, int(rid), int(fid)))


class FileUpdateHandler(_AirlockHandler):
    """``POST api/airlock/requests/<id>/files/<fid>/update`` {path?}: freeze the file again."""

    @requires_airlock_scope
    async def post(self, rid, fid):
        b = self.body()
        path = b.get("path")
        if path is not None and not isinstance(path, str):
            raise AirlockError(400, "path must be a path in your session")
        self.reply(await self.call(ops.update_file, int(rid), int(fid), path or None))


class ActionHandler(_AirlockHandler):
    """``POST api/airlock/requests/<id>/<action>`` with {comment}: check, submit, withdraw (authors);
    return, reject, release (checkers)."""

    ACTIONS = {"check": ops.check, "submit": ops.submit, "withdraw": ops.withdraw,
               "return": ops.return_, "reject": ops.reject, "release": ops.release}

    @requires_airlock_scope
    async def post(self, rid, action):
        func = self.ACTIONS[action]
        args = () if action in ("check", "submit") else (str(self.body().get("comment") or ""),)
        self.reply(await self.call(func, int(rid), *args))


class ReviewsHandler(_AirlockHandler):
    """``POST api/airlock/requests/<id>/reviews`` {decisions: [{file, decision, comment}]} (or one decision)."""

    @requires_airlock_scope
    async def post(self, rid):
        b = self.body()
        decisions = b.get("decisions") if "decisions" in b else [b]
        self.reply(await self.call(ops.review, int(rid), decisions), 201)


class RecordHandler(_AirlockHandler):
    """``GET api/airlock/requests/<id>/record``: the signed release record, ``verified`` with the audit key."""

    @requires_airlock_scope
    async def get(self, rid):
        self.reply(await self.call(ops.get_record, int(rid)))


class _Streaming(_AirlockHandler):
    async def stream_file(self, out) -> bool:
        """Send one stored file; False when the client left or the stored copy does not match its hash."""
        chunks = read_chunks(out.path, out.sha256)
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return True
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return False
        except OSError:
            self.log.exception("airlock: stored file %s of %s is damaged", out.name, out.path)
            self.request.connection.close()
            return False


def render_notebook(path) -> str:
    """A notebook as sanitized HTML with its outputs (nbconvert)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.sanitize_html = True
    exporter.embed_images = True
    nb = nbformat.read(str(path), as_version=4)
    html, _ = exporter.from_notebook_node(nb)
    return html


class PreviewHandler(_Streaming):
    """``GET api/airlock/requests/<id>/files/<fid>/preview[?format=raw]``: a checker views a frozen file
    (recorded). Notebooks come as HTML (outputs included); ``format=raw`` gives the JSON."""

    @requires_airlock_scope
    async def get(self, rid, fid):
        out = await self.call(ops.preview, int(rid), int(fid))
        ext = out.name.rsplit(".", 1)[-1].lower() if "." in out.name else ""
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PREVIEW_CSP)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VRE-SHA256", out.sha256)
        if ext == "ipynb" and self.get_query_argument("format", "html") == "html":
            try:
                html = await asyncio.to_thread(render_notebook, out.path)
            except Exception as e:  # noqa: BLE001 - an unreadable notebook is shown raw
                self.log.warning("airlock: notebook %s not rendered: %s", out.name, e)
            else:
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.set_header("Content-Disposition", _disposition("inline", out.name + ".html"))
                return self.finish(html)
        ctype = PREVIEW_TYPES.get(ext)
        self.set_header("Content-Type", ctype or "application/octet-stream")
        self.set_header("Content-Disposition", _disposition("inline" if ctype else "attachment", out.name))
        self.set_header("Content-Length", str(out.size))
        if await self.stream_file(out):
            self.finish()


class DownloadFileHandler(_Streaming):
    """``GET api/airlock/requests/<id>/files/<fid>/download``: one released file (``X-VRE-SHA256``)."""

    @requires_airlock_scope
    async def get(self, rid, fid):
        files, _text, _sig = await self.call(ops.download, int(rid), int(fid), fmt="file")
        out = files[0]
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", _disposition("attachment", out.name))
        self.set_header("Content-Length", str(out.size))
        self.set_header("X-VRE-SHA256", out.sha256)
        self.set_header("Cache-Control", "no-store")
        if await self.stream_file(out):
            self.finish()


class _QueueWriter(io.RawIOBase):
    """A write-only, unseekable file for zipfile in a worker thread: chunks go to the event loop
    through a bounded queue (the thread waits while the connection is behind: flat memory)."""

    def __init__(self, loop, queue):
        self._loop, self._queue = loop, queue
        self._buf = bytearray()
        self.cancelled = False

    def writable(self):
        return True

    def write(self, b) -> int:
        if self.cancelled:
            raise BrokenPipeError("download cancelled: the client went away")
        self._buf += b
        if len(self._buf) >= (1 << 20):
            self.push()
        return len(b)

    def push(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            asyncio.run_coroutine_threadsafe(self._queue.put(data), self._loop).result()


class DownloadHandler(_Streaming):
    """``GET api/airlock/requests/<id>/download``: the released files as one zip, streamed."""

    @requires_airlock_scope
    async def get(self, rid):
        files, record, signature = await self.call(ops.download, int(rid), None, fmt="zip")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", _disposition("attachment", f"airlock-{int(rid)}.zip"))
        self.set_header("Cache-Control", "no-store")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
        writer = _QueueWriter(loop, queue)
        done = object()

        def run():
            try:
                write_zip(writer, files, record, signature)
                writer.push()
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(done), loop).result()

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (chunk := await queue.get()) is not done:
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            writer.cancelled = True
            while not task.done():
                try:
                    await asyncio.wait_for(queue.get(), timeout=1)
                except asyncio.TimeoutError:
                    pass
            task.exception()
            return
        try:
            await task
        except Exception:
            self.log.exception("airlock: zip of request %s failed", rid)
            self.request.connection.close()
            return
        self.finish()


def handlers(settings, *, sessions_only: bool = False) -> list[tuple]:
    """The routes (relative to the service's prefix). Sessions get the requester's side only."""
    kw = {"vre_settings": settings}
    base = r"api/airlock/requests/(\d+)"
    requester = [
        (r"api/airlock/rules/([a-z0-9-]+)", RulesHandler, kw),
        (r"api/airlock/requests", RequestsHandler, kw),
        (base, RequestHandler, kw),
        (base + r"/files", FilesHandler, kw),
        (base + r"/files/(\d+)", FileHandler, kw),
        (base + r"/files/(\d+)/update", FileUpdateHandler, kw),
        (base + r"/files/(\d+)/download", DownloadFileHandler, kw),
        (base + r"/download", DownloadHandler, kw),
        (base + r"/record", RecordHandler, kw),
    ]
    if sessions_only:
        return requester + [(base + r"/(check|submit|withdraw)", ActionHandler, kw)]
    return requester + [
        (base + r"/(check|submit|withdraw|return|reject|release)", ActionHandler, kw),
        (base + r"/reviews", ReviewsHandler, kw),
        (base + r"/files/(\d+)/preview", PreviewHandler, kw),
    ]
