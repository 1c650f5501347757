"""REST API of the VRE session: datasets, DICOM viewing, and the download guard.

All routes live under ``<base_url>vre/api/`` (e.g. ``/user/alice/lung-screening/vre/api/``), need
the usual Jupyter authentication (cookie + XSRF for the Lab, or ``Authorization: token ...``) and
are read-only ``GET``s. JSON unless stated; every error is JSON
``{"status": <int>, "reason": "<short code>", "message": "<what to do>"}`` with a 4xx status
(400 bad parameter, 403 not allowed, 404 no such thing, 413 too large, 415 compression that
cannot be decoded, 422 not a usable DICOM file or decoding failed/timed out after 5 s).
The full reference, with examples, is ``extensions/API.md``.

Session and datasets
    GET vre/api/                                   {"api_version", "user", "project", "datasets_link"}
    GET vre/api/datasets                           {"datasets": [Dataset]}
    GET vre/api/datasets/<slug>                    Dataset: {"slug", "path", "browse_path", "indexed", "record", "mode"}
                                                   (mode batch-only: a catalogue record without files, "note" says so)
    GET vre/api/datasets/<slug>/series             ?modality=&body_part=&q=&patient=&study=&limit=50&offset=0
                                                   {"total", "limit", "offset", "items": [SeriesItem]}
    GET vre/api/datasets/<slug>/patients           ?q=&modality=&body_part=&limit=&offset=  (drill-down 1)
    GET vre/api/datasets/<slug>/studies            ?patient=&q=&modality=&body_part=&limit=&offset=  (2)
        (3: the series of a study are .../series?study=<study_uid>)
    GET vre/api/datasets/<slug>/series/<uid>/thumbnail.png     PNG <= 128 px, middle slice, windowed
    GET vre/api/catalogue                          ?modality=&body_part=&condition=&tier=  every dataset's
                                                   record and what this user's projects hold (the hub's,
                                                   relayed: vre_session.catalogue)

Viewing (a *source* is an indexed series, or a single file opened by path)
    GET vre/api/datasets/<slug>/series/<uid>       SeriesMeta (audited: dicom.series_view)
    GET vre/api/file?path=<path>                   SeriesMeta of one file (audited: dicom.instance_view)
    GET <source>/slices/<i>                        slice i in slice order, raw values (binary, below)
    GET <source>/mpr/<axial|coronal|sagittal>/<i>  reformatted image i (binary, below)
    GET <source>/stream?start=&count=&direction=   many slices in one response, each as soon as it
                                                   is decoded: <u32 LE n><n bytes JSON header><pixels>
    GET <source>/tags?slice=<i>                    {"sop_instance_uid", "elements": [...], "count", "truncated"}
    GET vre/api/file/thumbnail.png?path=<path>
  where <source> is ``vre/api/datasets/<slug>/series/<uid>`` or ``vre/api/file`` (then add
  ``?path=<path>`` to each URL). ``path`` is relative to the Lab root (as the file browser gives
  it, e.g. ``data/<slug>/.../IMG0001.dcm``) or absolute; it must resolve under the home or /data.

Binary pixel responses (``application/octet-stream``): the raw little-endian array, row-major,
in modality units (e.g. HU: rescale slope/intercept already applied, MONOCHROME1 *not*
inverted: the viewer inverts when ``invert`` is true), described by headers:
    X-VRE-Dtype          int16 | uint16 | float32 (grey) | uint8 (RGB, 3 bytes per pixel)
    X-VRE-Shape          <rows>,<columns>  or  <rows>,<columns>,3
    X-VRE-Pixel-Spacing  <row spacing>,<column spacing> in mm (empty if unknown): the aspect
    X-VRE-Index          <i>/<count>
    X-VRE-Range          <min>,<max> of the values (for an automatic window)
    X-VRE-Window         <center>,<width> from the file for this slice (absent if none)
    X-VRE-Position       x,y,z of the first pixel (ImagePositionPatient; slices only)
    X-VRE-Location       mm along the slice normal (slices) or along the plane's axis (MPR)
    X-VRE-Markers        top,right,bottom,left orientation letters (MPR only)

Download guard (see ``guard.py``): ``/files``, ``/view``, ``/nbconvert`` and contents-with-content
of anything under /data answer 403 ``{"status": 403, "reason": "download_refused", "message":
"Dataset files cannot be downloaded from the VRE; use the viewer or request an export through
the airlock"}``; ``~/data`` is a symlink to /data made at load, so the file browser shows the
datasets (listings and metadata are allowed).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from dataclasses import dataclass, field

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import iostream, web

from . import relay
from .datasets import BadRequest, Datasets, Manifest, NotFound, load_manifest
from .guard import Guard, ensure_data_link

try:  # the viewer needs numpy/pydicom; the guard must work even if they are broken
    import numpy as np

    from .dicom import DicomError, facts_from_index, jsonable, value_range
    from .series import Source, Viewer
    VIEWER_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - a broken environment
    VIEWER_IMPORT_ERROR = e

    class DicomError(Exception):  # type: ignore[no-redef]
        status, message = 503, "the DICOM viewer is not available in this session"

log = logging.getLogger("vre_session")

API_VERSION = 1
_SEEN_LIMIT = 200_000  # bounded memory for "audit once" bookkeeping
_REASONS = {400: "bad_request", 403: "forbidden", 404: "not_found", 413: "too_large",
            415: "unsupported_transfer_syntax", 422: "unreadable", 503: "unavailable"}


@dataclass
class VREState:
    """What the handlers share (``web_app.settings["vre_session"]``)."""

    manifest: Manifest
    datasets: Datasets
    viewer: "Viewer | None"
    guard: Guard
    root_dir: str
    data_link: str | None
    seen_series: set = field(default_factory=set)
    seen_instances: set = field(default_factory=set)

    def audit_once(self, seen: set, key, action: str, **fields) -> None:
        if key in seen:
            return
        if len(seen) >= _SEEN_LIMIT:
            seen.clear()
        seen.add(key)
        self.audit(action, **fields)

    @staticmethod
    def audit(action: str, **fields) -> None:
        try:
            relay.audit_hook(action, **fields)
        except Exception:  # never fail a view because the spool is broken; the log keeps it
            log.exception("VRE: could not record %s", action)

    def allowed_file(self, path: str) -> str:
        """The resolved path of a file the viewer may open by path (home or /data), else 403/404."""
        if not path or "\x00" in path:
            raise BadRequest("give the file as ?path=<path relative to the Lab root, or absolute>")
        full = path if os.path.isabs(path) else os.path.join(self.root_dir, path.lstrip("/"))
        real = os.path.realpath(full)
        roots = {os.path.realpath(self.root_dir), os.path.normpath(self.root_dir),
                 os.path.realpath(self.manifest.data_root), os.path.normpath(self.manifest.data_root)}
        roots |= {os.path.realpath(r.path) for r in self.manifest.datasets.values()}
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            raise DicomError(403, f"only files in the home ({self.root_dir}) or under "
                                  f"{self.manifest.data_root} can be opened")
        if not os.path.exists(real):
            raise DicomError(404, f"no file {path!r}")
        if not os.path.isfile(real):
            raise DicomError(422, f"{path!r} is a folder, not a DICOM file")
        return real


def _api(method):
    """Map the module's exceptions to JSON 4xx answers."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except DicomError as e:
            self.fail(e.status, e.message)
        except NotFound as e:
            self.fail(404, str(e))
        except BadRequest as e:
            self.fail(400, str(e))
    return wrapper


class VREHandler(APIHandler):
    auth_resource = "contents"  # the viewer reads files, like the contents API

    @property
    def vre(self) -> VREState:
        return self.settings["vre_session"]

    def fail(self, status: int, message: str) -> None:
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"status": status, "reason": _REASONS.get(status, "error"), "message": message}))

    def browse_args(self, *extra: str) -> dict:
        """The browse filters of the query string (validated by the catalogue), plus ``extra`` ones."""
        arg = self.get_query_argument
        args = {name: arg(name, None) for name in ("q", "modality", "body_part", *extra)}
        return {**args, "limit": arg("limit", "50"), "offset": arg("offset", "0")}

    def send_json(self, data) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, default=str))

    def int_arg(self, name: str, default: int | None = None) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            if default is None:
                raise BadRequest(f"the query parameter {name!r} is required")
            return default
        try:
            return int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None

    def send_pixels(self, result: dict) -> None:
        name, arr, (lo, hi) = wire_pixels(result)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VRE-Dtype", name)
        self.set_header("X-VRE-Shape", ",".join(map(str, arr.shape)))
        spacing = result.get("pixel_spacing")
        self.set_header("X-VRE-Pixel-Spacing", ",".join(f"{v:g}" for v in spacing) if spacing else "")
        self.set_header("X-VRE-Index", f"{result['index']}/{result['count']}")
        self.set_header("X-VRE-Range", f"{lo:g},{hi:g}")
        if result.get("window"):
            self.set_header("X-VRE-Window", f"{result['window']['center']:g},{result['window']['width']:g}")
        if result.get("position"):
            self.set_header("X-VRE-Position", ",".join(f"{v:g}" for v in result["position"]))
        if result.get("location") is not None:
            self.set_header("X-VRE-Location", f"{result['location']:g}")
        if result.get("markers"):
            m = result["markers"]
            self.set_header("X-VRE-Markers", f"{m['top']},{m['right']},{m['bottom']},{m['left']}")
        self.finish(arr.tobytes(), set_content_type="application/octet-stream")


def wire_pixels(result: dict) -> tuple[str, "np.ndarray", tuple[float, float]]:
    """(dtype name, little-endian contiguous array, value range) of a slice or MPR result."""
    values = np.asarray(result["values"])
    wire = {"i": "<i2", "u": "<u2", "f": "<f4"}
    if values.dtype == np.uint8 and values.ndim == 3:
        name, arr = "uint8", np.ascontiguousarray(values)
    else:
        kind = values.dtype.kind if values.dtype.kind in "iuf" else "f"
        target = np.dtype(wire[kind]) if values.dtype.itemsize <= 2 or kind == "f" else np.dtype("<f4")
        arr = np.ascontiguousarray(values, dtype=target)
        name = {"<i2": "int16", "<u2": "uint16", "<f4": "float32"}[target.str]
    rng = result.get("range")
    if rng is None or arr.dtype != values.dtype:  # converted here: the decoder's range may not hold
        rng = value_range(arr)
    return name, arr, (float(rng[0]), float(rng[1]))


def _bytes_of(arr: "np.ndarray") -> bytes:
    """The array's bytes: the buffer it was received in from the decoder when it is exactly that
    (no copy), else a copy."""
    base = arr
    while base is not None and not isinstance(base, (bytes, memoryview)):
        base = getattr(base, "base", None)
    if isinstance(base, memoryview):
        base = base.obj
    if isinstance(base, bytes) and len(base) == arr.nbytes and arr.flags.c_contiguous:
        return base
    return arr.tobytes()


def stream_record(index: int, result: "dict | DicomError") -> tuple[bytes, bytes]:
    """One record of a series stream: ``<u32 LE header length><header JSON><pixel bytes>``; the
    header is a slice response's headers as JSON (``nbytes`` says how many pixel bytes follow),
    or ``{"index", "error": {"status", "reason", "message"}}`` for a slice that cannot be shown."""
    if isinstance(result, DicomError):
        header, body = {"index": index, "error": {"status": result.status,
                                                  "reason": _REASONS.get(result.status, "error"),
                                                  "message": result.message}}, b""
    else:
        name, arr, rng = wire_pixels(result)
        body = _bytes_of(arr)
        header = {"index": index, "count": result["count"], "dtype": name, "shape": list(arr.shape),
                  "pixel_spacing": result.get("pixel_spacing"), "range": list(rng),
                  "window": [result["window"]["center"], result["window"]["width"]] if result.get("window") else None,
                  "position": result.get("position"), "location": result.get("location"), "nbytes": len(body)}
    text = json.dumps(jsonable(header)).encode()
    return len(text).to_bytes(4, "little") + text, body  # two writes: the pixels are not copied again


# --- session and datasets ------------------------------------------------------------------
class RootHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        m = self.vre.manifest
        self.send_json({"api_version": API_VERSION, "user": m.user, "project": m.project,
                        "datasets_link": os.path.basename(self.vre.data_link) if self.vre.data_link else None,
                        "data_root": m.data_root})


class DatasetsHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        prefix = os.path.basename(self.vre.data_link) if self.vre.data_link else None
        self.send_json({"datasets": self.vre.datasets.summary(prefix)})


class DatasetHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug):
        prefix = os.path.basename(self.vre.data_link) if self.vre.data_link else None
        found = next((d for d in self.vre.datasets.summary(prefix) if d["slug"] == slug), None)
        self.send_json(found or self.vre.datasets.get(slug))  # get: NotFound, saying why


class SeriesListHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug):
        catalog = self.vre.datasets.get(slug)
        self.send_json(await asyncio.to_thread(catalog.browse, **self.browse_args("patient", "study")))


class PatientsHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug):
        catalog = self.vre.datasets.get(slug)
        self.send_json(await asyncio.to_thread(catalog.patients, **self.browse_args()))


class StudiesHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug):
        catalog = self.vre.datasets.get(slug)
        self.send_json(await asyncio.to_thread(catalog.studies, **self.browse_args("patient")))


class ThumbnailHandler(VREHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug, uid):
        catalog = self.vre.datasets.get(slug)
        paths = await asyncio.to_thread(catalog.series_files, uid)
        png = await self.vre.viewer.thumbnail(paths[len(paths) // 2])
        self.set_header("Cache-Control", "no-store")
        self.finish(png, set_content_type="image/png")


# --- viewing: series and files ------------------------------------------------------------
class _SourceHandler(VREHandler):
    """Resolves the source of the request: ``slug``/``uid`` in the URL, or ``?path=``."""

    async def source(self, slug=None, uid=None) -> Source:
        viewer = self.vre.viewer
        if slug is not None:
            catalog = self.vre.datasets.get(slug)
            key = ("series", slug, uid, catalog.index_stamp())

            async def paths():  # header facts from the index where it has them
                return await asyncio.to_thread(catalog.series_instances, uid, facts_from_index)

            return await viewer.source(key, "series", {"source": "series", "dataset": slug, "series_uid": uid},
                                       paths)
        real = await asyncio.to_thread(self.vre.allowed_file, self.get_query_argument("path", ""))
        try:
            st = os.stat(real)
        except OSError:
            raise DicomError(404, "the file disappeared") from None
        key = ("file", real, st.st_size, st.st_mtime_ns)
        slug = self.vre.datasets.slug_of(real)

        async def one():
            return [real]

        return await viewer.source(key, "file", {"source": "file", "path": self.get_query_argument("path"),
                                                 "dataset": slug}, one)

    def audit_view(self, source: Source, *, always: bool = False) -> None:
        """Series: dicom.series_view (every metadata request, and once per series otherwise);
        files: dicom.instance_view once per instance."""
        vre = self.vre
        if source.kind == "series":
            slug, uid = source.label["dataset"], source.label["series_uid"]
            fields = dict(target=uid, dataset=slug, details={"slices": len(source.slices)})
            if always:
                vre.seen_series.add((slug, uid))
                vre.audit("dicom.series_view", **fields)
            else:
                vre.audit_once(vre.seen_series, (slug, uid), "dicom.series_view", **fields)
        else:
            self.audit_instance(source, 0)

    def audit_instance(self, source: Source, index: int) -> None:
        _, inst = source.slice_ref(index)
        uid = inst["sop_instance_uid"]
        dataset = source.label.get("dataset")
        details = {"sop_instance_uid": uid, "via": source.kind}
        if source.kind == "series":
            details["series_uid"] = source.label["series_uid"]
        target = uid if source.kind == "series" and uid else inst["path"]
        self.vre.audit_once(self.vre.seen_instances, uid or inst["path"], "dicom.instance_view",
                            target=target[:1000], dataset=dataset, details=details)


class SourceMetaHandler(_SourceHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug=None, uid=None):
        source = await self.source(slug, uid)
        self.audit_view(source, always=True)
        self.send_json(source.metadata(self.vre.viewer.cache_bytes))
        # the Lab shows the middle slice first: decode it while the metadata travels and is laid out
        warm = asyncio.ensure_future(self.vre.viewer.decoded(source, (len(source.slices) - 1) // 2))
        warm.add_done_callback(lambda t: t.cancelled() or t.exception())


class SliceHandler(_SourceHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug=None, uid=None, index=None):
        i = _index(index)
        source = await self.source(slug, uid)
        self.audit_view(source)
        self.send_pixels(await self.vre.viewer.slice(source, i))


class StreamHandler(_SourceHandler):
    """Many slices in one response, each flushed as soon as it is decoded, in the order asked:
    ``?start=&count=&direction=``: ``direction`` 1 (or -1) streams ``start``, ``start+1`` (or -1), ...
    to the end of the stack and then the other way; 0 (the default) alternates after and before
    ``start``, nearest first. At most ``count`` slices (default: all)."""

    @web.authenticated
    @authorized
    @_api
    async def get(self, slug=None, uid=None):
        source = await self.source(slug, uid)
        n = len(source.slices)
        start = self.int_arg("start", 0)
        count = self.int_arg("count", n)
        direction = self.int_arg("direction", 0)
        if not 0 <= start < n:
            raise DicomError(404, f"slice {start} does not exist; this series has slices 0..{n - 1}")
        if count < 1:
            raise BadRequest(f"count must be at least 1, got {count}")
        if direction not in (-1, 0, 1):
            raise BadRequest(f"direction must be -1, 0 or 1, got {direction}")
        order = stream_order(start, n, direction)[:count]
        self.audit_view(source)
        self.set_header("Content-Type", "application/vnd.vre.slices")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VRE-Count", str(len(order)))
        slices = self.vre.viewer.stream(source, order)
        try:
            async for index, result in slices:
                for part in stream_record(index, result):
                    self.write(part)
                try:
                    await self.flush()
                except iostream.StreamClosedError:
                    return  # the viewer was closed or moved on (the Lab aborts a stream it outran)
        finally:
            await slices.aclose()
        self.finish()


def stream_order(start: int, n: int, direction: int = 0) -> list[int]:
    """0..n-1 in stream order: from ``start`` towards ``direction`` (1 or -1) to the end, then the
    other way; direction 0: by distance from ``start``, the one after before the one before."""
    if direction:
        ahead = list(range(start, n)) if direction > 0 else list(range(start, -1, -1))
        behind = list(range(start - 1, -1, -1)) if direction > 0 else list(range(start + 1, n))
        return ahead + behind
    order = [start]
    for d in range(1, n):
        order += [i for i in (start + d, start - d) if 0 <= i < n]
    return order


class MprHandler(_SourceHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug=None, uid=None, plane=None, index=None):
        i = _index(index)
        source = await self.source(slug, uid)
        self.audit_view(source)
        self.send_pixels(await self.vre.viewer.mpr(source, plane, i))


class TagsHandler(_SourceHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, slug=None, uid=None):
        i = self.int_arg("slice", 0)
        source = await self.source(slug, uid)
        source.slice_ref(i)  # 404 before any audit
        self.audit_instance(source, i)
        self.send_json(await self.vre.viewer.tags(source, i))


class FileThumbnailHandler(_SourceHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        real = await asyncio.to_thread(self.vre.allowed_file, self.get_query_argument("path", ""))
        png = await self.vre.viewer.thumbnail(real)
        self.set_header("Cache-Control", "no-store")
        self.finish(png, set_content_type="image/png")


def _index(raw: str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"the image index must be a whole number, got {raw!r}") from None


SLUG = r"(?P<slug>[^/]+)"
UID = r"(?P<uid>[^/]+)"
SERIES = rf"/vre/api/datasets/{SLUG}/series/{UID}"
ROUTES = [
    (r"/vre/api/?", RootHandler),
    (r"/vre/api/datasets/?", DatasetsHandler),
    (rf"/vre/api/datasets/{SLUG}/?", DatasetHandler),
    (rf"/vre/api/datasets/{SLUG}/series/?", SeriesListHandler),
    (rf"/vre/api/datasets/{SLUG}/patients/?", PatientsHandler),
    (rf"/vre/api/datasets/{SLUG}/studies/?", StudiesHandler),
    (rf"{SERIES}/?", SourceMetaHandler),
    (rf"{SERIES}/thumbnail(?:\.png)?", ThumbnailHandler),
    (rf"{SERIES}/slices/(?P<index>[^/]+)", SliceHandler),
    (rf"{SERIES}/mpr/(?P<plane>[^/]+)/(?P<index>[^/]+)", MprHandler),
    (rf"{SERIES}/stream/?", StreamHandler),
    (rf"{SERIES}/tags/?", TagsHandler),
    (r"/vre/api/file/?", SourceMetaHandler),
    (r"/vre/api/file/thumbnail(?:\.png)?", FileThumbnailHandler),
    (r"/vre/api/file/slices/(?P<index>[^/]+)", SliceHandler),
    (r"/vre/api/file/mpr/(?P<plane>[^/]+)/(?P<index>[^/]+)", MprHandler),
    (r"/vre/api/file/stream/?", StreamHandler),
    (r"/vre/api/file/tags/?", TagsHandler),
]


def setup_handlers(serverapp) -> VREState:
    """Called by ``_load_jupyter_server_extension``: the download guard first (it must not depend
    on the viewer's libraries), then the ~/data link, the routes, and background warm-up."""
    web_app = serverapp.web_app
    root_dir = os.path.abspath(os.path.expanduser(serverapp.root_dir))
    manifest = load_manifest()
    datasets = Datasets(manifest)
    protected = [manifest.data_root, manifest.catalog_root]
    for ref in manifest.datasets.values():
        protected += [ref.path, ref.catalog]
    guard = Guard(root_dir, protected, slug_of=datasets.slug_of)
    try:
        wrapped = guard.install(web_app, serverapp.contents_manager)
    except Exception:
        serverapp.log.critical("VRE download guard could NOT be installed; dataset files may be downloadable")
        raise
    viewer = None
    if VIEWER_IMPORT_ERROR is None:
        viewer = Viewer()
    else:
        serverapp.log.error("VRE viewer disabled: %s (install the vre-session dependencies)", VIEWER_IMPORT_ERROR)
    state = VREState(manifest=manifest, datasets=datasets, viewer=viewer, guard=guard, root_dir=root_dir,
                     data_link=ensure_data_link(root_dir, manifest.data_root))
    web_app.settings["vre_session"] = state
    base = web_app.settings.get("base_url", "/")
    routes = ROUTES if viewer is not None else ROUTES[:6]  # without the viewer: datasets and browsing
    from .airlock import ROUTES as AIRLOCK_ROUTES
    from .catalogue import ROUTES as CATALOGUE_ROUTES
    from .jobs.handlers import ROUTES as JOB_ROUTES

    routes = list(routes) + JOB_ROUTES + AIRLOCK_ROUTES + CATALOGUE_ROUTES
    web_app.settings["vre_project"] = os.environ.get("VRE_PROJECT")
    web_app.add_handlers(".*$", [(url_path_join(base, pattern), handler) for pattern, handler in routes])

    def late_install():  # routes added by extensions loaded after this one
        more = guard.install(web_app, serverapp.contents_manager)
        if more:
            serverapp.log.info("VRE download guard: %d more route(s) guarded", more)

    try:
        from tornado.ioloop import IOLoop

        IOLoop.current().add_callback(late_install)
    except Exception:
        pass
    datasets.warm_in_background()
    if viewer is not None:
        viewer.pool.prestart()
    serverapp.log.info("VRE viewer API at %svre/api/ (%d dataset(s)); download guard on %d route(s); ~/data %s",
                       base, len(manifest.datasets), wrapped, "linked" if state.data_link else "not linked")
    return state
