"""Synthetic cohorts: pixel truth after the DICOM rescale, geometry, tags, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from vre.demo import synth

SUBJECT = dict(patient_id="LUNG-0042", patient_name="LUNG-0042", sex="F", age=63)


def read_series(series_dir: Path) -> list[pydicom.Dataset]:
    """All slices, sorted along the slice normal (never by name or instance number)."""
    slices = [pydicom.dcmread(p) for p in series_dir.glob("*.dcm")]
    return sorted(slices, key=lambda ds: float(np.dot(normal(ds), np.array(ds.ImagePositionPatient, float))))


def normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def value_at(slices: list[pydicom.Dataset], point, values=hu) -> float:
    """Value of the voxel nearest to a patient-space point, located via the DICOM geometry."""
    point = np.asarray(point, float)
    ds = min(slices, key=lambda s: abs(np.dot(normal(s), point - np.array(s.ImagePositionPatient, float))))
    iop = np.array(ds.ImageOrientationPatient, float)
    offset = point - np.array(ds.ImagePositionPatient, float)
    row_spacing, col_spacing = map(float, ds.PixelSpacing)
    col = round(float(np.dot(offset, iop[:3])) / col_spacing)
    row = round(float(np.dot(offset, iop[3:])) / row_spacing)
    return float(values(ds)[row, col])


def patient_grid(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, float]:
    iop = np.array(ds.ImageOrientationPatient, float)
    ipp = np.array(ds.ImagePositionPatient, float)
    row_spacing, col_spacing = map(float, ds.PixelSpacing)
    cols, rows = np.arange(ds.Columns), np.arange(ds.Rows)
    x = ipp[0] + iop[0] * cols[None, :] * col_spacing + iop[3] * rows[:, None] * row_spacing
    y = ipp[1] + iop[1] * cols[None, :] * col_spacing + iop[4] * rows[:, None] * row_spacing
    return x, y, float(ipp[2])


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> list[pydicom.Dataset]:
    out = tmp_path_factory.mktemp("ct")
    synth.make_ct_series(out, rows=64, cols=64, slices=9, seed=3, **SUBJECT)
    return read_series(out)


def test_ct_nodule_and_landmarks_read_their_nominal_hu(ct):
    assert value_at(ct, synth.NODULE_CENTER) == synth.HU_NODULE
    # 3 mm off the centre is still nodule; 3 cm lateral of it is lung again
    assert value_at(ct, np.add(synth.NODULE_CENTER, (0, 0, 2.5))) == synth.HU_NODULE
    assert value_at(ct, np.add(synth.NODULE_CENTER, (-25.0, 0, 0))) != synth.HU_NODULE
    for name, (x, y, expected) in synth.CT_LANDMARKS.items():
        for ds in (ct[0], ct[len(ct) // 2], ct[-1]):
            z = float(ds.ImagePositionPatient[2])
            assert value_at([ds], (x, y, z)) == expected, name


def test_ct_pixels_match_phantom_truth_within_noise(ct):
    for ds in ct:
        x, y, z = patient_grid(ds)
        diff = hu(ds) - synth.phantom_hu_at(x, y, z)
        assert np.abs(diff).max() <= 6 * 15 + 1  # noise SD is 15 HU
        assert 5 < np.abs(diff).mean() < 20
    assert hu(ct[0]).min() >= -1024  # unsigned storage kept air representable


def test_ct_tags_and_geometry(ct):
    first = ct[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPClassUID == CTImageStorage
    assert (first.Modality, first.BodyPartExamined, first.PatientPosition) == ("CT", "CHEST", "HFS")
    assert (first.PatientAge, first.PatientSex, first.PixelRepresentation) == ("063Y", "F", 0)
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert first.pixel_array.dtype == np.uint16
    assert list(map(float, first.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
    birth, study = first.PatientBirthDate, first.StudyDate
    age = int(study[:4]) - int(birth[:4]) - (study[4:] < birth[4:])
    assert age == 63

    positions = np.array([ds.ImagePositionPatient for ds in ct], float)
    steps = np.diff(positions @ normal(first))
    assert np.allclose(steps, float(first.SliceThickness)) and float(first.SliceThickness) == 2.5
    assert np.allclose(positions[:, :2], positions[0, :2])
    assert [float(ds.SliceLocation) for ds in ct] == list(positions[:, 2])
    # head first: instance 1 is the most cranial slice
    assert [ds.InstanceNumber for ds in ct] == list(range(9, 0, -1))
    assert positions[4, 2] == synth.Z_CENTER_MM
    assert len({ds.SOPInstanceUID for ds in ct}) == 9 and len({ds.SeriesInstanceUID for ds in ct}) == 1


def test_feet_first_geometry_keeps_patient_coordinates(tmp_path):
    synth.make_ct_series(tmp_path, rows=64, cols=64, slices=5, feet_first=True, **SUBJECT)
    slices = read_series(tmp_path)
    assert slices[0].PatientPosition == "FFS"
    assert list(map(float, slices[0].ImageOrientationPatient)) == [-1, 0, 0, 0, 1, 0]
    by_instance = sorted(slices, key=lambda ds: ds.InstanceNumber)
    z = [float(ds.ImagePositionPatient[2]) for ds in by_instance]
    assert z == sorted(z) and z[0] < z[-1]  # feet first: z rises with instance number
    assert value_at(slices, synth.NODULE_CENTER) == synth.HU_NODULE
    left, right = synth.CT_LANDMARKS["left_lung"], synth.CT_LANDMARKS["soft_tissue"]
    assert value_at(slices, (left[0], left[1], synth.Z_CENTER_MM)) == synth.HU_LUNG
    assert value_at(slices, (right[0], right[1], synth.Z_CENTER_MM)) == synth.HU_SOFT_TISSUE


def test_shuffled_names_do_not_follow_position(tmp_path):
    plain, shuffled = tmp_path / "plain", tmp_path / "shuffled"
    synth.make_ct_series(plain, rows=32, cols=32, slices=12, **SUBJECT)
    synth.make_ct_series(shuffled, rows=32, cols=32, slices=12, shuffle_names=True, **SUBJECT)
    names = sorted(p.name for p in shuffled.iterdir())
    assert names == [f"IMG{i:04d}.dcm" for i in range(1, 13)]
    by_position = read_series(shuffled)
    name_of = {pydicom.dcmread(p).SOPInstanceUID: p.name for p in shuffled.iterdir()}
    names_by_position = [name_of[ds.SOPInstanceUID] for ds in by_position]
    assert names_by_position not in (names, names[::-1])
    numbers = [ds.InstanceNumber for ds in by_position]
    assert sorted(numbers) == list(range(1, 13))
    assert numbers not in (list(range(1, 13)), list(range(12, 0, -1)))
    # same content at the same place: sorting by geometry recovers the plain series
    assert [ds.SOPInstanceUID for ds in by_position] == [ds.SOPInstanceUID for ds in read_series(plain)]
    assert value_at(by_position, synth.NODULE_CENTER) == synth.HU_NODULE


def test_mr_series_tags_and_lesion(tmp_path):
    synth.make_mr_series(tmp_path, patient_id="PROSTATE-0001", patient_name="P", age=67, size=64, slices=8)
    slices = read_series(tmp_path)
    first = slices[0]
    assert len(slices) == 8 and (first.Rows, first.Columns) == (64, 64)
    assert first.SOPClassUID == MRImageStorage and first.Modality == "MR"
    assert (first.BodyPartExamined, first.SeriesDescription) == ("PROSTATE", "t2_tse_tra")
    assert float(first.MagneticFieldStrength) in (1.5, 3.0)
    assert float(first.EchoTime) > 80 and float(first.RepetitionTime) > 2000
    assert first.PhotometricInterpretation == "MONOCHROME2" and "RescaleSlope" not in first
    assert first.pixel_array.dtype == np.uint16 and first.PatientSex == "M"
    steps = np.diff([float(np.dot(normal(ds), np.array(ds.ImagePositionPatient, float))) for ds in slices])
    assert np.allclose(steps, float(first.SpacingBetweenSlices))
    raw = lambda ds: ds.pixel_array.astype(float)  # noqa: E731
    assert value_at(slices, synth.MR_LESION_CENTER, raw) == synth.MR_SIGNAL_LESION


def uids_and_pixels(root: Path) -> list[tuple[str, str, str, bytes]]:
    return sorted(
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PixelData)
        for ds in map(pydicom.dcmread, root.rglob("*.dcm"))
    )


def test_same_seed_gives_same_uids_and_pixels(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        synth.make_cohort("lung-ct", tmp_path / name, patients=2, slices=3, size=32, seed=seed)
    a, b, c = (uids_and_pixels(tmp_path / n) for n in "abc")
    assert a == b
    assert not {row[2] for row in a} & {row[2] for row in c}


def test_lung_cohort_layout_clinical_file_and_nodules(tmp_path):
    info = synth.make_cohort("lung-ct", tmp_path, patients=3, slices=6, size=48, seed=1)
    assert [p.patient_id for p in info.patients] == ["LUNG-0001", "LUNG-0002", "LUNG-0003"]
    assert info.num_files == 18 and len(list(tmp_path.rglob("*.dcm"))) == 18
    with info.clinical_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in rows] == [p.patient_id for p in info.patients]
    assert {"sex", "age", "diagnosis", "stage", "smoking_status"} <= set(rows[0])
    for patient, row in zip(info.patients, rows):
        assert patient.series_dir.relative_to(tmp_path).parts[0] == patient.patient_id
        assert (row["sex"], int(row["age"])) == (patient.sex, patient.age)
        slices = read_series(patient.series_dir)
        assert slices[0].PatientID == patient.patient_id and len(slices) == 6
        assert value_at(slices, patient.lesion_center) == synth.HU_NODULE
        assert float(row["nodule_diameter_mm"]) == pytest.approx(2 * patient.lesion_radius_mm, abs=0.05)


def test_prostate_cohort_clinical_fields(tmp_path):
    info = synth.make_cohort("prostate-mr", tmp_path, patients=2, slices=4, size=32)
    with info.clinical_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in rows] == ["PROSTATE-0001", "PROSTATE-0002"]
    assert all(r["sex"] == "M" and float(r["psa_ng_ml"]) > 0 and r["pirads"] in "345" for r in rows)


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="lung-ct"):
        synth.make_cohort("brain-pet", tmp_path, patients=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size >= 32"):
        synth.make_cohort("lung-ct", tmp_path, patients=1, size=16)
    with pytest.raises(ValueError, match="inside a lung"):
        synth.make_ct_series(tmp_path, rows=32, cols=32, slices=1, nodule_center=(0.0, 0.0, -150.0), **SUBJECT)
    with pytest.raises(ValueError, match="sex"):
        synth.make_ct_series(tmp_path, rows=32, cols=32, slices=1, **{**SUBJECT, "sex": "female"})


def test_corrupt_examples_are_broken_in_different_ways(tmp_path):
    paths = {p.name: p for p in synth.corrupt_examples(tmp_path)}
    assert paths["empty.dcm"].stat().st_size == 0
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(paths["not_dicom.dcm"])
    assert "SOPInstanceUID" not in pydicom.dcmread(paths["missing_sop_uid.dcm"])
    truncated = pydicom.dcmread(paths["truncated_pixels.dcm"])
    assert len(truncated.PixelData) < truncated.Rows * truncated.Columns * 2
