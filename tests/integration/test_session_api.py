"""The session's dataset/DICOM API and download guard, from inside a real sandboxed session.

Runs once per database backend (SQLite, PostgreSQL) against the small demo: alice's project
``lung-screening`` is granted ``lung-ct-screening`` only (make_cohort('lung-ct', seed=1,
patients=2, slices=12, size=64)). Every request goes to the hub's proxy on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from vre.demo.provision import DATASETS
from vre.demo.synth import CT_LANDMARKS, HU_NODULE, Z_CENTER_MM, make_cohort, phantom_hu_at

pytestmark = pytest.mark.integration

PROJECT = "lung-screening"
SLUG = "lung-ct-screening"
REFUSED = "Dataset files cannot be downloaded from the VRE"


@pytest.fixture(scope="module")
def alice(hub):
    c = hub.client("alice")
    c.start(PROJECT)
    yield c
    c.stop(PROJECT)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The demo cohort's truth, regenerated with the demo's parameters (deterministic)."""
    spec = next(d for d in DATASETS if d["slug"] == SLUG)
    return make_cohort(spec["kind"], tmp_path_factory.mktemp("truth"), seed=spec["seed"], **spec["small"])


def api(c, path: str, **kw) -> requests.Response:
    return requests.get(f"{c.server_url(PROJECT)}/vre/api{path}", headers={"Authorization": f"token {c.token}"},
                        timeout=kw.pop("timeout", 60), **kw)


def raw_get(c, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as written: no client-side normalisation of '..', '%2e%2e' or '//'."""
    url = urlsplit(c.server_url(PROJECT))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", url.path + path, headers={"Authorization": f"token {c.token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_lists_only_the_granted_dataset_with_its_record(alice):
    r = api(alice, "/datasets")
    assert r.status_code == 200, r.text
    datasets = r.json()["datasets"]
    assert [d["slug"] for d in datasets] == [SLUG]
    record = datasets[0]["record"]
    assert record["title"].startswith("Lung cancer screening") and record["modalities"] == ["CT"]
    assert datasets[0]["indexed"] and datasets[0]["browse_path"] == f"data/{SLUG}"
    assert api(alice, "/datasets/prostate-mri/series").status_code == 404  # not granted: not there


def test_browse_and_drill_down(alice, cohort):
    page = api(alice, f"/datasets/{SLUG}/series", params={"modality": "CT", "limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["items"][0]["num_instances"] == 12
    assert api(alice, f"/datasets/{SLUG}/series", params={"modality": "MR"}).json()["total"] == 0
    patients = api(alice, f"/datasets/{SLUG}/patients").json()
    assert [p["patient_id"] for p in patients["items"]] == [p.patient_id for p in cohort.patients]
    first = cohort.patients[0].patient_id
    studies = api(alice, f"/datasets/{SLUG}/studies", params={"patient": first}).json()["items"]
    assert len(studies) == 1 and studies[0]["num_series"] == 1
    series = api(alice, f"/datasets/{SLUG}/series", params={"study": studies[0]["study_uid"]}).json()["items"]
    assert series[0]["patient_id"] == first and series[0]["modality"] == "CT"
    found = api(alice, f"/datasets/{SLUG}/series", params={"q": f"{first.lower()} lung"}).json()
    assert found["total"] == 1 and found["items"][0]["series_uid"] == series[0]["series_uid"]
    png = api(alice, f"/datasets/{SLUG}/series/{series[0]['series_uid']}/thumbnail.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def _voxel(meta: dict, point) -> tuple[int, int, int]:
    point = np.asarray(point, float)
    normal = np.asarray(meta["normal"])
    k = min(range(meta["num_slices"]), key=lambda i: abs(float(np.dot(normal, point - meta["slices"][i]["position"]))))
    origin, iop = np.asarray(meta["slices"][k]["position"]), np.asarray(meta["orientation"])
    row_spacing, col_spacing = meta["pixel_spacing"]
    return (k, round(float(np.dot(point - origin, iop[3:])) / row_spacing),
            round(float(np.dot(point - origin, iop[:3])) / col_spacing))


def test_slice_hu_at_the_nodule_centre_and_landmarks(alice, cohort):
    patient = cohort.patients[0]
    uid = api(alice, f"/datasets/{SLUG}/series", params={"patient": patient.patient_id}).json()["items"][0]["series_uid"]
    meta = api(alice, f"/datasets/{SLUG}/series/{uid}").json()
    assert meta["ordering"] == "geometry" and meta["units"] == "HU" and meta["invert"] is False
    assert meta["num_slices"] == 12 and meta["mpr"]["available"]
    k, row, col = _voxel(meta, patient.lesion_center)
    r = api(alice, f"/datasets/{SLUG}/series/{uid}/slices/{k}")
    assert r.status_code == 200 and r.headers["X-VRE-Dtype"] == "int16"
    rows, cols = map(int, r.headers["X-VRE-Shape"].split(","))
    pixels = np.frombuffer(r.content, "<i2").reshape(rows, cols)
    assert pixels[row, col] == HU_NODULE == 60
    for name, (x, y, _) in CT_LANDMARKS.items():  # noise-free near landmarks: compare with the phantom
        k2, row2, col2 = _voxel(meta, (x, y, Z_CENTER_MM))
        values = np.frombuffer(api(alice, f"/datasets/{SLUG}/series/{uid}/slices/{k2}").content, "<i2").reshape(rows, cols)
        origin = meta["slices"][k2]["position"]
        truth = phantom_hu_at(origin[0] + col2 * meta["pixel_spacing"][1], origin[1] + row2 * meta["pixel_spacing"][0],
                              origin[2], nodule_center=patient.lesion_center, nodule_radius=patient.lesion_radius_mm)
        assert values[row2, col2] == truth, name
    coronal = api(alice, f"/datasets/{SLUG}/series/{uid}/mpr/coronal/{row}")
    assert coronal.status_code == 200 and coronal.headers["X-VRE-Shape"] == f"12,{cols}"
    tags = api(alice, f"/datasets/{SLUG}/series/{uid}/tags", params={"slice": k}).json()
    assert any(e["keyword"] == "PatientID" and e["value"] == patient.patient_id for e in tags["elements"])
    # the same file, opened by path through ~/data ("Open With" from the file browser)
    path = f"data/{SLUG}/" + str(patient.series_dir.relative_to(cohort.root)) + "/IMG0001.dcm"
    single = api(alice, "/file", params={"path": path})
    assert single.status_code == 200, single.text
    assert api(alice, "/file", params={"path": "/etc/passwd"}).status_code == 403


GUARDED = [
    "/files/data/{slug}/clinical.csv",
    "/files/data/{slug}/clinical.csv?download=1",
    "/files/data/{slug}/{dcm}",
    "/files/data/{slug}/{dcm}?download=1",
    "/files/project/../data/{slug}/clinical.csv",
    "/files/project/%2e%2e/data/{slug}/clinical.csv",
    "/files/project/%2E%2E/data/{slug}/{dcm}",
    "/files//data/{slug}/clinical.csv",
    "/files/data//{slug}//clinical.csv",
    "/files/data/{slug}/%63linical.csv",
    "/view/data/{slug}/clinical.csv",
    "/nbconvert/html/data/{slug}/clinical.csv",
    "/nbconvert/html/data/{slug}/clinical.csv?download=true",
    "/api/contents/data/{slug}/clinical.csv",
    "/api/contents/data/{slug}/clinical.csv?content=1&format=text&type=file",
    "/api/contents/data/{slug}/{dcm}?content=1&format=base64&type=file",
    "/api/contents/project/../data/{slug}/{dcm}?format=base64",
]


def test_every_download_route_is_refused_inside_the_session(alice, cohort):
    dcm = str(cohort.patients[0].series_dir.relative_to(cohort.root)) + "/IMG0001.dcm"
    for template in GUARDED:
        path = template.format(slug=SLUG, dcm=dcm)
        status, body = raw_get(alice, path)
        assert status == 403, f"{path}: {status} {body[:200]!r}"
        assert json.loads(body)["reason"] == "download_refused" and REFUSED in json.loads(body)["message"], path
    # the file browser still lists the datasets through ~/data, and metadata stays available
    status, body = raw_get(alice, f"/api/contents/data/{SLUG}?content=1")
    assert status == 200 and any(item["name"] == "clinical.csv" for item in json.loads(body)["content"])
    assert raw_get(alice, f"/api/contents/data/{SLUG}/clinical.csv?content=0")[0] == 200


def test_a_refused_download_reaches_the_hub_audit_trail(alice, hub):
    from vre import settings as vre_settings
    from vre.audit import open_store

    marker = uuid.uuid4().hex
    status, _ = raw_get(alice, f"/files/data/{SLUG}/clinical.csv?download=1&m={marker}")
    assert status == 403
    store = open_store(vre_settings.load(environ=hub.env))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = store.query(action="download.refused", text=marker)
        if events:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the refused download never reached the hub's audit store")
    event = events[0]
    assert event["actor"] == "alice" and event["project"] == PROJECT and event["dataset"] == SLUG
    assert event["outcome"] == "denied" and event["target"].endswith(f"/{SLUG}/clinical.csv")
    assert event["details"]["route"] == "files"
    views = store.query(action="dicom.series_view", user="alice", dataset=SLUG)
    assert views, "series views are audited too"
