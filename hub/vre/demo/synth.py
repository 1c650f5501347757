"""Synthetic DICOM cohorts shaped like EUCAIM use cases (lung CT screening, prostate MR).

Real patient images cannot ship with the project, so demos and tests use numerical
phantoms whose values and geometry are known exactly: a test can read a voxel back
through the DICOM rescale and compare it with the truth. Everything derives from
``seed``, so the same call writes the same UIDs and pixels.

Coordinates are DICOM patient coordinates (LPS, millimetres): x towards the
patient's left, y towards the back, z towards the head.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

# --- CT phantom truth (Hounsfield units, LPS millimetres) --------------------------
HU_AIR = -1000
HU_LUNG = -850
HU_SOFT_TISSUE = 40
HU_NODULE = 60
HU_BONE = 700
RESCALE_INTERCEPT = -1024  # stored value = HU + 1024, so air and lung stay unsigned

CT_FOV_MM = 358.4  # default in-plane field of view: 512 x 0.7 mm
Z_CENTER_MM = -150.0  # every series is centred here; its middle slice lies exactly on it
NODULE_CENTER: tuple[float, float, float] = (-60.0, -25.0, Z_CENTER_MM)  # right lung
NODULE_RADIUS_MM = 8.0

#: In-plane points (x, y, HU) that hold exactly on every slice: noise is switched
#: off within 10 mm of them and inside the whole nodule, so tests can compare the
#: voxel nearest to a landmark with its nominal HU.
CT_LANDMARKS: dict[str, tuple[float, float, int]] = {
    "air": (0.0, -160.0, HU_AIR),
    "soft_tissue": (0.0, 20.0, HU_SOFT_TISSUE),
    "right_lung": (-75.0, 35.0, HU_LUNG),
    "left_lung": (75.0, 35.0, HU_LUNG),
    "bone": (0.0, 75.0, HU_BONE),
}

# --- MR phantom truth (arbitrary T2-weighted signal units) ---------------------------
MR_FOV_MM = 200.0
MR_LESION_CENTER: tuple[float, float, float] = (9.0, 17.0, Z_CENTER_MM)  # peripheral zone
MR_LESION_RADIUS_MM = 4.0
MR_SIGNAL_LESION = 250  # clinically significant cancer is dark on T2
MR_SIGNAL_PERIPHERAL_ZONE = 750

Ellipse = tuple[float, float, float, float]  # centre x, centre y, semi-axis x, semi-axis y

_BODY: Ellipse = (0.0, 0.0, 160.0, 110.0)
_LUNGS: tuple[Ellipse, ...] = ((-75.0, 0.0, 50.0, 75.0), (75.0, 0.0, 50.0, 75.0))
_SPINE: Ellipse = (0.0, 75.0, 18.0, 18.0)
_STERNUM: Ellipse = (0.0, -98.0, 16.0, 6.0)
_RIBS_OUTER: Ellipse = (0.0, 0.0, 150.0, 103.0)
_RIBS_INNER: Ellipse = (0.0, 0.0, 140.0, 95.0)
_RIB_PITCH_MM, _RIB_WIDTH_MM = 30.0, 12.0  # a rib crosses the slab every 30 mm
_QUIET_RADIUS_MM = 10.0
_CT_NOISE_SD = 15.0
_MR_NOISE_SD = 12.0

_CT_SCANNERS = {
    "SIEMENS": "SOMATOM Definition AS+",
    "GE MEDICAL SYSTEMS": "Revolution CT",
    "Philips": "iCT 256",
    "CANON_MEC": "Aquilion ONE",
}
_MR_SCANNERS = {  # vendor -> (model, field strength in tesla)
    "SIEMENS": ("MAGNETOM Skyra", 3.0),
    "Philips": ("Ingenia", 3.0),
    "GE MEDICAL SYSTEMS": ("SIGNA Artist", 1.5),
}
_UID_NAMESPACE = "vre-synth"
CT_STUDY_DESCRIPTION = "CT THORAX LOW DOSE LUNG SCREENING"
MR_STUDY_DESCRIPTION = "MR PROSTATE MULTIPARAMETRIC"
MR_SERIES_DESCRIPTION = "t2_tse_tra"


def _inside(x: np.ndarray, y: np.ndarray, e: Ellipse) -> np.ndarray:
    return ((x - e[0]) / e[2]) ** 2 + ((y - e[1]) / e[3]) ** 2 <= 1.0


def _in_sphere(
    x: np.ndarray, y: np.ndarray, z: np.ndarray | float, centre: tuple[float, float, float], radius: float
) -> np.ndarray:
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def phantom_hu_at(
    x: np.ndarray | float,
    y: np.ndarray | float,
    z: np.ndarray | float,
    *,
    nodule_center: tuple[float, float, float] = NODULE_CENTER,
    nodule_radius: float = NODULE_RADIUS_MM,
) -> np.ndarray:
    """Noise-free HU of the chest phantom at patient coordinates (broadcasts like numpy).

    The writer uses this too, so it is the single source of truth for tests.
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    hu = _anatomy_hu(x, y, _has_rib(z))
    hu[np.broadcast_to(_in_sphere(x, y, z, nodule_center, nodule_radius), hu.shape)] = HU_NODULE
    return hu


def _has_rib(z: np.ndarray | float) -> np.ndarray:
    return ((np.asarray(z) - Z_CENTER_MM) % _RIB_PITCH_MM) < _RIB_WIDTH_MM


def _anatomy_hu(x: np.ndarray, y: np.ndarray, rib: np.ndarray) -> np.ndarray:
    """Phantom without the nodule; ``rib`` says where a rib crosses the slice (z-dependent)."""
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, rib.shape), HU_AIR, dtype=np.int16)
    hu[_inside(x, y, _BODY)] = HU_SOFT_TISSUE
    for lung in _LUNGS:
        hu[_inside(x, y, lung)] = HU_LUNG
    ribs = _inside(x, y, _RIBS_OUTER) & ~_inside(x, y, _RIBS_INNER) & (y > -60.0) & rib
    hu[ribs | _inside(x, y, _SPINE) | _inside(x, y, _STERNUM)] = HU_BONE
    return hu


def _mr_signal_at(x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    """Noise-free T2 signal of a small-FOV pelvis: fat, muscle, femoral heads,
    rectum, bladder (cranial slices) and a zonal prostate with one PZ lesion."""
    x, y = np.broadcast_arrays(x, y)
    dz = z - Z_CENTER_MM
    s = np.zeros(x.shape, dtype=np.int16)
    s[_inside(x, y, (0.0, 0.0, 180.0, 130.0))] = 900  # subcutaneous fat
    s[_inside(x, y, (0.0, 0.0, 165.0, 115.0))] = 300  # muscle
    for side in (-1.0, 1.0):
        s[_inside(x, y, (side * 80.0, 5.0, 22.0, 22.0))] = 650  # femoral head marrow
    s[_inside(x, y, (0.0, 42.0, 16.0, 12.0))] = 80  # rectum
    if abs(dz - 45.0) < 30.0:  # bladder: fluid, very bright
        k = np.sqrt(1.0 - ((dz - 45.0) / 30.0) ** 2)
        s[_inside(x, y, (0.0, -10.0, 45.0 * k, 35.0 * k))] = 1400
    if abs(dz) < 20.0:
        k = np.sqrt(1.0 - (dz / 20.0) ** 2)
        s[_inside(x, y, (0.0, 10.0, 22.0 * k, 18.0 * k))] = MR_SIGNAL_PERIPHERAL_ZONE
        s[_inside(x, y, (0.0, 5.0, 13.0 * k, 9.0 * k))] = 450  # transition zone
    s[_in_sphere(x, y, z, MR_LESION_CENTER, MR_LESION_RADIUS_MM)] = MR_SIGNAL_LESION
    return s


@dataclass(frozen=True)
class _Stack:
    """Axial slice geometry. PixelSpacing order is DICOM's: (between rows, between columns)."""

    rows: int
    cols: int
    slices: int
    spacing: tuple[float, float]
    step: float  # distance between slice centres along the normal
    feet_first: bool

    @property
    def row_dir(self) -> float:
        # Feet-first the scanner's x axis points to the patient's right, so
        # images keep the usual display but rows run towards -x.
        return -1.0 if self.feet_first else 1.0

    def z(self, k: int) -> float:
        # Head-first series run cranio-caudally (z falls), feet-first ones the other way.
        sign = 1.0 if self.feet_first else -1.0
        return Z_CENTER_MM + sign * (k - self.slices // 2) * self.step

    def x(self, col: np.ndarray | int) -> np.ndarray | float:
        return self.row_dir * (col - self.cols // 2) * self.spacing[1]

    def y(self, row: np.ndarray | int) -> np.ndarray | float:
        return (row - self.rows // 2) * self.spacing[0]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x(np.arange(self.cols))[None, :], self.y(np.arange(self.rows))[:, None]

    def snap(self, point: tuple[float, float, float]) -> tuple[float, float, float]:
        """Nearest voxel centre, so a lesion's centre voxel reads exactly its value."""
        col = round(self.row_dir * point[0] / self.spacing[1]) + self.cols // 2
        row = round(point[1] / self.spacing[0]) + self.rows // 2
        k = self.slices // 2 + round((point[2] - Z_CENTER_MM) / (self.z(1) - self.z(0)))  # signed step
        return (float(self.x(col)), float(self.y(row)), self.z(k))

    def position(self, k: int) -> list[str]:
        return [_ds(self.x(0)), _ds(self.y(0)), _ds(self.z(k))]


def _ds(v: float) -> str:
    """Format for a DS element (max 16 characters)."""
    return format(float(v), ".6g")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[_UID_NAMESPACE, *map(str, parts)])


def _years_before(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February
        return d.replace(year=d.year - years, day=28)


def _check_subject(patient_id: str, sex: str, age: int) -> None:
    if not patient_id or len(patient_id) > 64:
        raise ValueError(f"patient_id must be 1-64 characters, got {patient_id!r}")
    if sex not in ("F", "M", "O"):
        raise ValueError(f"sex must be 'F', 'M' or 'O', got {sex!r}")
    if not (isinstance(age, int) and 0 <= age <= 130):
        raise ValueError(f"age must be whole years between 0 and 130, got {age!r}")


def _check_stack(rows: int, cols: int, slices: int, spacing: tuple[float, float], step: float) -> None:
    if rows < 8 or cols < 8 or slices < 1:
        raise ValueError(f"need rows, cols >= 8 and slices >= 1, got {rows}x{cols}x{slices}")
    if min(spacing) <= 0 or step <= 0:
        raise ValueError(f"spacing and slice thickness must be positive, got {spacing}, {step}")


def _base_dataset(
    *,
    sop_class: str,
    modality: str,
    rng: np.random.Generator,
    seed: int,
    patient_id: str,
    patient_name: str,
    sex: str,
    age: int,
    study_uid: str | None,
    study_date: date | None,
    study_description: str,
    series_number: int,
    series_description: str,
    manufacturer: str,
    model: str,
    body_part: str,
    stack: _Stack,
) -> FileDataset:
    """Template shared by every slice of a series; the writer only changes per-slice tags."""
    if study_date is None:
        study_date = date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
    birth = _years_before(study_date, age) - timedelta(days=int(rng.integers(0, 365)))
    study_uid = study_uid or _uid(seed, patient_id, modality, "study")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "VRE_SYNTH_1"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)

    day = study_date.strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = "093000"
    ds.AccessionNumber = f"ACC{int(rng.integers(10**6, 10**7))}"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no real patient data"
    ds.BodyPartExamined = body_part
    ds.PatientPosition = "FFS" if stack.feet_first else "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(seed, patient_id, study_uid, "series", series_number)
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _uid(seed, patient_id, study_uid, "frame")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [_ds(stack.row_dir), "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(stack.spacing[0]), _ds(stack.spacing[1])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stack.rows, stack.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    return ds


def _write_series(
    ds: FileDataset,
    out_dir: Path,
    stack: _Stack,
    pixels: Callable[[int, float], np.ndarray],
    rng: np.random.Generator,
    shuffle_names: bool,
) -> Path:
    """Write one file per slice, mutating the template in place (far faster than copies)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = np.arange(1, stack.slices + 1)
    numbers = names.copy()
    if shuffle_names:
        names, numbers = rng.permutation(names), rng.permutation(numbers)
    ds.add_new(0x7FE00010, "OW", b"")
    for k in range(stack.slices):
        z = stack.z(k)
        sop_uid = _uid(ds.SeriesInstanceUID, k)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = stack.position(k)
        ds.SliceLocation = _ds(z)
        ds.PixelData = pixels(k, z).tobytes()
        ds.save_as(out_dir / f"IMG{int(names[k]):04d}.dcm", enforce_file_format=True)
    return out_dir


def make_ct_series(
    out_dir: Path | str,
    *,
    patient_id: str,
    patient_name: str,
    sex: str,
    age: int,
    rows: int = 512,
    cols: int = 512,
    slices: int = 120,
    spacing: tuple[float, float] | None = None,
    thickness: float = 2.5,
    feet_first: bool = False,
    seed: int = 0,
    study_uid: str | None = None,
    study_date: date | None = None,
    series_number: int = 1,
    manufacturer: str | None = None,
    nodule_center: tuple[float, float, float] = NODULE_CENTER,
    nodule_radius: float = NODULE_RADIUS_MM,
    shuffle_names: bool = False,
) -> Path:
    """Write a contiguous axial chest CT series of the phantom into ``out_dir``.

    ``spacing`` defaults to a fixed 358.4 mm field of view (0.7 mm at 512), so tiny
    test images still show the whole chest. Noise (SD 15 HU) is off near
    ``CT_LANDMARKS`` and inside the nodule; the nodule centre voxel reads exactly
    ``HU_NODULE`` whenever the radius exceeds half a voxel diagonal.
    """
    _check_subject(patient_id, sex, age)
    spacing = spacing or (CT_FOV_MM / rows, CT_FOV_MM / cols)
    _check_stack(rows, cols, slices, spacing, thickness)
    x, y, z = (np.asarray(v, dtype=float) for v in nodule_center)
    if _anatomy_hu(x, y, _has_rib(z)) != HU_LUNG:
        raise ValueError(f"nodule_center {nodule_center} must lie inside a lung, e.g. {NODULE_CENTER}")
    stack = _Stack(rows, cols, slices, spacing, thickness, feet_first)
    rng = _rng(seed, patient_id, "ct", str(series_number))
    manufacturer = manufacturer or list(_CT_SCANNERS)[int(rng.integers(len(_CT_SCANNERS)))]
    ds = _base_dataset(
        sop_class=CTImageStorage,
        modality="CT",
        rng=rng,
        seed=seed,
        patient_id=patient_id,
        patient_name=patient_name,
        sex=sex,
        age=age,
        study_uid=study_uid,
        study_date=study_date,
        study_description=CT_STUDY_DESCRIPTION,
        series_number=series_number,
        series_description=f"AX LUNG {thickness:g}mm",
        manufacturer=manufacturer,
        model=_CT_SCANNERS.get(manufacturer, ""),
        body_part="CHEST",
        stack=stack,
    )
    ds.SliceThickness = _ds(thickness)
    ds.KVP = "120"
    ds.ConvolutionKernel = "LUNG"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"

    X, Y = stack.grid()
    quiet = np.zeros((rows, cols), dtype=bool)
    for lx, ly, _ in CT_LANDMARKS.values():
        quiet |= (X - lx) ** 2 + (Y - ly) ** 2 <= _QUIET_RADIUS_MM**2

    anatomy = {rib: _anatomy_hu(X, Y, np.asarray(rib)) for rib in (False, True)}  # z-independent otherwise

    def pixels(k: int, z: float) -> np.ndarray:
        hu = anatomy[bool(_has_rib(z))].copy()
        noise = np.rint(rng.standard_normal((rows, cols), dtype=np.float32) * _CT_NOISE_SD)
        noise[quiet] = 0
        if abs(z - nodule_center[2]) <= nodule_radius:
            nodule = _in_sphere(X, Y, z, nodule_center, nodule_radius)
            hu[nodule], noise[nodule] = HU_NODULE, 0
        return np.clip(hu + noise - RESCALE_INTERCEPT, 0, 4095).astype("<u2")

    return _write_series(ds, Path(out_dir), stack, pixels, rng, shuffle_names)


def make_mr_series(
    out_dir: Path | str,
    *,
    patient_id: str,
    patient_name: str,
    age: int,
    size: int = 320,
    slices: int = 26,
    seed: int = 0,
    study_uid: str | None = None,
    study_date: date | None = None,
    series_number: int = 1,
    manufacturer: str | None = None,
    shuffle_names: bool = False,
) -> Path:
    """Write an axial T2-weighted prostate TSE series (3 mm slices, 0.6 mm gap) into ``out_dir``.

    Magnitude images have no rescale; noise is off inside the lesion so its
    centre voxel reads exactly ``MR_SIGNAL_LESION``.
    """
    _check_subject(patient_id, "M", age)
    thickness, step = 3.0, 3.6
    stack = _Stack(size, size, slices, (MR_FOV_MM / size,) * 2, step, False)
    _check_stack(size, size, slices, stack.spacing, step)
    rng = _rng(seed, patient_id, "mr", str(series_number))
    manufacturer = manufacturer or list(_MR_SCANNERS)[int(rng.integers(len(_MR_SCANNERS)))]
    model, tesla = _MR_SCANNERS.get(manufacturer, ("", 3.0))
    ds = _base_dataset(
        sop_class=MRImageStorage,
        modality="MR",
        rng=rng,
        seed=seed,
        patient_id=patient_id,
        patient_name=patient_name,
        sex="M",
        age=age,
        study_uid=study_uid,
        study_date=study_date,
        study_description=MR_STUDY_DESCRIPTION,
        series_number=series_number,
        series_description=MR_SERIES_DESCRIPTION,
        manufacturer=manufacturer,
        model=model,
        body_part="PROSTATE",
        stack=stack,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ProtocolName = MR_SERIES_DESCRIPTION
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", ["SK", "SP"], "PFP"
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tse2d1_25"
    ds.SliceThickness, ds.SpacingBetweenSlices = _ds(thickness), _ds(step)
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "5660", "104", 25
    ds.FlipAngle = "160"
    ds.NumberOfAverages = "2"
    ds.MagneticFieldStrength = _ds(tesla)
    ds.ImagingFrequency = _ds(42.577 * tesla)
    ds.ImagedNucleus = "1H"
    ds.WindowCenter, ds.WindowWidth = "600", "1200"

    X, Y = stack.grid()

    def pixels(k: int, z: float) -> np.ndarray:
        signal = _mr_signal_at(X, Y, z).astype(np.float32)
        noise = rng.standard_normal((size, size), dtype=np.float32) * _MR_NOISE_SD
        noise[_in_sphere(X, Y, z, MR_LESION_CENTER, MR_LESION_RADIUS_MM)] = 0
        return np.clip(np.abs(np.rint(signal + noise)), 0, 4095).astype("<u2")  # magnitude

    return _write_series(ds, Path(out_dir), stack, pixels, rng, shuffle_names)


# --- cohorts ------------------------------------------------------------------------
CohortKind = Literal["lung-ct", "prostate-mr"]
_CLINICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "lung-ct": (
        "patient_id", "sex", "age", "diagnosis", "stage", "nodule_diameter_mm",
        "smoking_status", "pack_years",
    ),
    "prostate-mr": (
        "patient_id", "sex", "age", "diagnosis", "stage", "gleason", "isup_grade",
        "psa_ng_ml", "pirads",
    ),
}


@dataclass(frozen=True)
class SyntheticPatient:
    """One generated subject; ``lesion_center`` is the nodule / PZ lesion centre (LPS mm)."""

    patient_id: str
    sex: str
    age: int
    series_dir: Path
    lesion_center: tuple[float, float, float]
    lesion_radius_mm: float
    clinical: dict[str, str]


@dataclass(frozen=True)
class CohortInfo:
    kind: str
    root: Path
    patients: tuple[SyntheticPatient, ...]
    clinical_csv: Path
    num_files: int


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()


def _lung_patient(
    rng: np.random.Generator, i: int, out_dir: Path, slices: int, size: int, seed: int
) -> SyntheticPatient:
    pid = f"LUNG-{i:04d}"
    sex = "M" if rng.random() < 0.6 else "F"
    age = int(rng.integers(55, 81))  # screening population
    thickness = float(rng.choice([2.0, 2.5]))
    fov = float(rng.choice([340.0, 360.0, 380.0]))
    stack = _Stack(size, size, slices, (fov / size, fov / size), thickness, False)
    side = float(rng.choice([-1.0, 1.0]))
    radius = float(rng.uniform(4.0, 12.0))
    centre = stack.snap((side * 75.0 + rng.uniform(-15, 15), rng.uniform(-40, -15), Z_CENTER_MM))
    study_date = date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
    series_dir = out_dir / pid / f"{study_date:%Y%m%d}_CT_THORAX" / f"1_{_slug(f'AX LUNG {thickness:g}mm')}"
    make_ct_series(
        series_dir,
        patient_id=pid,
        patient_name=pid,
        sex=sex,
        age=age,
        rows=size,
        cols=size,
        slices=slices,
        spacing=stack.spacing,
        thickness=thickness,
        seed=seed,
        study_date=study_date,
        nodule_center=centre,
        nodule_radius=radius,
    )
    diameter = 2 * radius
    malignant = rng.random() < (0.8 if diameter >= 10 else 0.3)
    t = "T1a" if diameter <= 10 else "T1b" if diameter <= 20 else "T1c"
    n = "N0" if rng.random() < 0.8 else "N1"
    group = {"T1a": "IA1", "T1b": "IA2", "T1c": "IA3"}[t] if n == "N0" else "IIB"
    histology = "Adenocarcinoma of lung" if rng.random() < 0.65 else "Squamous cell carcinoma of lung"
    smoking = str(rng.choice(["current", "former"]))
    clinical = {
        "diagnosis": histology if malignant else "Benign pulmonary nodule",
        "stage": f"{t}{n}M0 (stage {group})" if malignant else "",
        "nodule_diameter_mm": f"{diameter:.1f}",
        "smoking_status": smoking,
        "pack_years": str(int(rng.integers(20, 61))),
    }
    return SyntheticPatient(pid, sex, age, series_dir, centre, radius, clinical)


def _prostate_patient(
    rng: np.random.Generator, i: int, out_dir: Path, slices: int, size: int, seed: int
) -> SyntheticPatient:
    pid = f"PROSTATE-{i:04d}"
    age = int(rng.integers(50, 81))
    study_date = date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
    series_dir = out_dir / pid / f"{study_date:%Y%m%d}_MR_PROSTATE" / f"1_{_slug(MR_SERIES_DESCRIPTION)}"
    make_mr_series(
        series_dir,
        patient_id=pid,
        patient_name=pid,
        age=age,
        size=size,
        slices=slices,
        seed=seed,
        study_date=study_date,
    )
    pirads = int(rng.choice([3, 4, 5], p=[0.3, 0.4, 0.3]))
    malignant = rng.random() < (0.3 if pirads == 3 else 0.85)
    gleason, isup = [("3+3", 1), ("3+4", 2), ("4+3", 3), ("4+4", 4)][int(rng.integers(0, 4))]
    clinical = {
        "diagnosis": "Prostate adenocarcinoma" if malignant else "No malignancy on biopsy",
        "stage": str(rng.choice(["cT1c", "cT2a", "cT2b", "cT3a"])) if malignant else "",
        "gleason": gleason if malignant else "",
        "isup_grade": str(isup) if malignant else "",
        "psa_ng_ml": f"{rng.lognormal(np.log(7.0), 0.5):.1f}",
        "pirads": str(pirads),
    }
    return SyntheticPatient(pid, "M", age, series_dir, MR_LESION_CENTER, MR_LESION_RADIUS_MM, clinical)


def make_cohort(
    kind: CohortKind,
    out_dir: Path | str,
    *,
    patients: int,
    slices: int | None = None,
    size: int | None = None,
    seed: int = 0,
) -> CohortInfo:
    """Write ``out_dir/<patient_id>/<study>/<series>/IMG0001.dcm ...`` plus ``clinical.csv``.

    Defaults are realistic (CT 512x512x120, MR 320x320x26); tests pass small
    ``size``/``slices``. Acquisition parameters vary per patient like a
    multi-centre collection; the lung cohort varies nodule size and position.
    """
    builders = {"lung-ct": (_lung_patient, 120, 512), "prostate-mr": (_prostate_patient, 26, 320)}
    if kind not in builders:
        raise ValueError(f"unknown cohort kind {kind!r}; choose one of {sorted(builders)}")
    build, default_slices, default_size = builders[kind]
    slices, size = slices or default_slices, size or default_size
    if patients < 1 or slices < 1 or size < 32:
        raise ValueError(f"need patients >= 1, slices >= 1 and size >= 32, got {patients}, {slices}, {size}")
    root = Path(out_dir)
    made = tuple(build(_rng(seed, kind, str(i)), i, root, slices, size, seed) for i in range(1, patients + 1))
    columns = _CLINICAL_COLUMNS[kind]
    clinical_csv = root / "clinical.csv"
    with clinical_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for p in made:
            writer.writerow({"patient_id": p.patient_id, "sex": p.sex, "age": p.age, **p.clinical})
    return CohortInfo(kind, root, made, clinical_csv, patients * slices)


def corrupt_examples(out_dir: Path | str) -> list[Path]:
    """Write broken files an indexer must survive; returns their paths.

    A DICOM cut inside its pixel data, one cut inside its header, a valid file
    without SOPInstanceUID, a text file named .dcm and an empty .dcm.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        series = make_ct_series(
            tmp, patient_id="BROKEN-0001", patient_name="BROKEN", sex="O", age=60, rows=32, cols=32, slices=1
        )
        good = (series / "IMG0001.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(good))
    del ds.SOPInstanceUID
    files = {
        "truncated_pixels.dcm": good[: len(good) - 700],
        "truncated_header.dcm": good[:400],
        "not_dicom.dcm": b"Patient list exported from RIS - not an image\n",
        "empty.dcm": b"",
    }
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    ds.save_as(out / "missing_sop_uid.dcm", enforce_file_format=True)
    return [*paths, out / "missing_sop_uid.dcm"]
