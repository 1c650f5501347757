"""Viewer sources (an indexed series, or one file opened by path): geometry, slices, MPR, caches.

A *source* is a list of files. Their header facts come from the catalogue index when it holds
them for the file as it is now (same size and mtime; see ``datasets.Catalog.series_instances``),
else they are read in the decoder workers (cached by path, size and mtime). Its frames are ordered
by :func:`vre_session.dicom.order_slices` and the result kept as a :class:`Source` (bounded cache).

A slice whose uncompressed pixel bytes the index located (``dicom.native_layout``) is read in a
thread of the server (``dicom.read_native``: no parse, so no worker round trip); every other one
is decoded in a worker. Decoded slices are kept in a byte-bounded LRU (half of ``VRE_VIEWER_CACHE_MB``, default 512 MiB),
so a series streamed once (``stream``: slices in the order asked, every decoder worker busy) is not
decoded again. A reformat (MPR) plane is cut from the cached slices (one row or column of each),
decoding only the missing ones; a series whose slices do not fit that half is stacked into a
volume instead, kept in its own LRU bounded by the whole budget; a series larger than the budget
is refused for MPR with 413 rather than risking the session's memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import dicom
from .dicom import DicomError
from .decoders import DecoderPool

log = logging.getLogger("vre_session")

MAX_FRAMES_PER_TASK = 8  # a decode task for a multi-frame file covers at most this many frames
MAX_FILES_PER_SOURCE = 20000


class LRU:
    """A small thread-safe LRU bounded by entry count and (optionally) total bytes."""

    def __init__(self, max_entries: int, max_bytes: int | None = None):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._data: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value, size: int = 0) -> None:
        with self._lock:
            if key in self._data:
                self.bytes -= self._sizes.pop(key)
                del self._data[key]
            self._data[key] = value
            self._sizes[key] = size
            self.bytes += size
            while self._data and (len(self._data) > self.max_entries
                                  or (self.max_bytes is not None and self.bytes > self.max_bytes
                                      and len(self._data) > 1)):
                old, _ = self._data.popitem(last=False)
                self.bytes -= self._sizes.pop(old)

    def drop(self, predicate) -> None:
        """Forget every entry whose key satisfies ``predicate``."""
        with self._lock:
            for key in [k for k in self._data if predicate(k)]:
                del self._data[key]
                self.bytes -= self._sizes.pop(key)

    def __len__(self) -> int:
        return len(self._data)


def _file_key(path: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DicomError(404, "file not found") from None
    except OSError as e:
        raise DicomError(403, f"cannot read the file: {e.strerror}") from None
    return (path, st.st_size, st.st_mtime_ns)


@dataclass
class Source:
    """What the viewer knows about one series (or file) once its headers are read."""

    key: tuple
    kind: str                      # "series" or "file"
    label: dict                    # dataset/series_uid or path: echoed in the metadata
    instances: list[dict]          # read_instance() facts of the readable files
    order: dict                    # order_slices() result
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of unreadable files

    @property
    def slices(self) -> list[dict]:
        return self.order["slices"]

    def slice_ref(self, index: int) -> tuple[dict, dict]:
        if not 0 <= index < len(self.slices):
            raise DicomError(404, f"slice {index} does not exist; this series has slices 0..{len(self.slices) - 1}")
        s = self.slices[index]
        return s, self.instances[s["instance"]]

    def mpr_problem(self) -> str | None:
        """Why reformats are not possible, or None."""
        first = self.instances[0]
        if self.order["ordering"] != "geometry":
            return "the images have no consistent position and orientation (ImagePositionPatient/" \
                   "ImageOrientationPatient), so they do not form a volume"
        if len(self.slices) < 2:
            return "a single image is not a volume"
        if self.order["distinct_positions"] < len(self.slices):
            return "several images share one position (several phases, echoes or acquisitions in one series?)"
        if self.order["spacing"] is None:
            return "the slice spacing cannot be determined"
        if any(i["rows"] != first["rows"] or i["columns"] != first["columns"] for i in self.instances):
            return "the images differ in size"
        if any(i["samples_per_pixel"] != 1 for i in self.instances):
            return "colour images cannot be reformatted"
        if not first["pixel_spacing"]:
            return "the pixel spacing is unknown"
        return None

    def volume_shape(self) -> tuple[int, int, int]:
        first = self.instances[0]
        return (len(self.slices), first["rows"], first["columns"])

    def spacing_krc(self) -> tuple[float, float, float]:
        row_spacing, col_spacing = self.instances[0]["pixel_spacing"]
        return (self.order["spacing"], row_spacing, col_spacing)

    def axes(self) -> dict:
        return dicom.canonical_axes(self.order["orientation"], self.order["normal"])

    def metadata(self, cache_bytes: int) -> dict:
        """The JSON the viewer needs to display the source (see API.md, "Series metadata")."""
        first = self.instances[0]
        photometric = first["photometric_interpretation"]
        windows = list(first["frame_info"][0]["windows"] or first["windows"])
        modality = first["modality"]
        units = first["rescale_type"] or ("HU" if modality == "CT" and not first["modality_lut"] else None)
        if units == "HU":
            have = {(w["center"], w["width"]) for w in windows}
            windows += [w for w in dicom.ct_presets() if (w["center"], w["width"]) not in have]
        rescales = {(f["slope"], f["intercept"]) for i in self.instances for f in i["frame_info"]}
        slope, intercept = first["frame_info"][0]["slope"], first["frame_info"][0]["intercept"]
        orientation = self.order["orientation"]
        problem = self.mpr_problem()
        mpr: dict = {"available": problem is None, "reason": problem}
        if problem is None:
            nbytes = int(np.prod(self.volume_shape())) * 4
            if nbytes > cache_bytes:
                mpr = {"available": False, "reason": f"the series needs {nbytes >> 20} MiB as a volume, more than "
                                                     f"the viewer cache ({cache_bytes >> 20} MiB)"}
            else:
                axes = self.axes()
                shape_zyx = tuple(self.volume_shape()[a] for a in axes["perm"])
                spacing = tuple(self.spacing_krc()[a] for a in axes["perm"])
                mpr.update(oblique=bool(axes["oblique"]), planes={
                    p: {**dicom.plane_shape(shape_zyx, spacing, p), "markers": dicom.PLANE_MARKERS[p]}
                    for p in dicom.PLANES})
        sizes = {(i["rows"], i["columns"]) for i in self.instances}
        warnings = []
        if self.skipped:
            examples = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in self.skipped[:3])
            warnings.append(f"{len(self.skipped)} file(s) of this series could not be read and are not shown "
                            f"({examples})")
        if self.order["ordering"] != "geometry":
            warnings.append(f"slices are ordered by {self.order['ordering'].replace('_', ' ')}: "
                            "position/orientation tags are missing or inconsistent")
        elif not self.order["uniform"] and len(self.slices) > 1:
            warnings.append("slice spacing is not uniform; reformats use the median spacing")
        if first["pixel_spacing_source"] == "ImagerPixelSpacing":
            warnings.append("pixel spacing is ImagerPixelSpacing (at the detector), not in the patient")
        return dicom.jsonable({
            **self.label,
            "patient_id": first["patient_id"],
            "study_instance_uid": first["study_instance_uid"],
            "series_instance_uid": first["series_instance_uid"],
            "study_date": dicom.iso_date(first["study_date"]),
            "study_description": first["study_description"],
            "series_description": first["series_description"],
            "modality": modality,
            "body_part": first["body_part"],
            "manufacturer": first["manufacturer"],
            "sop_class_uid": first["sop_class_uid"],
            "num_instances": len(self.instances),
            "num_slices": len(self.slices),
            "rows": first["rows"] if len(sizes) == 1 else None,
            "columns": first["columns"] if len(sizes) == 1 else None,
            "samples_per_pixel": first["samples_per_pixel"],
            "color": first["samples_per_pixel"] > 1 or photometric in dicom.COLOR_PHOTOMETRICS,
            "photometric_interpretation": photometric,
            "invert": photometric == "MONOCHROME1",
            "bits_allocated": first["bits_allocated"],
            "bits_stored": first["bits_stored"],
            "pixel_representation": first["pixel_representation"],
            "transfer_syntax": first["transfer_syntax"],
            "rescale": {"slope": slope, "intercept": intercept, "type": first["rescale_type"],
                        "varies": len(rescales) > 1, "modality_lut": first["modality_lut"]},
            "units": units,
            "pixel_spacing": first["pixel_spacing"],
            "pixel_spacing_source": first["pixel_spacing_source"],
            "slice_thickness": first["slice_thickness"],
            "slice_spacing": self.order["spacing"] or first["spacing_between_slices"] or first["slice_thickness"],
            "uniform_spacing": self.order["uniform"],
            "ordering": self.order["ordering"],
            "orientation": orientation,
            "normal": self.order["normal"],
            "orientation_markers": dicom.orientation_markers(orientation),
            "windows": windows,
            "voi_lut_function": first["voi_lut_function"],
            "slices": [{
                "index": k,
                "sop_instance_uid": self.instances[s["instance"]]["sop_instance_uid"],
                "instance_number": s["instance_number"],
                "frame": s["frame"],
                "position": s["position"],
                "location": s["location"],
                **({"rows": self.instances[s["instance"]]["rows"], "columns": self.instances[s["instance"]]["columns"]}
                   if len(sizes) > 1 else {}),
            } for k, s in enumerate(self.slices)],
            "mpr": mpr,
            "warnings": warnings,
        })


class Viewer:
    """Reads sources through the worker pool and caches what is expensive to get again."""

    def __init__(self, pool: DecoderPool | None = None, cache_mb: int | None = None):
        self.pool = pool or DecoderPool()
        mb = cache_mb if cache_mb is not None else int(os.environ.get("VRE_VIEWER_CACHE_MB", "512"))
        self.cache_bytes = max(mb, 16) * 1024 * 1024
        self._headers = LRU(50000)
        self._sources = LRU(64)
        self._volumes = LRU(16, self.cache_bytes)
        self._slices = LRU(1_000_000, self.cache_bytes // 2)   # (source key, index) -> decoded slice
        self._thumbs = LRU(4096, 32 * 1024 * 1024)
        self._pending: dict[tuple, asyncio.Future] = {}
        self._reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vre-read")  # read_native

    async def _once(self, key: tuple, make):
        """Run ``make()`` once per key even when several requests ask at the same time."""
        if key in self._pending:
            return await asyncio.shield(self._pending[key])
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await make()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._pending[key]

    # -- headers and sources ------------------------------------------------------------------
    async def header(self, path: str) -> dict:
        key = _file_key(path)
        facts = self._headers.get(key)
        if facts is None:
            facts = await self.pool.run("read_instance", path)
            self._headers.put(key, facts)
        return facts

    async def source(self, key: tuple, kind: str, label: dict, get_paths) -> Source:
        """The source for ``key``; ``get_paths()`` (async) lists its files when it is not cached:
        paths, or ``(path, facts)`` pairs where ``facts`` (``read_instance`` output, from the
        catalogue index) may be None, and is then read from the file."""
        cached = self._sources.get(key)
        if cached is not None:
            return cached

        async def make() -> Source:
            listed = await get_paths()
            if len(listed) > MAX_FILES_PER_SOURCE:
                raise DicomError(413, f"the series has {len(listed)} files; the viewer opens at most "
                                      f"{MAX_FILES_PER_SOURCE}")
            pairs = [item if isinstance(item, tuple) else (item, None) for item in listed]
            paths = [p for p, _ in pairs]

            async def known(facts):
                return facts

            results = await asyncio.gather(*(known(f) if f is not None else self.header(p) for p, f in pairs),
                                           return_exceptions=True)
            instances, skipped, errors = [], [], []
            for path, result in zip(paths, results):
                if isinstance(result, DicomError):
                    skipped.append((path, result.message))
                    errors.append(result)
                elif isinstance(result, BaseException):
                    raise result
                elif not result["rows"] or not result["columns"]:
                    skipped.append((path, "no image (no Rows/Columns)"))
                    errors.append(DicomError(422, "no image: the file has no Rows/Columns (not an image object)"))
                else:
                    instances.append(result)
            if not instances:
                raise errors[0] if len(errors) == 1 else DicomError(
                    max(e.status for e in errors) if errors else 422,
                    f"none of the {len(paths)} file(s) can be shown; first problem: "
                    f"{errors[0].message if errors else 'no files'}")
            source = Source(key, kind, label, instances, dicom.order_slices(instances), skipped)
            self._sources.put(key, source)
            return source

        return await self._once(("source", key), make)

    # -- pixels -------------------------------------------------------------------------------
    def _cached(self, source: Source, index: int) -> dict | None:
        volume = self._volumes.get(source.key)
        if volume is not None:
            return {"values": volume[index], "range": None}
        return self._slices.get((source.key, index))

    async def decoded(self, source: Source, index: int) -> dict:
        """``{"values", "range"}`` of slice ``index``: from the volume or slice cache, else decoded
        (one file, in a worker, under the per-file time limit) and cached."""
        s, inst = source.slice_ref(index)
        hit = self._cached(source, index)
        if hit is not None:
            return hit

        async def make() -> dict:
            info = inst["frame_info"][s["frame"]]
            frame = await self._read_native(inst, info) if "native" in inst else None
            if frame is None:
                frame = (await self.pool.run("decode_frames", inst["path"], [s["frame"]], [info]))[0]
            values = frame["values"]
            values.setflags(write=False)
            out = {"values": values, "range": frame.get("range")}
            self._slices.put((source.key, index), out, values.nbytes)
            return out

        return await self._once(("slice", source.key, index), make)

    async def _read_native(self, inst: dict, info: dict) -> dict | None:
        """``dicom.read_native`` in a thread, within the decoders' time limit (a dataset on a slow
        network share must not hold the stream up longer than a decode may); None when the file
        no longer holds its pixels where the index said, or the read ran over: the decoders then
        read it and report what is wrong."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.pool.timeout):  # no task of its own, unlike wait_for
                return await loop.run_in_executor(self._reads, dicom.read_native, inst["path"], inst["native"], info)
        except (OSError, ValueError, TimeoutError) as e:
            log.info("VRE viewer: %s read through a decoder (%s)", inst["path"], type(e).__name__)
            return None

    def slice_facts(self, source: Source, index: int) -> dict:
        """What a slice's answer says besides its values (see API.md, binary pixel responses)."""
        s, inst = source.slice_ref(index)
        info = inst["frame_info"][s["frame"]]
        windows = info["windows"] or inst["windows"]
        return {"pixel_spacing": inst["pixel_spacing"], "position": s["position"], "location": s["location"],
                "window": windows[0] if windows else None, "count": len(source.slices), "index": index}

    async def slice(self, source: Source, index: int) -> dict:
        """Modality values of slice ``index`` (native orientation) and its facts."""
        facts = self.slice_facts(source, index)
        d = await self.decoded(source, index)
        return {**facts, "values": d["values"], "range": d["range"]}

    async def stream(self, source: Source, order: list[int]):
        """Slices of ``order`` as ``(index, slice() result or DicomError)``, in that order, with as
        many decodes in flight as keep every worker busy (twice the workers, and no more, so a
        single-slice request still finds a worker soon). A file that cannot be decoded (each
        under the per-file time limit) yields its error, and the stream goes on."""
        for i in order:
            source.slice_ref(i)
        window = 2 * max(1, self.pool.size)  # a call queued behind each busy worker: none idles
        tasks: dict[int, asyncio.Task] = {}
        try:
            for pos, i in enumerate(order):
                for j in order[pos:pos + window]:
                    if j not in tasks:
                        tasks[j] = asyncio.ensure_future(self.slice(source, j))
                try:
                    yield i, await tasks.pop(i)
                except DicomError as e:
                    yield i, e
        finally:  # a client gone: the few decodes under way finish into the cache (another
            # request may be waiting on them), their errors are dropped
            for task in tasks.values():
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _check_volume(self, source: Source) -> int:
        problem = source.mpr_problem()
        if problem:
            raise DicomError(422, f"no reformats for this series: {problem}")
        nbytes = int(np.prod(source.volume_shape())) * 4
        if nbytes > self.cache_bytes:
            raise DicomError(413, f"the series needs {nbytes >> 20} MiB as a volume, more than the viewer "
                                  f"cache allows ({self.cache_bytes >> 20} MiB, VRE_VIEWER_CACHE_MB)")
        return nbytes

    async def _all_slices(self, source: Source) -> list[np.ndarray]:
        """Every slice's values in slice order: the cached ones as they are, the others decoded
        (several frames of a file per call) and cached."""
        async def make() -> list[np.ndarray]:
            planes: list = [None] * len(source.slices)
            by_file: dict[int, list[tuple[int, int]]] = {}
            for k, s in enumerate(source.slices):
                hit = self._cached(source, k)
                if hit is not None:
                    planes[k] = hit["values"]
                else:
                    by_file.setdefault(s["instance"], []).append((s["frame"], k))
            tasks = []  # (path, frames, frame infos, slice indexes)
            for i, frames in by_file.items():
                inst = source.instances[i]
                for start in range(0, len(frames), MAX_FRAMES_PER_TASK):
                    chunk = frames[start:start + MAX_FRAMES_PER_TASK]
                    tasks.append((inst["path"], [f for f, _ in chunk], [inst["frame_info"][f] for f, _ in chunk],
                                  [k for _, k in chunk]))
            results = await asyncio.gather(*(self.pool.run("decode_frames", p, fs, infos)
                                             for p, fs, infos, _ in tasks))
            for (_, _, _, ks), decoded in zip(tasks, results):
                for k, d in zip(ks, decoded):
                    d["values"].setflags(write=False)
                    planes[k] = d["values"]
                    self._slices.put((source.key, k), {"values": d["values"], "range": d.get("range")},
                                     d["values"].nbytes)
            return planes

        return await self._once(("all", source.key), make)

    async def volume(self, source: Source) -> np.ndarray:
        """The whole series as ``V[k, r, c]`` in slice order (cached), stacked from the decoded
        slices (only the missing ones are decoded)."""
        volume = self._volumes.get(source.key)
        if volume is not None:
            return volume
        self._check_volume(source)

        async def make() -> np.ndarray:
            volume = dicom.to_wire(np.stack(await self._all_slices(source)))
            volume.setflags(write=False)
            self._volumes.put(source.key, volume, volume.nbytes)
            self._slices.drop(lambda key: key[0] == source.key)  # the volume holds them now
            return volume

        return await self._once(("volume", source.key), make)

    async def mpr(self, source: Source, plane: str, index: int) -> dict:
        """One reformatted image. When the series' slices fit the slice cache, the image is cut
        from the cached slices directly (one row or column of each: no volume is built); else from
        the cached volume."""
        if plane not in dicom.PLANES:
            raise DicomError(404, f"unknown plane {plane!r}; use axial, coronal or sagittal")
        nbytes = self._check_volume(source)
        axes = source.axes()
        shape_zyx = tuple(source.volume_shape()[a] for a in axes["perm"])
        spacing = tuple(source.spacing_krc()[a] for a in axes["perm"])
        shape = dicom.plane_shape(shape_zyx, spacing, plane)
        if not 0 <= index < shape["count"]:
            raise DicomError(404, f"{plane} image {index} does not exist; there are 0..{shape['count'] - 1}")
        volume = self._volumes.get(source.key)
        if volume is None and nbytes // 2 <= self._slices.max_bytes:
            slices = await self._all_slices(source)
            c_axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
            v_axis = axes["perm"][c_axis]
            at = shape_zyx[c_axis] - 1 - index if c_axis in axes["flip"] else index  # along V's axis
            if v_axis == 0:
                sub = slices[at][None, :, :]
            elif v_axis == 1:
                sub = np.stack([s[at, :] for s in slices])[:, None, :]
            else:
                sub = np.stack([s[:, at] for s in slices])[:, :, None]
            c, _ = dicom.reorient(dicom.to_wire(sub), source.spacing_krc(), axes)
            values = dicom.mpr_slice(c, plane, 0)
        else:
            volume = await self.volume(source)
            c, _ = dicom.reorient(volume, source.spacing_krc(), axes)
            values = dicom.mpr_slice(c, plane, index)
        return {"values": values, "pixel_spacing": shape["pixel_spacing"], "count": shape["count"],
                "index": index, "position": None, "window": None, "markers": dicom.PLANE_MARKERS[plane],
                "location": self._plane_location(source, axes, plane, index)}

    @staticmethod
    def _plane_location(source: Source, axes: dict, plane: str, index: int) -> float | None:
        """Patient coordinate (mm) of an MPR plane along its axis (z, y or x), from the volume corner."""
        c_axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]   # axis of C[z, y, x]
        patient_axis = {0: 2, 1: 1, 2: 0}[c_axis]
        v_axis = axes["perm"][c_axis]
        n = source.volume_shape()[v_axis]
        step = source.spacing_krc()[v_axis]
        i = (n - 1 - index) if c_axis in axes["flip"] else index
        direction = [source.order["normal"], source.order["orientation"][3:], source.order["orientation"][:3]][v_axis]
        origin = source.slices[0]["position"]
        return float(origin[patient_axis] + i * step * direction[patient_axis])

    # -- other reads --------------------------------------------------------------------------
    async def tags(self, source: Source, index: int) -> dict:
        _, inst = source.slice_ref(index)
        return await self.pool.run("instance_tags", inst["path"])

    async def thumbnail(self, path: str, frame: int | None = None) -> bytes:
        key = (*_file_key(path), frame)
        png = self._thumbs.get(key)
        if png is None:
            if frame is None:
                frame = (await self.header(path))["frames"] // 2
            png = await self.pool.run("render_thumbnail", path, frame)
            self._thumbs.put(key, png, len(png))
        return png

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        self.pool.close()
