"""The session's dataset and DICOM API (extensions/vre_session): geometry, pixel values, guard, speed.

Pure logic is called directly; decoding goes through the real worker pool; the "every pydicom
test file" check and the download guard go through real HTTP handlers, in a real ``jupyter
server`` subprocess on 127.0.0.1 with the extension, a temporary root and a fake session manifest.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "extensions"))  # the working copy, not the installed package

from vre.catalog.index import _SCHEMA, index_dataset  # noqa: E402
from vre.demo import synth  # noqa: E402
from vre_session import dicom, guard, relay  # noqa: E402
from vre_session.datasets import BadRequest, Catalog, DatasetRef, NotFound  # noqa: E402
from vre_session.dicom import DicomError  # noqa: E402
from vre_session.series import Viewer  # noqa: E402
from vre_session.decoders import DecoderPool  # noqa: E402

SUBJECT = dict(patient_id="LUNG-0042", patient_name="LUNG-0042", sex="F", age=63)
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def viewer():
    v = Viewer(cache_mb=256)
    yield v
    v.close()


def files_source(viewer: Viewer, paths: list[str], key=None):
    async def get_paths():
        return [str(p) for p in paths]
    return viewer.source(key or ("test", *map(str, paths)), "file", {"source": "test"}, get_paths)


def instances(paths) -> list[dict]:
    return [dicom.read_instance(str(p)) for p in paths]


def voxel_of(meta: dict, point) -> tuple[int, int, int]:
    """(slice index, row, column) of the voxel nearest to a patient point, from the API's geometry."""
    point = np.asarray(point, float)
    normal = np.asarray(meta["normal"])
    k = min(range(meta["num_slices"]), key=lambda i: abs(float(np.dot(normal, point - meta["slices"][i]["position"]))))
    origin = np.asarray(meta["slices"][k]["position"])
    iop = np.asarray(meta["orientation"])
    row_spacing, col_spacing = meta["pixel_spacing"]
    col = round(float(np.dot(point - origin, iop[:3])) / col_spacing)
    row = round(float(np.dot(point - origin, iop[3:])) / row_spacing)
    return k, row, col


# --- geometry ---------------------------------------------------------------------------------
def test_slices_are_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=32, cols=32, slices=15, shuffle_names=True, seed=3)
    paths = sorted(series.glob("*.dcm"))
    facts = instances(paths)
    numbers = [f["instance_number"] for f in facts]
    zs_by_name = [f["frame_info"][0]["position"][2] for f in facts]
    assert numbers != sorted(numbers) and zs_by_name != sorted(zs_by_name), "the test needs shuffled input"
    order = dicom.order_slices(facts)
    assert order["ordering"] == "geometry"
    zs = [s["position"][2] for s in order["slices"]]
    assert zs == sorted(zs) and len(set(zs)) == 15  # along +z (the normal of [1,0,0,0,1,0]): feet to head
    assert order["spacing"] == pytest.approx(2.5) and order["uniform"]
    assert [s["location"] for s in order["slices"]] == pytest.approx(zs)


def test_feet_first_series_orders_along_its_normal_and_reformats_to_standard_view(tmp_path, viewer):
    head = synth.make_ct_series(tmp_path / "hf", **SUBJECT, rows=64, cols=64, slices=13, seed=5, shuffle_names=True)
    feet = synth.make_ct_series(tmp_path / "ff", **SUBJECT, rows=64, cols=64, slices=13, seed=5, feet_first=True,
                                shuffle_names=True)
    metas, centres = {}, {}
    for name, series in (("head", head), ("feet", feet)):
        source = run(files_source(viewer, sorted(series.glob("*.dcm"))))
        meta = source.metadata(viewer.cache_bytes)
        metas[name] = meta
        assert meta["ordering"] == "geometry" and meta["mpr"]["available"]
        locations = [s["location"] for s in meta["slices"]]
        assert locations == sorted(locations)
        # nodule centre voxel through the native slice and through the axial reformat
        k, row, col = voxel_of(meta, synth.NODULE_CENTER)
        native = run(viewer.slice(source, k))["values"]
        assert native[row, col] == synth.HU_NODULE
        axial = run(viewer.mpr(source, "axial", 0))
        z_index = next(i for i in range(meta["mpr"]["planes"]["axial"]["count"])
                       if run(viewer.mpr(source, "axial", i))["location"] == pytest.approx(synth.NODULE_CENTER[2]))
        img = run(viewer.mpr(source, "axial", z_index))["values"]
        assert axial["markers"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
        screen_col = col if name == "head" else img.shape[1] - 1 - col  # feet first: columns reversed
        assert img[row, screen_col] == synth.HU_NODULE
        centres[name] = (row, screen_col, col)
    assert metas["head"]["normal"] == pytest.approx([0, 0, 1]) and metas["feet"]["normal"] == pytest.approx([0, 0, -1])
    assert metas["feet"]["slices"][0]["position"][2] > metas["feet"]["slices"][-1]["position"][2]  # head to feet
    # feet first, rows run to the patient's right: the native image is mirrored, its markers say so
    assert metas["head"]["orientation_markers"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert metas["feet"]["orientation_markers"] == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    # ... and the axial reformat shows both the radiological way: the nodule, in the right lung,
    # is on the left of the screen in both, although it is on the right of the feet-first native image
    assert centres["head"][1] < 32 and centres["feet"][1] < 32 and centres["feet"][2] > 32


def test_ordering_falls_back_to_instance_number_then_file_order():
    def inst(path, number, position):
        return {"path": path, "instance_number": number,
                "frame_info": [{"position": position, "orientation": None}]}
    order = dicom.order_slices([inst("a", 3, None), inst("b", 1, None), inst("c", 2, None)])
    assert order["ordering"] == "instance_number" and [s["instance"] for s in order["slices"]] == [1, 2, 0]
    order = dicom.order_slices([inst("c", None, None), inst("a", None, None), inst("b", 1, None)])
    assert order["ordering"] == "file_order" and [s["instance"] for s in order["slices"]] == [1, 2, 0]
    # mixed orientations (a three-plane localizer): no geometry, no MPR
    mixed = [{"path": str(i), "instance_number": i, "frame_info": [{"position": [0, 0, i], "orientation": o}]}
             for i, o in enumerate([[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1]])]
    assert dicom.order_slices(mixed)["ordering"] == "instance_number"


def test_orientation_markers():
    assert dicom.orientation_markers([1, 0, 0, 0, 1, 0]) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert dicom.orientation_markers([0, 1, 0, 0, 0, -1]) == {"left": "A", "right": "P", "top": "H", "bottom": "F"}
    assert dicom.orientation_markers([1, 0, 0, 0, 0, -1]) == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert dicom.direction_letters([0.8, 0, 0.6]) == "LH"
    assert dicom.orientation_markers(None) is None


# --- pixel values -----------------------------------------------------------------------------
def test_hu_readout_of_the_phantom(tmp_path, viewer):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=128, cols=128, slices=12, seed=7,
                                  shuffle_names=True)
    source = run(files_source(viewer, sorted(series.glob("*.dcm"))))
    meta = source.metadata(viewer.cache_bytes)
    assert meta["units"] == "HU" and meta["rescale"]["intercept"] == synth.RESCALE_INTERCEPT
    k, row, col = voxel_of(meta, synth.NODULE_CENTER)
    result = run(viewer.slice(source, k))
    assert result["values"].dtype == np.int16
    assert result["values"][row, col] == synth.HU_NODULE == 60
    for name, (x, y, expected) in synth.CT_LANDMARKS.items():
        k, row, col = voxel_of(meta, (x, y, synth.Z_CENTER_MM))
        origin = meta["slices"][k]["position"]
        truth = synth.phantom_hu_at(origin[0] + col * meta["pixel_spacing"][1], origin[1] + row * meta["pixel_spacing"][0],
                                    origin[2])
        assert run(viewer.slice(source, k))["values"][row, col] == truth, name
    assert result["window"] == {"center": -600.0, "width": 1500.0, "name": "Window 1", "source": "tags"}


def _retag(path, out, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(out)
    return out


def test_monochrome1_is_flagged_and_values_are_not_inverted(tmp_path, viewer):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=32, cols=32, slices=1)
    original = series / "IMG0001.dcm"
    flipped = _retag(original, tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1")
    a = run(files_source(viewer, [original]))
    b = run(files_source(viewer, [flipped]))
    assert a.metadata(viewer.cache_bytes)["invert"] is False
    meta = b.metadata(viewer.cache_bytes)
    assert meta["invert"] is True and meta["photometric_interpretation"] == "MONOCHROME1"
    assert np.array_equal(run(viewer.slice(a, 0))["values"], run(viewer.slice(b, 0))["values"])
    # the thumbnail, which the server renders, is inverted
    png_a, png_b = run(viewer.thumbnail(str(original))), run(viewer.thumbnail(str(flipped)))
    assert png_a.startswith(b"\x89PNG") and png_a != png_b


@pytest.mark.parametrize("bits,signed,values", [
    (8, False, [0, 17, 200, 255]),
    (8, True, [-128, -1, 0, 127]),
    (16, False, [0, 1000, 40000, 65535]),
    (16, True, [-32768, -1000, 0, 32767]),
])
def test_signed_and_unsigned_8_and_16_bit(tmp_path, viewer, bits, signed, values):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=8, cols=8, slices=1)
    ds = pydicom.dcmread(series / "IMG0001.dcm")
    dtype = f"{'i' if signed else 'u'}{bits // 8}"
    arr = np.resize(np.array(values, dtype=dtype), (8, 8))
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    del ds.PixelData
    ds.PixelData = arr.astype("<" + dtype).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    path = tmp_path / f"px{bits}{signed}.dcm"
    ds.save_as(path)
    source = run(files_source(viewer, [path]))
    out = run(viewer.slice(source, 0))["values"]
    assert np.array_equal(out, arr)
    assert out.dtype == (np.uint16 if max(values) > 32767 else np.int16)


def test_fractional_rescale_gives_float32(tmp_path, viewer):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=16, cols=16, slices=1)
    path = _retag(series / "IMG0001.dcm", tmp_path / "f.dcm", RescaleSlope="0.5", RescaleIntercept="-10.25")
    raw = pydicom.dcmread(path).pixel_array
    out = run(viewer.slice(run(files_source(viewer, [path])), 0))["values"]
    assert out.dtype == np.float32 and np.allclose(out, raw * 0.5 - 10.25)


def test_compressed_transfer_syntaxes_decode_to_the_same_values(tmp_path, viewer):
    """RLE, JPEG 2000 and (the transfer syntax routing of) HTJ2K through the decoder plugins: the
    nodule still reads 60 HU; pydicom's JPEG-LS/RLE/J2K lossless variants of MR_small equal it."""
    from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, RLELossless

    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=64, cols=64, slices=1)
    plain = series / "IMG0001.dcm"
    reference = run(viewer.slice(run(files_source(viewer, [plain])), 0))["values"]
    for ts in (RLELossless, JPEG2000Lossless, HTJ2KLossless):
        ds = pydicom.dcmread(plain)
        if ts == HTJ2KLossless:  # no HTJ2K encoder here: a Part 1 codestream, which HTJ2K decoders read
            ds.compress(JPEG2000Lossless)
            ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        else:
            ds.compress(ts)
        path = tmp_path / f"{ts.keyword}.dcm"
        ds.save_as(path)
        source = run(files_source(viewer, [path]))
        assert source.metadata(viewer.cache_bytes)["transfer_syntax"]["compressed"]
        assert np.array_equal(run(viewer.slice(source, 0))["values"], reference), ts.name
    mr = run(viewer.slice(run(files_source(viewer, [PYDICOM_FILES / "MR_small.dcm"])), 0))["values"]
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        other = run(viewer.slice(run(files_source(viewer, [PYDICOM_FILES / name])), 0))["values"]
        assert np.array_equal(other, mr), name
    lossy = run(files_source(viewer, [PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"]))  # JPEG baseline, YBR
    assert run(viewer.slice(lossy, 0))["values"].shape == (100, 100, 3)
    with pytest.raises(DicomError) as e:
        run(viewer.slice(run(files_source(viewer, [PYDICOM_FILES / "JPEG2000-embedded-sequence-delimiter.dcm"])), 0))
    assert e.value.status == 415 and "cannot decode transfer syntax JPEG 2000" in e.value.message


def _enhanced_multiframe(series_dir: Path, out: Path, order: list[int]) -> Path:
    """A multi-frame file from a single-frame series: per-frame positions in ``order``,
    orientation/spacing/rescale in the shared functional groups."""
    slices = sorted((pydicom.dcmread(p) for p in series_dir.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    first = slices[0]
    ds = pydicom.dcmread(series_dir / "IMG0001.dcm")
    frames = [slices[i] for i in order]
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    po, pm, pv = Dataset(), Dataset(), Dataset()
    po.ImageOrientationPatient = first.ImageOrientationPatient
    pm.PixelSpacing, pm.SliceThickness = first.PixelSpacing, first.SliceThickness
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = "1", str(synth.RESCALE_INTERCEPT), "HU"
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in frames:
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = f.ImagePositionPatient
        item.PlanePositionSequence = Sequence([pp])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, tag)
    ds.PixelData = b"".join(f.PixelData for f in frames)
    ds.save_as(out)
    return out


def test_multiframe_file_is_ordered_by_per_frame_positions(tmp_path, viewer):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=32, cols=32, slices=6, seed=11)
    shuffled = [3, 0, 5, 1, 4, 2]
    path = _enhanced_multiframe(series, tmp_path / "mf.dcm", shuffled)
    single = run(files_source(viewer, sorted(series.glob("*.dcm"))))
    multi = run(files_source(viewer, [path]))
    meta = multi.metadata(viewer.cache_bytes)
    assert meta["num_instances"] == 1 and meta["num_slices"] == 6 and meta["ordering"] == "geometry"
    assert [s["frame"] for s in meta["slices"]] == [shuffled.index(i) for i in range(6)]
    assert meta["rescale"]["intercept"] == synth.RESCALE_INTERCEPT and meta["pixel_spacing"] == pytest.approx([11.2, 11.2])
    for k in range(6):
        assert np.array_equal(run(viewer.slice(multi, k))["values"], run(viewer.slice(single, k))["values"])
    assert meta["mpr"]["available"]
    assert np.array_equal(run(viewer.mpr(multi, "coronal", 10))["values"], run(viewer.mpr(single, "coronal", 10))["values"])


def test_mpr_shapes_spacing_and_values(tmp_path, viewer):
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=40, cols=48, slices=10, thickness=2.5,
                                  spacing=(0.8, 0.7), shuffle_names=True)
    source = run(files_source(viewer, sorted(series.glob("*.dcm"))))
    planes = source.metadata(viewer.cache_bytes)["mpr"]["planes"]
    expected = {"axial": (10, 40, 48, [0.8, 0.7]), "coronal": (40, 10, 48, [2.5, 0.7]),
                "sagittal": (48, 10, 40, [2.5, 0.8])}
    for plane, (count, rows, columns, spacing) in expected.items():
        got = planes[plane]
        assert (got["count"], got["rows"], got["columns"]) == (count, rows, columns), plane
        assert got["pixel_spacing"] == pytest.approx(spacing), plane
    volume = np.stack([run(viewer.slice(source, k))["values"] for k in range(10)])  # [z up, y, x]
    cor = run(viewer.mpr(source, "coronal", 17))
    sag = run(viewer.mpr(source, "sagittal", 5))
    assert cor["values"].shape == (10, 48) and cor["pixel_spacing"] == pytest.approx([2.5, 0.7])
    assert np.array_equal(cor["values"], volume[::-1, 17, :])  # head at the top
    assert np.array_equal(sag["values"], volume[::-1, :, 5])
    assert np.array_equal(run(viewer.mpr(source, "axial", 4))["values"], volume[4])
    assert sag["markers"] == {"top": "H", "bottom": "F", "left": "A", "right": "P"}
    with pytest.raises(DicomError) as e:
        run(viewer.mpr(source, "oblique", 0))
    assert e.value.status == 404
    with pytest.raises(DicomError) as e:
        run(viewer.mpr(source, "axial", 10))
    assert e.value.status == 404


@pytest.mark.parametrize("acquisition", ["sagittal", "feet_first"])
def test_mpr_cut_from_cached_slices_equals_mpr_from_the_volume(tmp_path, acquisition):
    """Planes cut from the cached slices (no volume built) are the volume's, image for image,
    for an acquisition whose axes are permuted and flipped."""
    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=20, cols=24, slices=9, seed=4,
                                  feet_first=acquisition == "feet_first")
    if acquisition == "sagittal":
        for i, f in enumerate(sorted(series.glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            ds.ImageOrientationPatient, ds.ImagePositionPatient = [0, 1, 0, 0, 0, -1], [i * 2.5, -10, 50]
            ds.save_as(f)
    paths = sorted(series.glob("*.dcm"))
    from_slices, from_volume = Viewer(cache_mb=64), Viewer(cache_mb=64)
    from_volume._slices.max_bytes = 0  # no room for the slices: the volume path
    try:
        a, b = run(files_source(from_slices, paths)), run(files_source(from_volume, paths))
        planes = a.metadata(from_slices.cache_bytes)["mpr"]["planes"]
        for plane, info in planes.items():
            for i in range(info["count"]):
                x, y = run(from_slices.mpr(a, plane, i)), run(from_volume.mpr(b, plane, i))
                assert np.array_equal(x["values"], y["values"]) and x["location"] == y["location"], (plane, i)
        assert len(from_slices._volumes) == 0 and len(from_volume._volumes) == 1
    finally:
        from_slices.close()
        from_volume.close()


def test_canonical_axes_of_sagittal_and_coronal_acquisitions():
    sag = dicom.canonical_axes([0, 1, 0, 0, 0, -1], dicom.slice_normal([0, 1, 0, 0, 0, -1]))
    assert sag["perm"] == (1, 2, 0) and set(sag["flip"]) == {0, 2} and not sag["oblique"]
    cor = dicom.canonical_axes([1, 0, 0, 0, 0, -1], dicom.slice_normal([1, 0, 0, 0, 0, -1]))
    assert cor["perm"] == (1, 0, 2) and not cor["oblique"]
    tilted = [1, 0, 0, 0, np.cos(0.3), np.sin(0.3)]
    assert dicom.canonical_axes(tilted, dicom.slice_normal(tilted))["oblique"]


def test_png_encoder_roundtrip_header():
    png = dicom.encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert int.from_bytes(png[16:20], "big") == 8


# --- decoder workers --------------------------------------------------------------------------
def test_worker_timeout_kills_and_recovers():
    pool = DecoderPool(size=1, timeout=1.0, module="time", allowed=frozenset({"sleep"}))
    try:
        started = time.monotonic()
        with pytest.raises(DicomError) as e:
            pool.call("sleep", 30)
        assert e.value.status == 422 and "longer than 1 s" in e.value.message
        assert time.monotonic() - started < 3 and pool.killed == 1
        pool.call("sleep", 0)  # a fresh worker answers
    finally:
        pool.close()


def test_worker_crash_is_a_4xx(tmp_path):
    pool = DecoderPool(size=1, timeout=5.0, module="os", allowed=frozenset({"abort"}))
    try:
        with pytest.raises(DicomError) as e:
            pool.call("abort")
        assert e.value.status == 422 and "crashed" in e.value.message
    finally:
        pool.close()
    real = DecoderPool(size=1)
    try:
        with pytest.raises(DicomError) as e:
            real.call("not_allowed")
        assert e.value.status == 400
    finally:
        real.close()


def _pydicom_files() -> list[Path]:
    """Every test file shipped inside the pydicom wheel that is present locally (no downloads)."""
    files = {Path(p) for p in get_testdata_files()} | {p for p in PYDICOM_FILES.rglob("*")}
    return sorted(p for p in files if p.is_file())


# --- the download guard (path logic) ----------------------------------------------------------
@pytest.fixture
def guarded(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    (data / "ds1" / "sub").mkdir(parents=True)
    (data / "ds1" / "sub" / "x.csv").write_text("a,b\n")
    (home / "project").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    assert guard.ensure_data_link(str(home), str(data)) == str(home / "data")
    (home / "sneaky").symlink_to(data / "ds1" / "sub" / "x.csv")
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", home / "copy.dcm")
    g = guard.Guard(str(home), [str(data)], slug_of=lambda p: "ds1" if "/ds1" in p else None)
    return g, home, data


@pytest.mark.parametrize("path", [
    "data/ds1/sub/x.csv", "data/ds1/sub", "data", "project/../data/ds1/sub/x.csv", "./data/ds1/sub/x.csv",
    "data//ds1//sub/x.csv", "%2e%2e/home/data/ds1/sub/x.csv", "data/ds1/%2e%2e/ds1/sub/x.csv",
    "sneaky", "data/ds1/sub/missing.dcm",
])
def test_guard_refuses_dataset_paths_however_written(guarded, path):
    g, home, data = guarded
    verdict = g.classify(path)
    assert verdict is not None and verdict[0] == "dataset", path


def test_guard_resolves_absolute_and_traversal_forms(guarded):
    g, home, data = guarded
    real = str(data / "ds1" / "sub" / "x.csv")
    assert g.classify(real)[2] == os.path.realpath(real)  # "//<abs>" after /files/ is an absolute path
    assert g.classify(f"../{home.name}/data/ds1/sub/x.csv")[0] == "dataset"
    assert g.classify("notes.txt") is None and g.classify("project") is None
    assert g.classify("copy.dcm")[0] == "dicom"  # defence in depth: DICOM anywhere
    assert g.classify("copy.dcm", sniff=False) is None
    assert g.classify("data/ds1", files_only=True) is None  # listings are fine
    assert g.classify("nul\x00byte") is None


def test_guard_link_is_not_replaced(tmp_path):
    (tmp_path / "data").mkdir()
    assert guard.ensure_data_link(str(tmp_path), "/nonexistent-data-root") is None
    assert guard.ensure_data_link(str(tmp_path), str(tmp_path / "elsewhere")) is None


def test_guard_refusals_are_audited(guarded, monkeypatch):
    g, home, data = guarded
    events = []
    monkeypatch.setattr(relay, "audit_hook", lambda action, **kw: events.append((action, kw)))

    class FakeRequest:
        path, method, query = "/files/data/ds1/sub/x.csv", "GET", "download=1"

    class FakeHandler:
        request, current_user = FakeRequest(), "alice"

    with pytest.raises(guard.DownloadRefused) as e:
        g.check(FakeHandler(), "data/ds1/sub/x.csv", "files")
    assert e.value.status_code == 403 and e.value.body()["message"] == guard.MESSAGE
    (action, fields), = events
    assert action == "download.refused" and fields["outcome"] == "denied" and fields["dataset"] == "ds1"
    assert fields["target"] == os.path.realpath(data / "ds1" / "sub" / "x.csv")
    assert fields["details"]["route"] == "files" and fields["details"]["query"] == "download=1"
    FakeHandler.current_user = None  # unauthenticated probes are refused but not attributed to the user
    with pytest.raises(guard.DownloadRefused):
        g.check(FakeHandler(), "data/ds1/sub/x.csv", "files")
    assert len(events) == 1


# --- browsing 100,000 series ------------------------------------------------------------------
def _big_index(path: Path, n: int = 100_000) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA)
    rng = np.random.default_rng(0)
    patients, studies = 10_000, 40_000
    modalities = np.array(["CT", "MR", "PT", "CR", "US"])
    parts = np.array(["CHEST", "PROSTATE", "HEAD", "ABDOMEN", "BREAST"])
    descriptions = np.array(["AX LUNG 2mm", "t2_tse_tra", "COR T1", "SAG T2", "DWI b800", "ADC", "PET WB", "Scout"])
    conn.executemany("INSERT INTO patients VALUES (?, ?, ?, ?)",
                     ((f"PAT-{i:06d}", "F" if i % 2 else "M", 40.0 + i % 40, None) for i in range(patients)))
    conn.executemany("INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
                     ((f"1.2.3.{i}", f"PAT-{i % patients:06d}", f"20{10 + i % 14}-01-{1 + i % 28:02d}",
                       ("CT THORAX", "MR PROSTATE", "PET CT")[i % 3], f"ACC{i}") for i in range(studies)))
    study_of = rng.integers(0, studies, n)
    mod, part, desc = rng.integers(0, 5, n), rng.integers(0, 5, n), rng.integers(0, 8, n)
    conn.executemany("INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     ((f"1.2.4.{i}", f"1.2.3.{study_of[i]}", modalities[mod[i]], parts[part[i]], descriptions[desc[i]],
                       "SIEMENS", 512, 512, "[0.7, 0.7]", 2.5, 120, f"d{i}") for i in range(n)))
    conn.commit()
    conn.close()


def test_browse_100k_series_filtered_page_under_200ms(tmp_path):
    catalog_dir = tmp_path / "catalog" / "big"
    catalog_dir.mkdir(parents=True)
    started = time.perf_counter()
    _big_index(catalog_dir / "index.sqlite")
    built = time.perf_counter() - started
    catalog = Catalog(DatasetRef("big", str(tmp_path / "data" / "big"), str(catalog_dir)))
    started = time.perf_counter()
    catalog.warm()  # what the extension does in the background at load
    warm = time.perf_counter() - started
    queries = {
        "page 1000 of all": dict(offset=1000),
        "modality": dict(modality="CT", offset=500),
        "modality+body part+text": dict(modality="CT", body_part="CHEST", q="lung", offset=100),
        "text, 12% match": dict(q="lung"),
        "text, rare (one patient)": dict(q="pat-000123"),
        "two terms": dict(q="PAT-0001 ct"),
        "deep offset": dict(modality="MR,CT", offset=30_000),
    }
    timings = {}
    for name, kw in queries.items():
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            page = catalog.browse(limit=50, **kw)
            runs.append(time.perf_counter() - t)
        timings[name] = statistics.median(runs)
        assert page["total"] > 0 and len(page["items"]) == min(50, max(0, page["total"] - kw.get("offset", 0)))
    t = time.perf_counter()
    patients = catalog.patients(limit=50, offset=200)
    timings["patients page"] = time.perf_counter() - t
    report = ", ".join(f"{k}: {v * 1000:.0f} ms" for k, v in timings.items())
    print(f"\n100k series: index written in {built:.1f} s, browse table built in {warm:.2f} s; {report}")
    assert patients["total"] > 9_900  # (a few patients may have no series)
    for name, seconds in timings.items():
        assert seconds < 0.2, f"{name} took {seconds * 1000:.0f} ms (all: {report})"
    # the filters mean what they say
    page = catalog.browse(modality="ct", body_part="chest", q="LUNG", limit=1000)
    assert all(i["modality"] == "CT" and i["body_part"] == "CHEST" and "lung" in i["description"].lower()
               for i in page["items"])
    assert catalog.browse(q="pat-000123", limit=1000)["total"] == catalog.browse(patient="PAT-000123")["total"] > 0


def test_browse_rejects_bad_paging_and_unknown_series(tmp_path):
    catalog_dir = tmp_path / "catalog" / "x"
    catalog_dir.mkdir(parents=True)
    _big_index(catalog_dir / "index.sqlite", n=10)
    catalog = Catalog(DatasetRef("x", str(tmp_path / "data" / "x"), str(catalog_dir)))
    for bad in (dict(limit=0), dict(limit=5000), dict(offset=-1), dict(limit="ten")):
        with pytest.raises(BadRequest):
            catalog.browse(**bad)
    with pytest.raises(NotFound):
        catalog.series_files("no-such-series")


def test_indexed_paths_never_leave_the_dataset_folder(tmp_path):
    """A tampered index (relpaths with '..', or through a link out of the folder) yields only
    the files inside; a series with nothing inside is "no readable files"."""
    data, catalog_dir = tmp_path / "data" / "x", tmp_path / "catalog" / "x"
    (data / "s").mkdir(parents=True)
    catalog_dir.mkdir(parents=True)
    (data / "out").symlink_to(tmp_path)
    conn = sqlite3.connect(catalog_dir / "index.sqlite")
    conn.executescript(_SCHEMA)
    rows = [("s/a.dcm", "1.9", 1), ("../../etc/passwd", "1.9", 2), ("out/secret.dcm", "1.9", 3),
            ("../elsewhere/b.dcm", "1.8", 1)]
    conn.executemany("INSERT INTO files (relpath, dir, size, mtime_ns, series_uid, instance_number) "
                     "VALUES (?, 's', 0, 0, ?, ?)", rows)
    conn.commit()
    conn.close()
    catalog = Catalog(DatasetRef("x", str(data), str(catalog_dir)))
    assert catalog.series_files("1.9") == [str(data / "s" / "a.dcm")]
    assert [p for p, _ in catalog.series_instances("1.9")] == [str(data / "s" / "a.dcm")]
    with pytest.raises(NotFound, match="no readable files"):
        catalog.series_files("1.8")


# --- header facts from the catalogue index, pixels from the slice cache ------------------------
class CountingPool(DecoderPool):
    """The real pool, counting the calls by name (what a viewer operation really read)."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def call(self, name, *args, **kw):
        self.calls[name] = self.calls.get(name, 0) + 1
        return super().call(name, *args, **kw)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A CT series (shuffled names), an MR series and pydicom's test files, indexed."""
    base = tmp_path_factory.mktemp("indexed")
    data = base / "data"
    synth.make_ct_series(data / "ct", **SUBJECT, rows=48, cols=48, slices=17, shuffle_names=True, seed=9)
    for src in PYDICOM_FILES.glob("*.dcm"):
        (data / "pyd").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, data / "pyd" / src.name)
    (base / "catalog").mkdir()
    index_dataset(data, base / "catalog" / "index.sqlite", workers=1)
    return data, Catalog(DatasetRef("ix", str(data), str(base / "catalog")))


def test_index_facts_are_the_header_facts(indexed):
    """What the index recorded at registration gives exactly what reading the header gives, for
    every file it recorded; enhanced multi-frame files (functional groups) are left to the header."""
    data, catalog = indexed
    conn = sqlite3.connect(catalog.ref.index_path)
    rows = conn.execute("SELECT relpath, viewer, sop_instance_uid, series_uid, study_uid FROM files "
                        "WHERE error IS NULL").fetchall()
    fields = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'viewer_fields'").fetchone()[0])
    assert json.loads(conn.execute("SELECT value FROM meta WHERE key = 'viewer_columns'").fetchone()[0]) == {
        "SOPInstanceUID": "sop_instance_uid", "SeriesInstanceUID": "series_uid", "StudyInstanceUID": "study_uid"}
    conn.close()
    compared, left = 0, []
    for rel, stored, *uids in rows:
        uids = dict(zip(("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"), uids))
        if stored is None:
            left.append(rel)
            continue
        try:
            expected = dicom.read_instance(str(data / rel))
        except DicomError:
            continue  # the index is more lenient than a full header parse; such files are not shown anyway
        facts = dicom.facts_from_index(stored, str(data / rel), fields, uids)
        native = facts.pop("native", None)
        assert facts == expected, rel
        assert native == dicom.native_layout(facts, json.loads(stored).get("px")), rel
        compared += 1
    assert compared >= 60
    assert left and all(pydicom.dcmread(data / rel, stop_before_pixels=True).get("PerFrameFunctionalGroupsSequence")
                        for rel in left)
    with pytest.raises(ValueError):  # an index without an element the viewer reads is not used
        rel, stored = next(r for r in rows if r[1])[:2]
        dicom.facts_from_index(stored, str(data / rel), [f if f != "RescaleSlope" else "X" for f in fields])


def test_opening_an_indexed_series_reads_no_header_and_orders_as_the_headers_do(indexed):
    data, catalog = indexed
    uid = pydicom.dcmread(next((data / "ct").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    pool = CountingPool()
    viewer = Viewer(pool=pool, cache_mb=64)
    try:
        async def from_index():
            return await asyncio.to_thread(catalog.series_instances, uid, dicom.facts_from_index)

        async def from_headers():
            return catalog.series_files(uid)

        label = {"source": "series", "dataset": "ix", "series_uid": uid}
        indexed_source = run(viewer.source(("ix", 1), "series", label, from_index))
        assert pool.calls.get("read_instance", 0) == 0
        header_source = run(viewer.source(("ix", 2), "series", label, from_headers))
        assert pool.calls["read_instance"] == 17
        assert indexed_source.metadata(viewer.cache_bytes) == header_source.metadata(viewer.cache_bytes)
        assert indexed_source.order["ordering"] == "geometry" and indexed_source.metadata(1 << 30)["mpr"]["available"]
        # a file changed since registration is read from its header, the others still from the index
        changed = next((data / "ct").glob("*.dcm"))
        was = os.stat(changed)
        os.utime(changed, ns=(time.time_ns(), time.time_ns()))
        try:
            facts = catalog.series_instances(uid, dicom.facts_from_index)
        finally:  # the module's other tests use this index as registered
            os.utime(changed, ns=(was.st_atime_ns, was.st_mtime_ns))
        assert [str(p) for p, f in facts if f is None] == [str(changed)]
        assert len(facts) == 17
        # an index written before the viewer's column (format 1) still opens, from the headers
        assert all(f is None for _, f in catalog.series_instances(uid, None))
    finally:
        viewer.close()


def test_stream_gives_every_slice_once_nearest_first_and_feeds_the_volume(indexed):
    from vre_session.handlers import stream_order, stream_record

    assert stream_order(3, 6) == [3, 4, 2, 5, 1, 0] and stream_order(0, 3) == [0, 1, 2]
    assert stream_order(3, 6, 1) == [3, 4, 5, 2, 1, 0] and stream_order(3, 6, -1) == [3, 2, 1, 0, 4, 5]
    data, catalog = indexed
    uid = pydicom.dcmread(next((data / "ct").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    pool = CountingPool()
    viewer = Viewer(pool=pool, cache_mb=64)
    try:
        async def listing():
            return catalog.series_instances(uid, dicom.facts_from_index)

        source = run(viewer.source(("ix", "stream"), "series", {"source": "series"}, listing))
        order = stream_order(8, 17)

        async def collect():
            return [(i, r) async for i, r in viewer.stream(source, order)]

        got = run(collect())
        assert [i for i, _ in got] == order
        assert "decode_frames" not in pool.calls  # uncompressed pixels where the index found them
        for i, result in got:  # ... are the values the decoders give
            s, inst = source.slice_ref(i)
            decoded = pool.call("decode_frames", inst["path"], [0], [inst["frame_info"][0]])[0]
            assert np.array_equal(result["values"], decoded["values"]) and result["range"] == decoded["range"]
        pool.calls.clear()
        for i, result in got:  # the same values and facts as one slice at a time
            single = run(viewer.slice(source, i))
            assert np.array_equal(single["values"], result["values"]) and single["location"] == result["location"]
            record = b"".join(stream_record(i, result))
            n = int.from_bytes(record[:4], "little")
            header = json.loads(record[4:4 + n])
            assert header["index"] == i and header["count"] == 17 and header["dtype"] == "int16"
            assert header["nbytes"] == len(record) - 4 - n == 48 * 48 * 2
            assert header["range"] == [int(result["values"].min()), int(result["values"].max())]
        run(viewer.mpr(source, "coronal", 20))  # MPR from the slices already decoded: no decode
        volume = run(viewer.volume(source))
        assert "decode_frames" not in pool.calls and volume.shape == (17, 48, 48)
        assert np.array_equal(volume[5], got[order.index(5)][1]["values"])
        error = b"".join(stream_record(4, DicomError(422, "cannot decode the pixel data: x")))
        n = int.from_bytes(error[:4], "little")
        assert json.loads(error[4:4 + n]) == {"index": 4, "error": {"status": 422, "reason": "unreadable",
                                                                    "message": "cannot decode the pixel data: x"}}
    finally:
        viewer.close()


def _indexed_facts(data: Path) -> list[tuple[str, dict]]:
    """(path, facts from the index) of every indexed file under ``data`` (indexed here)."""
    ref = DatasetRef("nv", str(data), str(data.parent / f"{data.name}-catalog"))
    index_dataset(data, Path(ref.index_path), workers=1)
    conn = sqlite3.connect(ref.index_path)
    uids = [r[0] for r in conn.execute("SELECT DISTINCT series_uid FROM files WHERE error IS NULL")]
    conn.close()
    return [pair for uid in uids for pair in Catalog(ref).series_instances(uid, dicom.facts_from_index)]


@pytest.mark.parametrize("bits,stored,signed,shape,changes", [
    (16, 12, False, (48, 40), {}),                                   # CT as most scanners write it
    (16, 12, True, (48, 40), {}),                                    # signed: sign-extended from bit 11
    (16, 16, False, (32, 32), {"RescaleIntercept": "0"}),            # above 32767: uint16 on the wire
    (16, 16, True, (32, 32), {"transfer_syntax": "implicit"}),
    (8, 8, False, (5, 5), {"RescaleIntercept": "0"}),                 # odd length: padded to even
    (8, 7, True, (6, 4), {"RescaleIntercept": "0"}),
    (16, 12, False, (16, 16), {"PhotometricInterpretation": "MONOCHROME1"}),
    (16, 12, False, (16, 16), {"RescaleSlope": "0.5", "RescaleIntercept": "-10.25"}),  # float32
])
def test_native_reads_give_the_decoders_values(tmp_path, bits, stored, signed, shape, changes):
    """Where the index located uncompressed pixels, reading them at their offset gives exactly
    what pydicom's decode gives (bits above BitsStored, set here on purpose, masked off or
    sign-extended), with the same wire type and range."""
    from pydicom.uid import ImplicitVRLittleEndian

    series = synth.make_ct_series(tmp_path / "s", **SUBJECT, rows=8, cols=8, slices=1)
    ds = pydicom.dcmread(series / "IMG0001.dcm")
    rng = np.random.default_rng(bits * 100 + stored)
    raw = rng.integers(0, 1 << bits, size=shape, dtype=np.uint64).astype(f"<u{bits // 8}")
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    for key, value in changes.items():
        if key == "transfer_syntax":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            setattr(ds, key, value)
    del ds.PixelData
    ds.PixelData = raw.tobytes() + (b"\0" if raw.nbytes % 2 else b"")
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    data = tmp_path / "data"
    data.mkdir()
    ds.save_as(data / "one.dcm")
    [(path, facts)] = _indexed_facts(data)
    assert facts["native"]["offset"] > 128 and facts["native"]["bits_stored"] == stored
    info = facts["frame_info"][0]
    native = dicom.read_native(path, facts["native"], info)
    decoded = dicom.decode_frames(path, [0], [info])[0]
    assert native["values"].dtype == decoded["values"].dtype
    assert np.array_equal(native["values"], decoded["values"]) and native["range"] == decoded["range"]
    assert native["kind"] == decoded["kind"] == "gray"


def test_only_what_read_native_can_read_is_located(indexed):
    """Over pydicom's test files: every file the index located reads natively as it decodes; the
    others (compressed, big endian, colour, multi-frame, a Modality LUT) have no native layout."""
    data, catalog = indexed
    conn = sqlite3.connect(catalog.ref.index_path)
    uids = [r[0] for r in conn.execute("SELECT DISTINCT series_uid FROM files WHERE error IS NULL "
                                       "AND relpath LIKE 'pyd/%'")]
    conn.close()
    located, not_located = [], []
    for uid in uids:
        for path, facts in catalog.series_instances(uid, dicom.facts_from_index):
            if facts is None or "native" not in facts:
                not_located.append((path, facts))
                continue
            try:
                decoded = dicom.decode_frames(path, [0], [facts["frame_info"][0]])[0]
            except DicomError:
                continue
            native = dicom.read_native(path, facts["native"], facts["frame_info"][0])
            assert np.array_equal(native["values"], decoded["values"]), path
            assert native["values"].dtype == decoded["values"].dtype and native["range"] == decoded["range"], path
            located.append(path)
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "examples_overlay.dcm"} <= \
        {Path(p).name for p in located}
    # RLE, big endian, JPEG 2000, uncompressed RGB and palette colour, trailing padding past the
    # image, 32-bit dose, a multi-frame file: left to the decoders
    assert {"MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm",
            "examples_palette.dcm", "MR_small_padded.dcm", "rtdose_1frame.dcm", "rtdose.dcm"} <= \
        {Path(p).name for p, _ in not_located}


def test_pixels_not_where_the_index_said_are_read_by_a_decoder(indexed):
    """An index that no longer matches a file of the same size and mtime (or a read that fails):
    the slice comes from a decoder, with the file's true values."""
    data, catalog = indexed
    uid = pydicom.dcmread(next((data / "ct").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    pool = CountingPool()
    viewer = Viewer(pool=pool, cache_mb=64)
    try:
        async def listing():
            pairs = catalog.series_instances(uid, dicom.facts_from_index)
            for path, facts in pairs:
                facts["native"] = {**facts["native"], "offset": os.path.getsize(path) - 10}
            return pairs

        source = run(viewer.source(("ix", "moved"), "series", {"source": "series"}, listing))
        values = run(viewer.slice(source, 3))["values"]
        assert pool.calls["decode_frames"] == 1
        _, inst = source.slice_ref(3)
        assert np.array_equal(values, dicom.decode_frames(inst["path"], [0], [inst["frame_info"][0]])[0]["values"])
    finally:
        viewer.close()


def test_slice_cache_is_bounded():
    from vre_session.series import LRU

    lru = LRU(1000, 10)
    for i in range(5):
        lru.put(i, "x", 4)
    assert len(lru) == 2 and lru.bytes == 8 and lru.get(4) and lru.get(0) is None
    lru.drop(lambda k: k == 4)
    assert len(lru) == 1 and lru.bytes == 4


# --- through real HTTP handlers ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter server`` with the extension on 127.0.0.1, a temp root and a fake manifest."""

    def __init__(self, base: Path, datasets: dict[str, Path]):
        self.base, self.token, self.port = base, "test-token", _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = base / "home"
        self.home.mkdir()
        manifest = {"user": "tester", "project": "unit", "datasets": [
            {"slug": slug, "path": str(path), "catalog": str(base / "catalog" / slug)} for slug, path in datasets.items()]}
        (base / "session.json").write_text(json.dumps(manifest))
        env = {**os.environ, "VRE_SESSION": str(base / "session.json"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "extensions"), os.environ.get("PYTHONPATH", "")]),
               "JUPYTER_CONFIG_DIR": str(base / "jconfig"), "JUPYTER_RUNTIME_DIR": str(base / "jruntime"),
               "VRE_VIEWER_CACHE_MB": "128"}
        for var in ("VRE_AUDIT_URL", "VRE_AUDIT_SPOOL", "VRE_AUDIT_TOKEN"):
            env.pop(var, None)
        self.log_path = base / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={self.home}",
                 f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.open_browser=False",
                 f"--IdentityProvider.token={self.token}", "--allow-root",
                 '--ServerApp.jpserver_extensions={"vre_session": True}'],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(base), start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-5000:]
            try:
                if requests.get(f"{self.url}/vre/api/", headers=self.headers, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"jupyter server did not start:\n{self.log()[-5000:]}")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=kw.pop("timeout", 60), **kw)

    def raw_get(self, path: str) -> tuple[int, bytes]:
        """A request with the path exactly as written (no client-side normalisation of .. or //)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    data = base / "data"
    cohort = synth.make_cohort("lung-ct", data / "lung", patients=2, slices=12, size=64, seed=1)
    pyd = data / "pydicom"
    for src in _pydicom_files():
        dest = pyd / src.relative_to(PYDICOM_FILES) if PYDICOM_FILES in src.parents else pyd / "extra" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    for slug in ("lung", "pydicom"):
        (base / "catalog" / slug).mkdir(parents=True)
        index_dataset(data / slug, base / "catalog" / slug / "index.sqlite", workers=1)
        (base / "catalog" / slug / "record.json").write_text(json.dumps({"title": f"{slug} test data", "slug": slug}))
    server = LabServer(base, {"lung": data / "lung", "pydicom": pyd})
    server.cohort = cohort
    # the decoder workers start in the background with the server: wait for them (start-up time
    # is not a file's decoding time)
    assert server.get("/vre/api/file/slices/0", params={"path": "data/pydicom/CT_small.dcm"}).status_code == 200
    uid = server.get("/vre/api/datasets/lung/series").json()["items"][0]["series_uid"]
    assert server.get(f"/vre/api/datasets/lung/series/{uid}").status_code == 200  # (both workers busy)
    yield server
    server.stop()


def _check_answer(r: requests.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        assert body["status"] == r.status_code and body["message"], what
        assert r.status_code in (400, 403, 404, 413, 415, 422), f"{what}: {r.status_code} {body}"


def test_every_pydicom_test_file_answers_an_image_or_a_clear_4xx(lab):
    """Each file shipped with pydicom, opened by path and through the index, through real HTTP:
    an image or a clear 4xx, never a 500, never more than 5 s."""
    files = sorted(p for p in (lab.base / "data" / "pydicom").rglob("*") if p.is_file())
    assert len(files) >= 150
    outcomes, slowest = {}, (0.0, "")
    for path in files:
        rel = str(path.relative_to(lab.home.parent / "data"))
        browse_path = f"data/{rel}"  # through the ~/data link, as the file browser gives it
        started = time.perf_counter()
        r = lab.get("/vre/api/file", params={"path": browse_path})
        _check_answer(r, rel)
        status = r.status_code
        if status == 200:
            meta = r.json()
            for i in sorted({0, meta["num_slices"] // 2, meta["num_slices"] - 1}):
                t0 = time.perf_counter()
                s = lab.get(f"/vre/api/file/slices/{i}", params={"path": browse_path})
                _check_answer(s, f"{rel} slice {i}")
                slowest = max(slowest, (time.perf_counter() - t0, f"{rel} slice {i}"))
                if s.status_code == 200:
                    shape = tuple(map(int, s.headers["X-VRE-Shape"].split(",")))
                    itemsize = {"int16": 2, "uint16": 2, "float32": 4, "uint8": 1}[s.headers["X-VRE-Dtype"]]
                    assert len(s.content) == int(np.prod(shape)) * itemsize, rel
                    assert s.headers["Content-Type"] == "application/octet-stream"
                else:
                    status = s.status_code
            t0 = time.perf_counter()
            _check_answer(lab.get("/vre/api/file/tags", params={"path": browse_path}), f"{rel} tags")
            _check_answer(lab.get("/vre/api/file/thumbnail.png", params={"path": browse_path}), f"{rel} thumb")
            if meta["mpr"]["available"]:
                _check_answer(lab.get("/vre/api/file/mpr/coronal/0", params={"path": browse_path}), f"{rel} mpr")
            slowest = max(slowest, (time.perf_counter() - t0, f"{rel} tags+thumbnail+mpr"))
        elapsed = time.perf_counter() - started
        slowest = max(slowest, (elapsed, rel))
        assert elapsed < 5 * 3, f"{rel}: {elapsed:.1f} s for metadata + slices"
        outcomes[rel] = status
    counts = {s: sum(1 for v in outcomes.values() if v == s) for s in sorted(set(outcomes.values()))}
    print(f"\npydicom files: {len(files)}; outcomes {counts}; slowest request {slowest[0]:.2f} s ({slowest[1]})")
    assert slowest[0] < 5.0, f"slowest request took {slowest[0]:.1f} s: {slowest[1]}"
    assert counts.get(200, 0) >= 80  # everything pydicom's own decoders handle must display
    assert outcomes["pydicom/JPEG2000.dcm"] == 200 and outcomes["pydicom/MR_small_jpeg_ls_lossless.dcm"] == 200
    assert outcomes["pydicom/MR_small_RLE.dcm"] == 200 and outcomes["pydicom/SC_rgb_jpeg_gdcm.dcm"] == 200
    assert outcomes["pydicom/README.txt"] == 422

    # the same files as an indexed dataset: every series it lists opens, or answers a clear 4xx
    page = lab.get("/vre/api/datasets/pydicom/series", params={"limit": 1000}).json()
    assert page["total"] == len(page["items"]) > 10
    for item in page["items"]:
        base = f"/vre/api/datasets/pydicom/series/{item['series_uid']}"
        started = time.perf_counter()
        r = lab.get(base)
        _check_answer(r, item["series_uid"])
        if r.status_code == 200:
            _check_answer(lab.get(f"{base}/slices/0"), f"{item['series_uid']} slice 0")
        _check_answer(lab.get(f"{base}/thumbnail.png"), f"{item['series_uid']} thumbnail")
        assert time.perf_counter() - started < 15


def test_series_api_over_http(lab):
    datasets = lab.get("/vre/api/datasets").json()["datasets"]
    assert [d["slug"] for d in datasets] == ["lung", "pydicom"] and datasets[0]["browse_path"] == "data/lung"
    patient = lab.cohort.patients[0]
    page = lab.get("/vre/api/datasets/lung/series", params={"q": patient.patient_id.lower()}).json()
    assert page["total"] == 1
    uid = page["items"][0]["series_uid"]
    assert lab.get("/vre/api/datasets/lung/patients").json()["total"] == 2
    studies = lab.get("/vre/api/datasets/lung/studies", params={"patient": patient.patient_id}).json()
    assert studies["total"] == 1
    assert lab.get("/vre/api/datasets/lung/series",
                   params={"study": studies["items"][0]["study_uid"]}).json()["items"][0]["series_uid"] == uid
    meta = lab.get(f"/vre/api/datasets/lung/series/{uid}").json()
    k, row, col = voxel_of(meta, patient.lesion_center)
    started = time.perf_counter()
    r = lab.get(f"/vre/api/datasets/lung/series/{uid}/slices/{k}")
    assert r.status_code == 200 and r.headers["X-VRE-Dtype"] == "int16"
    print(f"\n64x64 slice over HTTP: {(time.perf_counter() - started) * 1000:.0f} ms")
    rows, cols = map(int, r.headers["X-VRE-Shape"].split(","))
    assert np.frombuffer(r.content, "<i2").reshape(rows, cols)[row, col] == synth.HU_NODULE
    assert r.headers["X-VRE-Pixel-Spacing"] and r.headers["X-VRE-Index"] == f"{k}/12"
    # the whole series in one response, nearest to k first, each slice as its own answer says
    stream = lab.get(f"/vre/api/datasets/lung/series/{uid}/stream", params={"start": k})
    assert stream.status_code == 200 and stream.headers["X-VRE-Count"] == "12"
    body, seen = stream.content, []
    while body:
        n = int.from_bytes(body[:4], "little")
        header = json.loads(body[4:4 + n])
        pixels, body = body[4 + n:4 + n + header["nbytes"]], body[4 + n + header["nbytes"]:]
        seen.append(header["index"])
        if header["index"] == k:
            assert pixels == r.content and header["range"] == [float(v) for v in r.headers["X-VRE-Range"].split(",")]
            assert header["pixel_spacing"] == [float(v) for v in r.headers["X-VRE-Pixel-Spacing"].split(",")]
    assert seen[0] == k and sorted(seen) == list(range(12))
    part = lab.get(f"/vre/api/datasets/lung/series/{uid}/stream", params={"start": 5, "count": 3, "direction": -1})
    assert part.headers["X-VRE-Count"] == "3" and part.content[:4] and \
        json.loads(part.content[4:4 + int.from_bytes(part.content[:4], "little")])["index"] == 5
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/stream", params={"direction": 2}).status_code == 400
    with requests.get(f"{lab.url}/vre/api/datasets/lung/series/{uid}/stream", headers=lab.headers, stream=True,
                      timeout=30) as gone:  # a viewer that moves on closes its stream early
        assert gone.raw.read(4)
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/slices/{k}").content == r.content
    assert "Uncaught exception" not in lab.log()
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/stream", params={"start": 12}).status_code == 404
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/stream", params={"count": 0}).status_code == 400
    cor = lab.get(f"/vre/api/datasets/lung/series/{uid}/mpr/coronal/{row}")
    assert cor.status_code == 200 and cor.headers["X-VRE-Shape"] == "12,64"
    png = lab.get(f"/vre/api/datasets/lung/series/{uid}/thumbnail.png")
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png" and png.content[:4] == b"\x89PNG"
    tags = lab.get(f"/vre/api/datasets/lung/series/{uid}/tags", params={"slice": k}).json()
    keywords = {e["keyword"] for e in tags["elements"]}
    assert "PatientID" in keywords and "PixelData" not in keywords
    # bad input: clear 4xx
    assert lab.get("/vre/api/datasets/nope/series").status_code == 404
    assert lab.get("/vre/api/datasets/lung/series/1.2.3").status_code == 404
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/slices/99").status_code == 404
    assert lab.get(f"/vre/api/datasets/lung/series/{uid}/slices/x").status_code == 400
    assert lab.get("/vre/api/datasets/lung/series", params={"limit": "-1"}).status_code == 400
    assert lab.get("/vre/api/file", params={"path": "/etc/passwd"}).status_code == 403
    assert lab.get("/vre/api/file", params={"path": "data/lung/../../../../etc/passwd"}).status_code == 403
    assert lab.get("/vre/api/file", params={"path": "data/lung/clinical.csv"}).status_code == 422
    assert requests.get(f"{lab.url}/vre/api/datasets", timeout=10).status_code == 403  # no token
    log = lab.log()
    assert '"action": "dicom.series_view"' in log and '"action": "dicom.instance_view"' in log


def test_download_guard_over_http(lab):
    (lab.home / "notes.txt").write_text("mine")
    (lab.home / "project").mkdir(exist_ok=True)
    csv = "data/lung/clinical.csv"
    dcm = next(p for p in (lab.base / "data" / "lung").rglob("*.dcm"))
    dcm_rel = "data/" + str(dcm.relative_to(lab.base / "data"))
    (lab.home / "link-to-data.dcm").symlink_to(dcm)
    refused = [
        f"/files/{csv}", f"/files/{csv}?download=1", f"/files/{dcm_rel}", f"/files/{dcm_rel}?download=1",
        f"/files/project/../{csv}", f"/files/project/%2e%2e/{csv}", f"/files/%2e%2e/home/{csv}",
        f"/files//{lab.base}/{csv}", "/files/data//lung//clinical.csv", "/files/data/lung/%63linical.csv",
        "/files/link-to-data.dcm", f"/view/{csv}", f"/nbconvert/html/{csv}", f"/nbconvert/html/{csv}?download=true",
        f"/api/contents/{csv}", f"/api/contents/{csv}?content=1", f"/api/contents/{csv}?format=base64&type=file",
        f"/api/contents/{csv}?format=text&type=file", f"/api/contents/{dcm_rel}?format=base64",
        f"/api/contents/project/../{dcm_rel}", "/api/contents/link-to-data.dcm",
    ]
    for path in refused:
        status, body = lab.raw_get(path)
        assert status == 403, f"{path}: {status} {body[:200]!r}"
        answer = json.loads(body)
        assert answer["reason"] == "download_refused", path
        assert "cannot be downloaded from the VRE" in answer["message"], path
    # listings and metadata stay available, so the file browser shows the datasets
    assert lab.raw_get("/api/contents/data/lung?content=1")[0] == 200
    assert lab.raw_get(f"/api/contents/{csv}?content=0")[0] == 200
    assert lab.raw_get("/files/notes.txt") == (200, b"mine")
    assert lab.raw_get("/api/contents/notes.txt")[0] == 200
    assert (lab.home / "data").is_symlink()
    log = lab.log()
    assert log.count('"action": "download.refused"') >= len(refused)
    assert '"route": "nbconvert"' in log and '"route": "contents"' in log and '"route": "view"' in log
