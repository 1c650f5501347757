"""DICOM reading for the viewer: headers, geometry, pixel values in modality units, tags, PNG.

Two kinds of functions live here:

* **file readers** (``read_instance``, ``decode_frames``, ``instance_tags``, ``render_thumbnail``)
  parse untrusted files. The server never calls them in its own process: they run in the decoder
  worker processes of :mod:`vre_session.decoders`, under a time limit, and report every problem
  as :class:`DicomError` (an HTTP status in the 4xx range and a message a researcher can act on);
* **native reads** (``read_native``) parse nothing: for a single-frame grayscale file whose
  uncompressed pixel bytes the catalogue index located at registration (``native_layout``), they
  read those bytes at their offset, which cannot spin or allocate without bound, so the server
  runs them in a thread of its own instead of a round trip through a worker (the slice stream's
  main cost);
* **pure geometry** (``order_slices``, ``orientation_markers``, ``canonical_axes``, ...) works on
  the plain dicts the readers return and is what the unit tests pin down.

Coordinates are DICOM patient coordinates (LPS: x to the patient's left, y to the back, z to
the head). An image's row direction is ImageOrientationPatient[:3] (along a row, i.e. across the
columns), its column direction is ImageOrientationPatient[3:], and the slice normal is their
cross product.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zlib
from typing import Any

import numpy as np

# Per-frame limits: anything larger is refused with 413 rather than risking the session's memory.
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_TAG_ELEMENTS = 5000
MAX_TAG_VALUE = 256
THUMBNAIL_SIZE = 128
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW", "US or SS or OW"}
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
COLOR_PHOTOMETRICS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422",
          "PALETTE COLOR"}


class DicomError(Exception):
    """A file that cannot be shown; ``status`` is the HTTP status (4xx) to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self):  # survives pickling across the worker pipe
        return (DicomError, (self.status, self.message))


# --- reading ---------------------------------------------------------------------------------
def _read(path: str, *, pixels: bool):
    """Parse ``path``. Files without the 'DICM' preamble (ACR-NEMA style) are accepted only if they
    carry image elements; a missing transfer syntax is inferred from the encoding pydicom found."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        try:
            ds = dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            ds = dcmread(path, stop_before_pixels=not pixels, force=True)
            if not (isinstance(ds.get("Rows"), int) and isinstance(ds.get("Columns"), int)):
                raise DicomError(422, "not a DICOM file (no 'DICM' header and no image elements)") from None
    except DicomError:
        raise
    except IsADirectoryError:
        raise DicomError(422, "a folder, not a DICOM file") from None
    except FileNotFoundError:
        raise DicomError(404, "file not found") from None
    except PermissionError:
        raise DicomError(403, "permission denied reading the file") from None
    except Exception as e:  # pydicom raises many types on malformed data
        raise DicomError(422, f"not a readable DICOM file: {type(e).__name__}: {str(e)[:200]}") from None
    if not ds.file_meta.get("TransferSyntaxUID"):
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = UID(
            "1.2.840.10008.1.2" if implicit is not False else "1.2.840.10008.1.2.1" if little is not False
            else "1.2.840.10008.1.2.2")
    return ds


def _get(ds, keyword: str, default=None):
    """An element's value, or ``default`` when it is missing or its value cannot be converted."""
    try:
        value = ds.get(keyword, default)
    except Exception:
        return default
    return default if value is None or value == "" else value


def _floats(value, n: int | None = None) -> list[float] | None:
    if value is None:
        return None
    try:
        items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    if (n is not None and len(out) != n) or not all(map(math.isfinite, out)):
        return None
    return out


def _float(value) -> float | None:
    values = _floats(value)
    return values[0] if values else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value) or None
    text = str(value).strip(" \x00")
    return text or None


def _item(ds, keyword: str):
    """First item of a sequence, or None."""
    seq = _get(ds, keyword)
    try:
        return seq[0] if seq else None
    except Exception:
        return None


def _group(ds, frame: int, keyword: str):
    """Functional-group macro item for ``frame``: per-frame first, then shared (enhanced objects)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = _get(ds, groups)
        try:
            item = seq[index] if seq is not None and len(seq) > index else None
        except Exception:
            item = None
        if item is not None:
            found = _item(item, keyword)
            if found is not None:
                return found
    return None


def _windows(source) -> list[dict]:
    """WindowCenter/WindowWidth pairs (multi-valued) with their explanations."""
    centers = _floats(_get(source, "WindowCenter")) or []
    widths = _floats(_get(source, "WindowWidth")) or []
    names = _get(source, "WindowCenterWidthExplanation")
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) or type(names).__name__ == "MultiValue" \
        else ([str(names)] if names else [])
    out = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        if w > 0:
            out.append({"center": c, "width": w, "name": names[i] if i < len(names) else f"Window {i + 1}",
                        "source": "tags"})
    return out


def _frame_count(ds) -> int:
    n = _int(_get(ds, "NumberOfFrames", 1)) or 1
    return max(1, n)


def _facts(ds, path: str) -> dict:
    """Header facts of a parsed dataset: identity, image pixel module, and per frame its
    position, orientation, rescale and windows (enhanced objects: from the functional groups)."""
    frames = _frame_count(ds)
    ts = ds.file_meta.TransferSyntaxUID
    measures = _group(ds, 0, "PixelMeasuresSequence")
    spacing = _floats(_get(ds, "PixelSpacing"), 2)
    if spacing is None and measures is not None:
        spacing = _floats(_get(measures, "PixelSpacing"), 2)
    spacing_source = "PixelSpacing" if spacing else None
    if spacing is None:
        spacing = _floats(_get(ds, "ImagerPixelSpacing"), 2)
        spacing_source = "ImagerPixelSpacing" if spacing else None
    if spacing is not None and min(spacing) <= 0:
        spacing, spacing_source = None, None

    def measure(keyword: str) -> float | None:
        value = _float(_get(ds, keyword))
        if value is None and measures is not None:
            value = _float(_get(measures, keyword))
        return value if value is not None and value > 0 else None

    top_position = _floats(_get(ds, "ImagePositionPatient"), 3)
    top_orientation = _floats(_get(ds, "ImageOrientationPatient"), 6)
    top_slope, top_intercept = _float(_get(ds, "RescaleSlope")), _float(_get(ds, "RescaleIntercept"))
    offsets = _floats(_get(ds, "GridFrameOffsetVector"))
    enhanced = _get(ds, "PerFrameFunctionalGroupsSequence") is not None or \
        _get(ds, "SharedFunctionalGroupsSequence") is not None
    top_normal = _normal(top_orientation)

    per_frame = []
    for f in range(frames):
        position, orientation, windows = top_position, top_orientation, None
        slope, intercept = top_slope, top_intercept
        if enhanced:
            item = _group(ds, f, "PlanePositionSequence")
            if item is not None:
                position = _floats(_get(item, "ImagePositionPatient"), 3) or position
            item = _group(ds, f, "PlaneOrientationSequence")
            if item is not None:
                orientation = _floats(_get(item, "ImageOrientationPatient"), 6) or orientation
            item = _group(ds, f, "PixelValueTransformationSequence")
            if item is not None and _float(_get(item, "RescaleSlope")) is not None:
                slope, intercept = _float(_get(item, "RescaleSlope")), _float(_get(item, "RescaleIntercept"))
            item = _group(ds, f, "FrameVOILUTSequence")
            if item is not None:
                windows = _windows(item) or None
            if frames > 1 and _group(ds, f, "PlanePositionSequence") is None:
                position = None  # one top-level position cannot place many frames
        elif frames > 1:
            if top_position and top_normal and offsets and len(offsets) == frames:
                # RT dose and friends: frames along the normal, the first at ImagePositionPatient
                position = [p + (offsets[f] - offsets[0]) * n for p, n in zip(top_position, top_normal)]
            else:
                position = None
        per_frame.append({
            "position": position, "orientation": orientation,
            "slope": slope if slope not in (None, 0.0) else 1.0,
            "intercept": intercept if intercept is not None else 0.0,
            "windows": windows,
        })
    return {
        "path": path,
        "sop_instance_uid": _text(_get(ds, "SOPInstanceUID")),
        "sop_class_uid": _text(_get(ds, "SOPClassUID")),
        "series_instance_uid": _text(_get(ds, "SeriesInstanceUID")),
        "study_instance_uid": _text(_get(ds, "StudyInstanceUID")),
        "patient_id": _text(_get(ds, "PatientID")),
        "study_date": _text(_get(ds, "StudyDate")),
        "study_description": _text(_get(ds, "StudyDescription")),
        "series_description": _text(_get(ds, "SeriesDescription")),
        "modality": (_text(_get(ds, "Modality")) or "").upper() or None,
        "body_part": (_text(_get(ds, "BodyPartExamined")) or "").upper() or None,
        "manufacturer": _text(_get(ds, "Manufacturer")),
        "instance_number": _int(_get(ds, "InstanceNumber")),
        "rows": _int(_get(ds, "Rows")), "columns": _int(_get(ds, "Columns")), "frames": frames,
        "samples_per_pixel": _int(_get(ds, "SamplesPerPixel", 1)) or 1,
        "photometric_interpretation": (_text(_get(ds, "PhotometricInterpretation")) or "").upper() or None,
        "bits_allocated": _int(_get(ds, "BitsAllocated")),
        "bits_stored": _int(_get(ds, "BitsStored")),
        "pixel_representation": _int(_get(ds, "PixelRepresentation")),
        "transfer_syntax": {"uid": str(ts), "name": ts.name, "compressed": bool(ts.is_compressed)},
        "pixel_spacing": spacing, "pixel_spacing_source": spacing_source,
        "slice_thickness": measure("SliceThickness"), "spacing_between_slices": measure("SpacingBetweenSlices"),
        "rescale_type": _text(_get(ds, "RescaleType")),
        "modality_lut": _get(ds, "ModalityLUTSequence") is not None,
        "voi_lut_function": (_text(_get(ds, "VOILUTFunction")) or "").upper() or None,
        "windows": _windows(ds),
        "frame_info": per_frame,
    }


def read_instance(path: str) -> dict:
    """Header facts of one file (pixel data not read); see ``_facts``. Runs in a worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(path, pixels=False)
        try:
            return _facts(ds, path)
        except DicomError:
            raise
        except Exception as e:
            raise DicomError(422, f"unreadable DICOM header: {type(e).__name__}: {str(e)[:200]}") from None


# --- header facts from the catalogue index ----------------------------------------------------
#: The top-level elements ``_facts`` reads from a file without functional groups. The catalogue
#: index (``vre.catalog.index.VIEWER_KEYWORDS``) stores them per file at registration; an index
#: that lacks one of them is not used (the headers are read instead).
INDEX_KEYWORDS = frozenset({
    "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "StudyDate",
    "StudyDescription", "SeriesDescription", "Modality", "BodyPartExamined", "Manufacturer",
    "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient", "ImageOrientationPatient",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "GridFrameOffsetVector", "VOILUTFunction",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "ModalityLUTSequence",
})


class _IndexedUID(str):
    """A transfer syntax UID as the index recorded it (pydicom's ``UID`` without importing pydicom
    into the server)."""

    def __new__(cls, uid: str, name: str, compressed: bool):
        self = super().__new__(cls, uid)
        self.name, self.is_compressed = name, compressed
        return self


class _IndexedMeta:
    def __init__(self, ts):
        self.TransferSyntaxUID = ts


class _Indexed:
    """Stands in for a parsed header in ``_facts``: the values the index stored, nothing else."""

    def __init__(self, values: dict, ts):
        self._values, self.file_meta = values, _IndexedMeta(ts)

    def get(self, keyword: str, default=None):
        if keyword not in INDEX_KEYWORDS and keyword not in ("PerFrameFunctionalGroupsSequence",
                                                             "SharedFunctionalGroupsSequence"):
            raise KeyError(f"{keyword} is not stored in the catalogue index")
        return self._values.get(keyword, default)


def facts_from_index(stored: str, path: str, fields: list[str], columns: dict | None = None) -> dict:
    """``read_instance(path)`` as the catalogue index recorded it (``files.viewer``, its values in
    the order of ``fields``, the index's ``meta.viewer_fields``; ``columns``: keyword -> value of
    the elements the index keeps in their own columns), without opening the file: the same
    function builds the facts, from the stored values. Raises ValueError for a record it cannot
    use (the caller then reads the header)."""
    record = json.loads(stored)
    if not isinstance(record, dict) or not isinstance(record.get("v"), list) or len(record["v"]) != len(fields) or \
            not all(isinstance(record.get(k), t) for k, t in (("ts", str), ("ts_name", str), ("ts_compressed", bool))):
        raise ValueError("not a viewer record")
    if not INDEX_KEYWORDS <= set(fields):
        raise ValueError("the index lacks elements the viewer needs")
    values = {k: v for k, v in zip(fields, record["v"]) if v is not None}
    values.update({k: v for k, v in (columns or {}).items() if v is not None})
    ts = _IndexedUID(record["ts"], record["ts_name"], record["ts_compressed"])
    facts = _facts(_Indexed(values, ts), path)
    native = native_layout(facts, record.get("px"))
    if native is not None:
        facts["native"] = native
    return facts


NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit, explicit VR little endian


def native_layout(facts: dict, span) -> dict | None:
    """Where and how a file's pixels lie when ``read_native`` can read them: ``{"offset",
    "rows", "columns", "bytes", "bits_stored", "signed"}`` for one uncompressed little-endian
    grayscale frame of 8 or 16 bits with no Modality LUT (CT, MR, most of what a viewer shows),
    whose pixel data value the index found at ``span`` (``[offset, length]``) with the length the
    header implies; None for anything else (the decoders handle it)."""
    if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int and v >= 0 for v in span)):
        return None
    rows, cols, allocated, stored = (facts.get(k) for k in ("rows", "columns", "bits_allocated", "bits_stored"))
    if facts["transfer_syntax"]["uid"] not in NATIVE_TRANSFER_SYNTAXES or facts.get("frames") != 1 \
            or facts.get("samples_per_pixel") != 1 or facts.get("modality_lut") \
            or facts.get("photometric_interpretation") not in ("MONOCHROME1", "MONOCHROME2") \
            or facts.get("pixel_representation") not in (0, 1) or allocated not in (8, 16) \
            or not isinstance(stored, int) or not 1 <= stored <= allocated \
            or not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
        return None
    nbytes = rows * cols * allocated // 8
    if nbytes > MAX_FRAME_BYTES or span[1] not in (nbytes, nbytes + nbytes % 2):  # odd lengths are padded
        return None
    return {"offset": span[0], "rows": rows, "columns": cols, "bytes": allocated // 8, "bits_stored": stored,
            "signed": facts["pixel_representation"] == 1}


def read_native(path: str, native: dict, info: dict) -> dict:
    """``decode_frames(path, [0], [info])[0]`` of a file with a ``native_layout``: its pixel bytes
    read at their offset and turned into modality values as pydicom would (bits above BitsStored
    masked off, or sign-extended from it). Raises OSError when the file no longer holds them (the
    caller then decodes the file in a worker, which says what is wrong with it)."""
    rows, cols, width = native["rows"], native["columns"], native["bytes"]
    nbytes = rows * cols * width
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, nbytes, native["offset"])
    finally:
        os.close(fd)
    if len(data) != nbytes:
        raise OSError(f"{path}: {len(data)} of {nbytes} pixel bytes at offset {native['offset']}")
    arr = np.frombuffer(data, f"<{'i' if native['signed'] else 'u'}{width}").reshape(rows, cols)
    unused = 8 * width - native["bits_stored"]
    if unused and native["signed"]:
        arr = np.right_shift(np.left_shift(arr, unused), unused)  # arithmetic: sign-extends
    elif unused:
        arr = np.bitwise_and(arr, (1 << native["bits_stored"]) - 1)
    values, rng = _gray_wire(arr, info)
    return {"values": values, "kind": "gray", "range": rng}


# --- pixels ----------------------------------------------------------------------------------
def to_wire(values: np.ndarray) -> np.ndarray:
    """The most compact exact little-endian type the viewer understands: int16, uint16, float32."""
    if values.dtype.kind in "iub":
        if values.size == 0:
            return values.astype("<i2")
        lo, hi = int(values.min()), int(values.max())
        if -32768 <= lo and hi <= 32767:
            return values.astype("<i2", copy=False)
        if 0 <= lo and hi <= 65535:
            return values.astype("<u2", copy=False)
        return values.astype("<f4")
    values = values.astype("<f4", copy=False)
    finite = values[np.isfinite(values)]
    if finite.size and finite.size == values.size and np.all(finite == np.round(finite)):
        lo, hi = float(finite.min()), float(finite.max())
        if -32768 <= lo and hi <= 32767:
            return values.astype("<i2")
    return values


def _modality_values(arr: np.ndarray, info: dict) -> np.ndarray:
    """Stored values -> modality values (HU for CT) with the frame's slope/intercept or Modality LUT."""
    slope, intercept = info["slope"], info["intercept"]
    if slope == 1.0 and intercept == 0.0:
        return arr
    if arr.dtype.kind in "iu" and float(slope).is_integer() and float(intercept).is_integer():
        out = arr.astype(np.int64) * int(slope) + int(intercept)
        return out
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def _gray_wire(arr: np.ndarray, info: dict) -> tuple[np.ndarray, tuple[float, float]]:
    """``to_wire(_modality_values(arr, info))`` and its range, in one pass over the image when the
    stored values are integers, the rescale is integral and the result fits int16 (CT, most MR):
    int16 arithmetic wraps modulo 2**16, so it is exact whenever the true result fits."""
    slope, intercept = info["slope"], info["intercept"]
    if arr.dtype.kind in "iu" and arr.size and float(slope).is_integer() and float(intercept).is_integer() \
            and abs(slope) < 32768 and abs(intercept) < 32768:
        lo, hi = int(arr.min()), int(arr.max())
        a, b = lo * int(slope) + int(intercept), hi * int(slope) + int(intercept)
        lo, hi = min(a, b), max(a, b)
        if -32768 <= lo and hi <= 32767:
            out = arr.astype("<i2")
            if slope != 1:
                out *= np.int16(int(slope))
            if intercept != 0:
                out += np.int16(int(intercept))
            return out, (float(lo), float(hi))
    values = to_wire(_modality_values(arr, info))
    return values, value_range(values)


def _color_to_rgb8(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.dtype != np.uint8:
        bits = (_int(_get(ds, "BitsStored")) or 16) if photometric != "PALETTE COLOR" else 16
        if arr.dtype.kind == "f":
            arr = np.clip(arr, 0, 1) * 255 if float(np.nanmax(arr)) <= 1.0 else np.clip(arr, 0, 255)
        else:
            arr = np.right_shift(arr.astype(np.uint32), max(0, bits - 8))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _check_size(ds) -> None:
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    if not rows or not cols or rows < 1 or cols < 1:
        raise DicomError(422, "the image has no valid Rows/Columns")
    samples = _int(_get(ds, "SamplesPerPixel", 1)) or 1
    size = rows * cols * max(samples, 1) * 8  # as float64 during the rescale
    if size > MAX_FRAME_BYTES:
        raise DicomError(413, f"the image is too large to display ({rows}x{cols}x{samples})")


def _decode_error(ds, e: Exception) -> DicomError:
    ts = ds.file_meta.get("TransferSyntaxUID")
    detail = " ".join(str(e).split())[:300]
    if isinstance(e, MemoryError):
        return DicomError(413, "the image is too large to decode in this session")
    if ts is not None and (ts.is_compressed or isinstance(e, NotImplementedError)):
        return DicomError(415, f"cannot decode transfer syntax {ts.name} ({ts}): {detail}")
    return DicomError(422, f"cannot decode the pixel data: {detail}")


def value_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, (0, 0) when there are none: the automatic window's input."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def decode_frames(path: str, frames: list[int], infos: list[dict] | None = None) -> list[dict]:
    """Decode ``frames`` of ``path`` into modality values, one dict per frame:
    ``{"values": ndarray (rows, cols) int16/uint16/float32 or (rows, cols, 3) uint8,
    "kind": "gray"|"rgb", "range": (min, max)}``. ``infos`` (the frames' ``frame_info``, when the
    caller already has the header facts) spares re-deriving them from the header. Runs in a worker,
    so the range is computed here, in parallel, not in the server."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(path, pixels=True)
        if not any(t in ds for t in _PIXEL_TAGS):
            kind = _text(_get(ds, "Modality")) or "object"
            raise DicomError(422, f"no image: this DICOM file ({kind}, {_sop_name(ds)}) has no pixel data")
        _check_size(ds)
        n = _frame_count(ds)
        if infos is not None and len(infos) != len(frames):
            raise DicomError(400, "decode_frames: one frame_info per frame is needed")
        info = dict(zip(frames, infos)) if infos is not None else _facts(ds, path)["frame_info"]
        photometric = (_text(_get(ds, "PhotometricInterpretation")) or "").upper()
        samples = _int(_get(ds, "SamplesPerPixel", 1)) or 1
        out = []
        for f in frames:
            if not 0 <= f < n:
                raise DicomError(404, f"frame {f} does not exist (the file has {n})")
            try:
                arr = pixel_array(ds, index=f if n > 1 else None)
                if n == 1 and arr.ndim == (3 if samples == 1 else 4):
                    arr = arr[0]
            except DicomError:
                raise
            except Exception as e:
                raise _decode_error(ds, e) from None
            if samples > 1 or photometric in COLOR_PHOTOMETRICS:
                if arr.ndim == 2 and photometric == "PALETTE COLOR":
                    pass
                elif arr.ndim != 3:
                    raise DicomError(422, f"unexpected pixel array shape {arr.shape} for {photometric}")
                try:
                    rgb = _color_to_rgb8(arr, ds, photometric)
                except Exception as e:
                    raise DicomError(422, f"cannot convert {photometric} to RGB: {str(e)[:200]}") from None
                if rgb.ndim != 3 or rgb.shape[2] != 3:
                    raise DicomError(422, f"unsupported colour layout {rgb.shape} ({photometric})")
                out.append({"values": rgb, "kind": "rgb", "range": value_range(rgb)})
                continue
            if arr.ndim != 2:
                raise DicomError(422, f"unexpected pixel array shape {arr.shape}")
            if _get(ds, "ModalityLUTSequence") is not None:
                try:
                    values = to_wire(apply_modality_lut(arr, ds))
                except Exception:
                    values = to_wire(_modality_values(arr, info[f]))
                rng = value_range(values)
            else:
                values, rng = _gray_wire(arr, info[f])
            out.append({"values": values, "kind": "gray", "range": rng})
        return out


def _sop_name(ds) -> str:
    uid = _get(ds, "SOPClassUID")
    try:
        return uid.name if uid is not None else "unknown SOP class"
    except Exception:
        return str(uid)


# --- tags ------------------------------------------------------------------------------------
def _value_text(elem) -> str:
    vr = str(elem.VR)
    try:
        value = elem.value
    except Exception as e:
        return f"<unreadable: {type(e).__name__}>"
    if vr in _BINARY_VRS or isinstance(value, (bytes, bytearray)):
        return f"<{len(value) if value is not None else 0} bytes>"
    if value is None:
        return ""
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\x00", "")
    return text if len(text) <= MAX_TAG_VALUE else text[:MAX_TAG_VALUE] + "…"


def instance_tags(path: str) -> dict:
    """Every element of the file except pixel data, flattened with sequence depth, bounded in
    count and value length. Runs in a worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(path, pixels=False)
        out: list[dict] = []
        truncated = False

        def walk(dataset, depth: int) -> None:
            nonlocal truncated
            try:
                elements = list(dataset)
            except Exception as e:
                out.append({"tag": "", "keyword": "", "name": f"<unreadable dataset: {type(e).__name__}>",
                            "vr": "", "value": "", "depth": depth})
                return
            for elem in elements:
                if len(out) >= MAX_TAG_ELEMENTS:
                    truncated = True
                    return
                if elem.tag in _PIXEL_TAGS:
                    continue
                row = {"tag": f"{elem.tag.group:04X}{elem.tag.element:04X}", "keyword": elem.keyword or "",
                       "name": elem.name or "", "vr": str(elem.VR), "depth": depth}
                if str(elem.VR) == "SQ":
                    try:
                        items = list(elem.value or [])
                    except Exception:
                        items = []
                    row["value"] = f"<sequence of {len(items)} item(s)>"
                    out.append(row)
                    for i, item in enumerate(items):
                        if len(out) >= MAX_TAG_ELEMENTS:
                            truncated = True
                            return
                        out.append({"tag": "FFFEE000", "keyword": "Item", "name": f"Item {i + 1}", "vr": "",
                                    "value": "", "depth": depth + 1})
                        walk(item, depth + 2)
                else:
                    row["value"] = _value_text(elem)
                    out.append(row)

        walk(ds.file_meta, 0)
        walk(ds, 0)
        return {"sop_instance_uid": _text(_get(ds, "SOPInstanceUID")), "elements": out,
                "count": len(out), "truncated": truncated}


# --- thumbnails ------------------------------------------------------------------------------
def encode_png(img: np.ndarray) -> bytes:
    """8-bit grayscale (h, w) or RGB (h, w, 3) as PNG (no dependency beyond zlib)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    color = img.ndim == 3
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, -1)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if color else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) covering the 1st-99th percentile of the finite values."""
    sample = values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [1, 99])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    width = max(float(hi - lo), 1.0)
    return float(lo + hi) / 2.0, width


def window_to_uint8(values: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """DICOM linear windowing (PS3.3 C.11.2.1.2) to 0..255."""
    width = max(width, 1.0)
    low = center - 0.5 - (width - 1) / 2
    scaled = (values.astype(np.float32) - low) / max(width - 1, 1.0)
    img = np.clip(scaled * 255.0, 0, 255)
    img = np.nan_to_num(img, nan=0.0)
    if invert:
        img = 255.0 - img
    return img.astype(np.uint8)


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Box-filter downsampling (area average) by index binning; fine for thumbnails."""
    h, w = img.shape[:2]
    ys = np.minimum((np.arange(out_h + 1) * h) // out_h, h)
    xs = np.minimum((np.arange(out_w + 1) * w) // out_w, w)
    f = img.astype(np.float32)
    # integral image for exact box averages
    ii = np.zeros((h + 1, w + 1) + f.shape[2:], np.float64)
    ii[1:, 1:] = f.cumsum(0).cumsum(1)
    y0, y1 = ys[:-1], np.maximum(ys[1:], ys[:-1] + 1)
    x0, x1 = xs[:-1], np.maximum(xs[1:], xs[:-1] + 1)
    y1, x1 = np.minimum(y1, h), np.minimum(x1, w)
    total = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).astype(np.float64)
    if f.ndim == 3:
        area = area[..., None]
    return np.clip(total / area, 0, 255).astype(np.uint8)


def render_png(frame: dict, *, window: tuple[float, float] | None, invert: bool,
               spacing: list[float] | None, size: int = THUMBNAIL_SIZE) -> bytes:
    """A decoded frame as a small PNG, windowed, aspect from pixel spacing."""
    values = frame["values"]
    if frame["kind"] == "rgb":
        img = values
    else:
        center, width = window or auto_window(values)
        img = window_to_uint8(values, center, width, invert)
    h, w = img.shape[:2]
    ph, pw = (spacing or [1.0, 1.0])
    phys_h, phys_w = h * ph, w * pw
    scale = size / max(phys_h, phys_w)
    out_h, out_w = max(1, round(phys_h * scale)), max(1, round(phys_w * scale))
    if out_h < h or out_w < w:
        img = _resize(img, min(out_h, h), min(out_w, w))
    return encode_png(img)


def render_thumbnail(path: str, frame: int = 0, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG of one frame of ``path``: window from the file's tags, else automatic. Runs in a worker."""
    facts = read_instance(path)
    frame = min(max(frame, 0), facts["frames"] - 1)
    decoded = decode_frames(path, [frame])[0]
    windows = facts["frame_info"][frame]["windows"] or facts["windows"]
    window = (windows[0]["center"], windows[0]["width"]) if windows else None
    invert = facts["photometric_interpretation"] == "MONOCHROME1"
    return render_png(decoded, window=window, invert=invert, spacing=facts["pixel_spacing"], size=size)


# --- geometry (pure) -------------------------------------------------------------------------
def _normal(orientation: list[float] | None) -> list[float] | None:
    if not orientation or len(orientation) != 6:
        return None
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    n = np.cross(r, c)
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        return None
    return (n / norm).tolist()


def slice_normal(orientation: list[float] | None) -> list[float] | None:
    """Unit normal (row direction x column direction) of an ImageOrientationPatient, or None."""
    return _normal(orientation)


_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z


def direction_letters(vector, threshold: float = 0.1) -> str:
    """Patient-orientation letters of an LPS direction (PS3.3 C.7.6.1.1.1): dominant axis first,
    e.g. [1,0,0] -> "L", [0,-1,0] -> "A", [0.7,0,0.7] -> "LH". Components below ``threshold``
    are ignored."""
    v = np.asarray(vector, float)
    order = np.argsort(-np.abs(v))
    return "".join(_LETTERS[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) >= threshold)


def orientation_markers(orientation: list[float] | None) -> dict | None:
    """Letters for the four edges of an image with this ImageOrientationPatient: the right edge
    lies in the row direction, the bottom edge in the column direction."""
    if not orientation or len(orientation) != 6:
        return None
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return {"left": direction_letters(-r), "right": direction_letters(r),
            "top": direction_letters(-c), "bottom": direction_letters(c)}


def order_slices(instances: list[dict]) -> dict:
    """Order the frames of a series' instances for display.

    Each entry of ``instances`` is ``read_instance`` output. Frames are ordered by their position
    along the slice normal (ImagePositionPatient . normal, normal from ImageOrientationPatient)
    when every frame has a position and all share one orientation; otherwise by InstanceNumber
    (then frame number); otherwise by file path. Returns ``{"slices": [...], "ordering": ...,
    "orientation", "normal", "spacing", "uniform", "distinct_positions"}``; each slice is
    ``{"instance": i, "frame": f, "position", "location", "instance_number"}``.
    """
    slices = []
    for i, inst in enumerate(instances):
        for f, info in enumerate(inst["frame_info"]):
            slices.append({"instance": i, "frame": f, "position": info["position"],
                           "orientation": info["orientation"], "instance_number": inst.get("instance_number"),
                           "path": inst.get("path", "")})
    orientation = slices[0]["orientation"] if slices else None
    if orientation is not None and not all(
            s["orientation"] is not None and max(abs(a - b) for a, b in zip(s["orientation"], orientation)) < 1e-3
            for s in slices):
        orientation = None  # e.g. a localizer series with three planes
    normal = _normal(orientation)
    geometric = normal is not None and all(s["position"] is not None for s in slices)
    if geometric:
        n = np.asarray(normal)
        for s in slices:
            s["location"] = float(np.dot(np.asarray(s["position"]), n))
        big = 1 << 62
        slices.sort(key=lambda s: (s["location"], s["instance_number"] if s["instance_number"] is not None
                                   else big, s["frame"], s["path"]))
        ordering = "geometry"
    else:
        for s in slices:
            s["location"] = None
        if slices and all(s["instance_number"] is not None for s in slices):
            slices.sort(key=lambda s: (s["instance_number"], s["frame"], s["path"]))
            ordering = "instance_number"
        else:
            slices.sort(key=lambda s: (s["path"], s["frame"]))
            ordering = "file_order"
    spacing, uniform, distinct = None, False, len(slices)
    if geometric and len(slices) > 1:
        locations = np.array([s["location"] for s in slices])
        steps = np.diff(locations)
        distinct = int(np.unique(np.round(locations, 3)).size)
        positive = steps[steps > 1e-4]
        if positive.size:
            spacing = float(np.median(positive))
            uniform = distinct == len(slices) and bool(np.all(np.abs(steps - spacing) <= max(0.01 * spacing, 1e-3)))
    for s in slices:
        del s["orientation"], s["path"]
    return {"slices": slices, "ordering": ordering, "orientation": orientation,
            "normal": normal if geometric else None, "spacing": spacing, "uniform": uniform,
            "distinct_positions": distinct}


def canonical_axes(orientation: list[float], normal: list[float]) -> dict:
    """How to turn a volume ``V[k, r, c]`` (k along ``normal``, r along the column direction,
    c along the row direction) into ``C[z, y, x]`` with x towards the patient's left, y towards
    the back, z towards the head: ``C = V.transpose(perm)`` then flipped on ``flip`` axes.

    Each volume axis is mapped to the patient axis it is closest to; ``oblique`` says whether any
    axis is more than ~8 degrees off (the reformat is then along the nearest axes)."""
    dirs = [np.asarray(normal, float), np.asarray(orientation[3:], float), np.asarray(orientation[:3], float)]
    assigned: dict[int, int] = {}  # patient axis (0=x,1=y,2=z) -> volume axis
    signs: dict[int, float] = {}
    strength = []
    pairs = sorted(((abs(d[p]), a, p) for a, d in enumerate(dirs) for p in range(3)), reverse=True)
    used_axes: set[int] = set()
    for mag, a, p in pairs:
        if a in used_axes or p in assigned:
            continue
        assigned[p], signs[p] = a, float(np.sign(dirs[a][p]) or 1.0)
        used_axes.add(a)
        strength.append(mag)
    perm = (assigned[2], assigned[1], assigned[0])  # C axes z, y, x
    flip = tuple(i for i, p in enumerate((2, 1, 0)) if signs[p] < 0)
    return {"perm": perm, "flip": flip, "oblique": min(strength) < 0.99}


PLANES = ("axial", "coronal", "sagittal")
PLANE_MARKERS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "H", "bottom": "F", "left": "R", "right": "L"},
    "sagittal": {"top": "H", "bottom": "F", "left": "A", "right": "P"},
}


def reorient(volume: np.ndarray, spacing_krc: tuple[float, float, float], axes: dict) -> tuple[np.ndarray, tuple]:
    """``C[z, y, x]`` (a view, no copy) and its spacing (dz, dy, dx)."""
    c = volume.transpose(axes["perm"])
    for axis in axes["flip"]:
        c = np.flip(c, axis)
    spacing = tuple(spacing_krc[a] for a in axes["perm"])
    return c, spacing


def plane_shape(shape_zyx: tuple[int, int, int], spacing_zyx: tuple, plane: str) -> dict:
    """Number of images and (row, column) pixel spacing of an MPR plane of ``C[z, y, x]``."""
    nz, ny, nx = shape_zyx
    dz, dy, dx = spacing_zyx
    return {
        "axial": {"count": nz, "rows": ny, "columns": nx, "pixel_spacing": [dy, dx]},
        "coronal": {"count": ny, "rows": nz, "columns": nx, "pixel_spacing": [dz, dx]},
        "sagittal": {"count": nx, "rows": nz, "columns": ny, "pixel_spacing": [dz, dy]},
    }[plane]


def mpr_slice(c: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One reformatted image of ``C[z, y, x]`` in radiological display orientation:
    axial (viewed from the feet: anterior up, patient's right on the left; index 0 = most
    inferior), coronal (viewed from the front: head up; index 0 = most anterior), sagittal
    (viewed from the patient's left: head up, anterior on the left; index 0 = patient's right)."""
    if plane == "axial":
        img = c[index, :, :]
    elif plane == "coronal":
        img = c[::-1, index, :]
    elif plane == "sagittal":
        img = c[::-1, :, index]
    else:
        raise DicomError(404, f"unknown plane {plane!r}; use axial, coronal or sagittal")
    return np.ascontiguousarray(img)


def ct_presets() -> list[dict]:
    return [
        {"name": "Lung", "center": -600.0, "width": 1500.0, "source": "preset"},
        {"name": "Mediastinum", "center": 40.0, "width": 400.0, "source": "preset"},
        {"name": "Abdomen", "center": 60.0, "width": 400.0, "source": "preset"},
        {"name": "Bone", "center": 400.0, "width": 1800.0, "source": "preset"},
        {"name": "Brain", "center": 40.0, "width": 80.0, "source": "preset"},
    ]


def iso_date(value: str | None) -> str | None:
    """DICOM DA ``YYYYMMDD`` (or ``YYYY.MM.DD``) as ``YYYY-MM-DD``; anything else unchanged."""
    v = (value or "").replace(".", "")
    if len(v) == 8 and v.isdigit():
        return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    return value


def jsonable(value: Any) -> Any:
    """Replace NaN/inf by None recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
