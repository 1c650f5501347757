"""DICOM header index and catalogue summary, on small synthetic cohorts."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pydicom
import pytest

from vre.catalog import (
    CatalogError,
    build_record,
    index_dataset,
    list_series,
    open_index,
    summarize,
)
from vre.catalog import index as index_module
from vre.demo import synth


@pytest.fixture
def cohort(tmp_path):
    """Two lung CT patients (64x64x8) and one prostate MR patient (64x64x6) under one root."""
    root = tmp_path / "data"
    lung = synth.make_cohort("lung-ct", root / "lung", patients=2, slices=8, size=64, seed=5)
    prostate = synth.make_cohort("prostate-mr", root / "prostate", patients=1, slices=6, size=64, seed=5)
    return root, tmp_path / "catalog" / "index.sqlite", [*lung.patients, *prostate.patients]


def query(index: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(index) as conn:
        return conn.execute(sql, args).fetchall()


def test_index_counts_and_derived_tables(cohort):
    root, index, patients = cohort
    report = index_dataset(root, index)
    assert (report.patients, report.studies, report.series) == (3, 3, 3)
    assert (report.files_seen, report.files_indexed, report.errors) == (24, 22, 0)
    assert report.clinical_files == ["lung/clinical.csv", "prostate/clinical.csv"]
    assert "3 patients" in report.summary() and "2 clinical" in report.summary()

    series = query(index, "SELECT relpath_dir, num_instances, modality FROM series ORDER BY relpath_dir")
    expected = [
        (str(p.series_dir.relative_to(root)), *((6, "MR") if p.patient_id.startswith("PROSTATE") else (8, "CT")))
        for p in patients
    ]
    assert series == sorted(expected)
    assert query(index, "SELECT patient_id, sex FROM patients ORDER BY 1") == [(p.patient_id, p.sex) for p in patients]
    meta = dict(query(index, "SELECT key, value FROM meta"))
    assert meta["format_version"] == "3" and meta["indexed_at"].startswith("20")


def test_summary_from_index(cohort):
    root, index, patients = cohort
    index_dataset(root, index)
    summary = summarize(index)
    assert summary["modalities"] == ["CT", "MR"]
    assert summary["body_parts"] == ["CHEST", "PROSTATE"]
    assert (summary["num_subjects"], summary["num_studies"], summary["num_series"]) == (3, 3, 3)
    assert summary["num_instances"] == 22
    sexes = [p.sex for p in patients]
    assert summary["sex_distribution"] == {"F": sexes.count("F"), "M": sexes.count("M"), "O": 0, "unknown": 0}
    ages = [p.age for p in patients]
    assert summary["age_range"] == [min(ages), max(ages)]
    dates = sorted(f"{d[:4]}-{d[4:6]}-{d[6:8]}" for d in (p.series_dir.parent.name[:8] for p in patients))
    assert summary["study_date_range"] == [dates[0], dates[-1]]
    assert len(summary["manufacturers"]) >= 1


def test_reindex_reads_only_changed_files_and_drops_deleted_ones(cohort):
    root, index, patients = cohort
    index_dataset(root, index)
    again = index_dataset(root, index)
    assert (again.files_indexed, again.files_skipped_unchanged, again.files_removed) == (0, 22, 0)

    touched = sorted(patients[0].series_dir.iterdir())[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    changed = index_dataset(root, index)
    assert (changed.files_indexed, changed.files_skipped_unchanged) == (1, 21)

    sorted(patients[1].series_dir.iterdir())[-1].unlink()
    shrunk = index_dataset(root, index)
    assert (shrunk.files_indexed, shrunk.files_removed, shrunk.series) == (0, 1, 3)
    rel = str(patients[1].series_dir.relative_to(root))
    assert query(index, "SELECT num_instances FROM series WHERE relpath_dir = ?", rel) == [(7,)]
    assert query(index, "SELECT COUNT(*) FROM files") == [(21,)]


def test_corrupt_files_are_counted_never_fatal(cohort):
    root, index, _ = cohort
    synth.corrupt_examples(root / "junk")
    (root / "junk" / "README.txt").write_text("notes from the data manager\n")
    report = index_dataset(root, index)
    reasons = dict(report.error_examples)
    assert report.errors == 6 and report.patients == 3 and report.files_indexed == 28
    assert reasons["junk/truncated_pixels.dcm"].startswith("truncated: pixel data needs 2048 bytes")
    assert "truncated" in reasons["junk/truncated_header.dcm"]
    assert reasons["junk/missing_sop_uid.dcm"] == "missing SOPInstanceUID"
    assert reasons["junk/not_dicom.dcm"].startswith("not a DICOM file")
    assert reasons["junk/empty.dcm"].startswith("not a DICOM file")
    assert "junk/README.txt" in reasons
    # broken files that did not change are not read again, but still reported
    again = index_dataset(root, index)
    assert (again.files_indexed, again.errors) == (0, 6)


def test_unreadable_file_is_reported_and_retried(cohort, monkeypatch):
    root, index, patients = cohort
    locked = sorted(patients[0].series_dir.iterdir())[0]

    def deny(path, *args, **kwargs):  # chmod 000 would not stop root, so refuse here
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(index_module, "open", deny, raising=False)
    report = index_dataset(root, index)
    assert report.errors == 1
    assert dict(report.error_examples)[str(locked.relative_to(root))] == "cannot read: Permission denied"
    monkeypatch.undo()
    again = index_dataset(root, index)  # permissions fixed, mtime unchanged: read again anyway
    assert (again.files_indexed, again.errors) == (1, 0)


def test_what_sessions_cannot_read_is_reported_never_indexed(cohort, tmp_path):
    """The indexer is root; sessions are not and see the dataset's folder alone: a file without
    o+r, a folder without o+rx and a link (here to another tree's file) are reported, and none of
    their headers reaches the index that sessions read."""
    root, index, patients = cohort
    private = sorted(patients[0].series_dir.iterdir())[0]
    os.chmod(private, 0o600)
    closed = patients[1].series_dir
    os.chmod(closed, 0o700)
    elsewhere = tmp_path / "elsewhere"
    synth.make_cohort("lung-ct", elsewhere, patients=1, slices=2, size=32, seed=8)
    (root / "linked.dcm").symlink_to(next(elsewhere.rglob("*.dcm")))
    report = index_dataset(root, index)
    reasons = dict(report.error_examples)
    assert reasons[str(private.relative_to(root))].startswith("not readable by sessions, not indexed: run chmod o+r")
    assert reasons[str(closed.relative_to(root))].startswith("folder not readable by sessions, not indexed: run chmod o+rx")
    assert reasons["linked.dcm"].startswith("a symbolic link: not indexed")
    indexed = {r[0] for r in query(index, "SELECT relpath FROM files")}
    assert str(private.relative_to(root)) not in indexed and "linked.dcm" not in indexed
    assert not any(r.startswith(str(closed.relative_to(root))) for r in indexed)
    assert report.files_indexed == 22 - 1 - 8  # of 2 x 8 lung and 6 prostate slices


def test_catalog_errors_say_what_to_fix(tmp_path):
    index = tmp_path / "index.sqlite"
    with pytest.raises(CatalogError, match="does not exist"):
        index_dataset(tmp_path / "nowhere", index)
    (tmp_path / "file.dcm").write_bytes(b"x")
    with pytest.raises(CatalogError, match="is a file, not a folder"):
        index_dataset(tmp_path / "file.dcm", index)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"hidden")
    with pytest.raises(CatalogError, match="is empty"):
        index_dataset(empty, index)
    no_dicom = tmp_path / "no_dicom"
    no_dicom.mkdir()
    (no_dicom / "clinical.csv").write_text("patient_id,age\nA,1\n")
    (no_dicom / "scan.nii").write_bytes(b"\x5c\x01" + b"\0" * 400)
    with pytest.raises(CatalogError, match=r"no DICOM files found.*scan\.nii.*Point the index at the folder"):
        index_dataset(no_dicom, index)
    assert not index.exists()  # a failed first run leaves no half-made index behind
    with pytest.raises(CatalogError, match="index the dataset first"):
        open_index(index)


def test_list_series_filters(cohort):
    root, index, patients = cohort
    index_dataset(root, index)
    conn = open_index(index)
    assert [s["patient_id"] for s in list_series(conn)] == ["LUNG-0001", "LUNG-0002", "PROSTATE-0001"]
    mr = list_series(conn, modality="mr")
    assert len(mr) == 1 and mr[0]["description"] == "t2_tse_tra" and mr[0]["num_instances"] == 6
    assert mr[0]["pixel_spacing"] == [200 / 64, 200 / 64]
    assert {s["patient_id"] for s in list_series(conn, body_part="chest")} == {"LUNG-0001", "LUNG-0002"}
    assert [s["patient_id"] for s in list_series(conn, text="0002")] == ["LUNG-0002"]
    assert [s["modality"] for s in list_series(conn, text="TSE")] == ["MR"]
    assert list_series(conn, text="%") == []  # wildcards are matched literally
    assert [s["patient_id"] for s in list_series(conn, limit=1, offset=1)] == ["LUNG-0002"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM series")
    conn.close()


def test_slice_position_follows_the_slice_normal(tmp_path):
    root, index = tmp_path / "data", tmp_path / "index.sqlite"
    subject = dict(patient_name="X", sex="M", age=70, rows=32, cols=32, slices=6)
    synth.make_ct_series(root / "ffs", patient_id="FFS-1", feet_first=True, **subject)
    synth.make_ct_series(root / "hfs", patient_id="HFS-1", **subject)
    index_dataset(root, index)
    rows = query(index, "SELECT relpath, slice_position, instance_number FROM files ORDER BY relpath")
    for relpath, position, instance in rows:
        ds = pydicom.dcmread(root / relpath)
        z = float(ds.ImagePositionPatient[2])
        assert instance == ds.InstanceNumber
        # feet first the rows run towards -x, so the normal (row x column) is -z
        assert position == pytest.approx(-z if relpath.startswith("ffs") else z)
    ffs = [p for rel, p, _ in sorted(rows, key=lambda r: r[2]) if rel.startswith("ffs")]
    assert ffs == sorted(ffs, reverse=True) and len(set(ffs)) == 6


def test_ages_from_months_or_birth_date(tmp_path):
    root, index = tmp_path / "data", tmp_path / "index.sqlite"
    synth.make_ct_series(root / "a", patient_id="INFANT", patient_name="I", sex="O", age=0, rows=32, cols=32, slices=2)
    synth.make_ct_series(root / "b", patient_id="ADULT", patient_name="A", sex="M", age=81, rows=32, cols=32, slices=2)
    for path in (root / "a").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientAge = "006M"
        ds.save_as(path)
    for path in (root / "b").iterdir():
        ds = pydicom.dcmread(path)
        del ds.PatientAge  # age then comes from birth date and study date
        ds.save_as(path)
    index_dataset(root, index)
    assert query(index, "SELECT patient_id, age_years FROM patients ORDER BY 1") == [("ADULT", 81.0), ("INFANT", 0.5)]
    summary = summarize(index)
    assert summary["age_range"] == [0, 81]
    assert summary["sex_distribution"] == {"F": 0, "M": 1, "O": 1, "unknown": 0}


def test_parallel_index_matches_in_process_and_reports_progress(tmp_path):
    root = tmp_path / "data"
    synth.make_cohort("lung-ct", root, patients=3, slices=70, size=32)
    calls: list[tuple[int, int]] = []
    parallel = index_dataset(root, tmp_path / "p.sqlite", workers=2, progress=lambda d, t: calls.append((d, t)))
    serial = index_dataset(root, tmp_path / "s.sqlite", workers=1)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)  # a threaded caller, like the hub: workers come from forkserver
    thread.start()
    try:
        threaded = index_dataset(root, tmp_path / "t.sqlite", workers=2)
    finally:
        stop.set()
        thread.join()
    assert parallel.files_indexed == serial.files_indexed == threaded.files_indexed == 210
    assert calls[-1] == (210, 210) and [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 1
    sql = "SELECT * FROM files ORDER BY relpath"
    assert query(tmp_path / "p.sqlite", sql) == query(tmp_path / "s.sqlite", sql) == query(tmp_path / "t.sqlite", sql)


def test_build_record_validates_admin_fields(cohort):
    root, index, _ = cohort
    index_dataset(root, index)
    summary = summarize(index)
    record = build_record(
        {"title": " Lung screening CT ", "interoperability_tier": "2", "keywords": "lung, CT,", "condition": "Lung"},
        summary,
    )
    assert record["title"] == "Lung screening CT" and record["interoperability_tier"] == 2
    assert record["keywords"] == ["lung", "CT"] and record["num_subjects"] == 3
    with pytest.raises(CatalogError, match="1, 2 or 3"):
        build_record({"title": "x", "interoperability_tier": 4}, summary)
    with pytest.raises(CatalogError, match="needs a title"):
        build_record({"description": "no title"}, summary)
    with pytest.raises(CatalogError, match="unknown catalogue field.*colour.*allowed: title"):
        build_record({"title": "x", "colour": "blue"}, summary)


def test_non_ascii_text_is_decoded_with_the_character_set(tmp_path):
    root, index = tmp_path / "data", tmp_path / "data" / "index.sqlite"  # index inside the dataset
    subject = dict(patient_name="X", sex="F", age=50, rows=32, cols=32, slices=2)
    synth.make_ct_series(root / "utf8", patient_id="DE-1", **subject)
    synth.make_ct_series(root / "jis", patient_id="JP-1", **subject)
    for path in (root / "utf8").iterdir():
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 192", "Thorax Überprüfung"
        ds.save_as(path)
    for path in (root / "jis").iterdir():  # ISO 2022 escape sequences: decoded by pydicom
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet, ds.StudyDescription = ["", "ISO 2022 IR 87"], "胸部CT"
        ds.save_as(path)
    report = index_dataset(root, index)
    assert report.errors == 0 and report.files_seen == 4
    assert query(index, "SELECT patient_id, description FROM studies ORDER BY 1") == [
        ("DE-1", "Thorax Überprüfung"),
        ("JP-1", "胸部CT"),
    ]
    assert index_dataset(root, index).files_seen == 4  # the index file itself is never picked up
    conn = open_index(index)
    assert [s["patient_id"] for s in list_series(conn, text="Überprüfung")] == ["DE-1"]
    conn.close()


def test_the_index_stores_every_element_the_viewer_reads_from_it():
    """The session's viewer (vre_session, which cannot import the hub's package) builds geometry,
    order and windows from the index's per-file record: the two lists must not drift apart."""
    from vre.catalog.index import _PRESENCE, VIEWER_KEYWORDS
    from vre_session.dicom import INDEX_KEYWORDS

    assert INDEX_KEYWORDS == set(VIEWER_KEYWORDS) | set(_PRESENCE)
