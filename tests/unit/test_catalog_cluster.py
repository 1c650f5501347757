"""Indexing in the cluster (``vre.catalog.cluster``): the indexer's pod program run as its pod
runs it (``python3 -I indexpod.py`` beside the hub's ``index.py``, from a folder like its Secret's)
on 127.0.0.1, followed and fetched by the hub's own client; the hashes it keeps and the airlock's
check for dataset copies from them, with no dataset folder to read; the Job's rendering; where
registrations' paths point when the hub cannot see the datasets. The Job on the test cluster is
tests/k8s/test_helm_install.py's."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp

import kubernetes_validate
import pytest

from vre import db as vdb
from vre.airlock.store import DatasetIndex, Unchecked
from vre.catalog import cluster, registry
from vre.catalog import index as index_module
from vre.catalog.index import file_with_digest, has_digests, index_dataset
from vre.demo import synth
from vre.errors import Conflict, VREError
from vre.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = next(line.split("=", 1)[1].strip().lstrip("v") for line in
                   (ROOT / "k8s/build/versions.env").read_text().splitlines() if line.startswith("K8S_VERSION="))



def validate(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')} is not valid for Kubernetes {K8S_VERSION}: {e}")


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "data"
    synth.make_cohort("lung-ct", root / "lung", patients=2, slices=6, size=32, seed=3)
    (root / "clinical.csv").write_text("patient,age\nLUNG-001,61\n")
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def some_file(root: Path) -> Path:
    return next(p for p in sorted(root.rglob("*.dcm")))


# --- the hashes in the index ------------------------------------------------------------------
def test_an_index_with_digests_keeps_every_files_hash_and_follows_changes(cohort, tmp_path):
    index = tmp_path / "index.sqlite"
    index_dataset(cohort, index, workers=1)
    assert not has_digests(index)
    index_dataset(cohort, index, workers=1, digests=True)
    assert has_digests(index)
    dcm = some_file(cohort)
    rel = dcm.relative_to(cohort).as_posix()
    assert file_with_digest(index, dcm.stat().st_size, sha256(dcm)) == rel
    csv = cohort / "clinical.csv"   # side files too: a copy of the clinical table is a copy
    assert file_with_digest(index, csv.stat().st_size, sha256(csv)) == "clinical.csv"
    with sqlite3.connect(index) as conn:
        assert conn.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == len(list(cohort.rglob("*.*")))

    old = (csv.stat().st_size, sha256(csv))
    csv.write_text("patient,age\nLUNG-001,62\nLUNG-002,70\n")
    dcm.unlink()
    seen = []
    index_dataset(cohort, index, workers=1, digests=True, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (1, 1)   # the changed file alone was hashed again (no header to read)
    assert file_with_digest(index, *old) is None
    assert file_with_digest(index, csv.stat().st_size, sha256(csv)) == "clinical.csv"
    with sqlite3.connect(index) as conn:
        assert conn.execute("SELECT COUNT(*) FROM digests WHERE relpath = ?", (rel,)).fetchone()[0] == 0

    index_dataset(cohort, index, workers=1)   # indexed again without: no hash is kept, none stale
    assert not has_digests(index)
    assert file_with_digest(index, csv.stat().st_size, sha256(csv)) is None


def test_the_hashes_cover_every_file_sessions_can_read_not_only_the_indexed_ones(cohort, tmp_path):
    """Hidden files, files in hidden folders and DICOMDIR are not in the index, but a session reads
    them: their hashes are kept too; what sessions cannot read, and links, are not."""
    (cohort / ".notes.csv").write_text("patient,comment\nLUNG-001,smoker\n")
    (cohort / ".hidden").mkdir()
    (cohort / ".hidden" / "table.tsv").write_text("a\tb\n")
    (cohort / "DICOMDIR").write_bytes(b"\x00" * 200 + b"DICM")
    secret = cohort / "private.csv"
    secret.write_text("not for sessions")
    secret.chmod(0o600)
    (cohort / "link.csv").symlink_to(cohort / "clinical.csv")
    index = tmp_path / "index.sqlite"
    index_dataset(cohort, index, workers=1, digests=True)
    for rel in (".notes.csv", ".hidden/table.tsv", "DICOMDIR"):
        f = cohort / rel
        assert file_with_digest(index, f.stat().st_size, sha256(f)) == rel
    assert file_with_digest(index, secret.stat().st_size, sha256(secret)) is None
    with sqlite3.connect(index) as conn:
        listed = {r[0] for r in conn.execute("SELECT relpath FROM digests")}
        assert "link.csv" not in listed and ".hidden/table.tsv" not in {r[0] for r in conn.execute("SELECT relpath FROM files")}


def test_the_copy_check_reads_hashes_from_the_index_where_the_dataset_is_out_of_reach(cohort, tmp_path):
    index = tmp_path / "index.sqlite"
    index_dataset(cohort, index, workers=1, digests=True)
    dcm = some_file(cohort)
    size, digest = dcm.stat().st_size, sha256(dcm)
    shutil.copytree(cohort, tmp_path / "kept")
    shutil.rmtree(cohort)   # the hub cannot read the dataset (a claim it does not mount)
    found = DatasetIndex().match([("lung", "claim:dataset-lung", "v1", str(index))], size, digest)
    assert found == f"lung/{dcm.relative_to(cohort).as_posix()}"
    assert DatasetIndex().match([("lung", "claim:dataset-lung", "v1", str(index))], size, "0" * 64) is None
    # an index without hashes: the dataset's files are read, as before
    plain = tmp_path / "plain.sqlite"
    index_dataset(tmp_path / "kept", plain, workers=1)
    checker = DatasetIndex()
    assert checker.match([("lung", str(tmp_path / "kept"), "v1", str(plain))], size, digest) == found
    # re-indexed with hashes (a new version): the same checker reads them from now on
    index_dataset(tmp_path / "kept", plain, workers=1, digests=True)
    shutil.rmtree(tmp_path / "kept")
    assert checker.match([("lung", str(tmp_path / "kept"), "v2", str(plain))], size, digest) == found
    # neither hashes nor a folder to read: never "no copy"
    with pytest.raises(Unchecked, match="lung"):
        DatasetIndex().match([("lung", "claim:dataset-lung", "v1", str(tmp_path / "none.sqlite"))], size, digest)


# --- the pod's program, followed by the hub -------------------------------------------------
class Indexer:
    """``indexpod.py`` on 127.0.0.1, started as in its pod: from a folder holding it and
    ``index.py`` (the Secret's), with ``python3 -I``."""

    def __init__(self, tmp: Path, root: Path, idle: float = 60):
        src = tmp / "etc-vre-index"
        src.mkdir(parents=True)
        here = Path(cluster.__file__).parent
        for name in ("index.py", "indexpod.py"):
            shutil.copy(here / name, src / name)
        (tmp / "work").mkdir()
        self.out = tmp / "work" / "index.sqlite"
        self.token = secrets.token_urlsafe(32)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(src / "indexpod.py"), "--root", str(root), "--out", str(self.out),
             "--workers", "2", "--host", "127.0.0.1", "--port", "0", "--idle", str(idle)],
            env={"PATH": os.environ["PATH"], "VRE_INDEX_TOKEN": self.token}, cwd="/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "on port" not in line:
            self.proc.kill()
            raise AssertionError(f"the indexer did not start: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(line.rsplit(" ", 1)[-1])

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {token if token is not None else self.token}"})
        r = conn.getresponse()
        return r.status, r.read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def follow(indexer: Indexer, out: Path, progress=None):
    return asyncio.run(cluster._follow("127.0.0.1", indexer.token, "lung", out, progress, port=indexer.port))


def test_the_pods_indexer_answers_the_hub_alone_and_hands_over_a_whole_index(tmp_path):
    cohort = tmp_path / "data"   # enough files for the indexer's worker processes (started from -I)
    synth.make_cohort("lung-ct", cohort / "lung", patients=2, slices=101, size=32, seed=3)
    indexer = Indexer(tmp_path, cohort, idle=2)
    try:
        assert indexer.get("/progress", token="")[0] == 401
        assert indexer.get("/progress", token=indexer.token[:-1] + "x")[0] == 401
        assert indexer.get("/index", token="")[0] == 401
        assert indexer.get("/elsewhere")[0] == 404
        out = tmp_path / "catalog" / "lung" / "index.sqlite"
        seen = []
        report = follow(indexer, out, lambda done, total: seen.append((done, total)))
        assert report.series == 2 and report.errors == 0 and report.clinical_files == ["lung/clinical.csv"]
        assert report.files_indexed == 202 > index_module._POOL_THRESHOLD
        assert seen and seen[-1][0] == seen[-1][1] == 202 + 203   # the headers read, then every file hashed
        assert has_digests(out) and not out.with_name("index.sqlite.incoming").exists()
        dcm = some_file(cohort)
        assert file_with_digest(out, dcm.stat().st_size, sha256(dcm)) == dcm.relative_to(cohort).as_posix()
        status, body = indexer.get("/progress")
        assert status == 200 and json.loads(body)["state"] == "done"
        # idle after its index was fetched: it ends by itself, and says it made the index
        assert indexer.proc.wait(timeout=30) == 0
    finally:
        indexer.stop()

    # a re-index: a new pod gets the index the hub has, and reads only what changed
    (cohort / "lung" / "clinical.csv").write_text("patient\nLUNG-001\n")
    again = Indexer(tmp_path / "again", cohort, idle=60)
    try:
        assert json.loads(again.get("/progress")[1])["state"] == "waiting"   # nothing read before the hub says so
        seen = []
        report = follow(again, out, lambda done, total: seen.append((done, total)))
        assert (report.files_indexed, report.files_skipped_unchanged) == (0, 202)
        assert seen[-1] == (1, 1)   # the changed file alone was read (hashed) again
        csv = cohort / "lung" / "clinical.csv"
        assert file_with_digest(out, csv.stat().st_size, sha256(csv)) == "lung/clinical.csv"
        conn = http.client.HTTPConnection("127.0.0.1", again.port, timeout=10)
        conn.request("POST", "/start", headers={"Authorization": f"Bearer {again.token}"})
        assert conn.getresponse().status == 409   # started once
    finally:
        again.stop()


def test_a_failed_indexing_is_the_admins_clear_error_and_no_index(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    indexer = Indexer(tmp_path, empty, idle=1)
    try:
        out = tmp_path / "catalog" / "index.sqlite"
        with pytest.raises(VREError, match="no DICOM files found"):
            follow(indexer, out)
        assert not out.exists()
        status, body = indexer.get("/index")
        assert status == 409 and "failed" in json.loads(body)["error"]
        assert indexer.proc.wait(timeout=30) == 1
    finally:
        indexer.stop()


class FakePod(BaseHTTPRequestHandler):
    """A pod that indexed at once and hands over ``body`` (announcing ``length`` bytes)."""
    body, length = b"", 0

    def log_message(self, *a):
        pass

    def _send(self, status, body: bytes, length=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if self.path != "/index" else "application/vnd.sqlite3")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(202, b"{}")

    def do_GET(self):
        if self.path == "/progress":
            report = {"files_seen": 1, "files_indexed": 1, "files_skipped_unchanged": 0, "files_removed": 0,
                      "errors": 0, "error_examples": [], "clinical_files": [], "patients": 1, "studies": 1,
                      "series": 1, "seconds": 0.1}
            return self._send(200, json.dumps({"state": "done", "done": 1, "total": 1, "report": report}).encode())
        self._send(200, self.body, self.length)
        self.close_connection = True


@pytest.mark.parametrize("what", ["cut short", "not an index", "a view in it"])
def test_an_index_that_is_not_whole_and_sound_leaves_the_old_one(cohort, tmp_path, what):
    good = tmp_path / "good.sqlite"
    index_dataset(cohort, good, workers=1, digests=True)
    data = good.read_bytes()
    if what == "cut short":
        FakePod.body, FakePod.length = data[: len(data) // 2], len(data)
    elif what == "not an index":
        FakePod.body, FakePod.length = b"SQLite format 3\x00" + b"\x00" * 50, None
    else:
        with sqlite3.connect(good) as conn:
            conn.execute("CREATE VIEW v AS SELECT 1")
        FakePod.body, FakePod.length = good.read_bytes(), None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePod)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "catalog" / "index.sqlite"
    out.parent.mkdir()
    out.write_bytes(b"the old index")
    try:
        with pytest.raises((VREError, aiohttp.ClientError), match="not readable|holds view|payload|not complete|Response"):
            asyncio.run(cluster._follow("127.0.0.1", "t", "lung", out, None, port=server.server_address[1]))
    finally:
        server.shutdown()
    assert out.read_bytes() == b"the old index" and [p.name for p in out.parent.iterdir()] == ["index.sqlite"]


# --- the Job ------------------------------------------------------------------------------
def k8s_settings(tmp_path, volume: str, **kw) -> Settings:
    return Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", backend="kubernetes",
                    k8s_dataset_volume=volume, instance="vre", notebook_image="vre-notebook:1",
                    k8s_nfs_server="nfs.example.org" if volume == "nfs" else "", **kw)


@pytest.mark.parametrize("volume", ["pvc", "nfs"])
def test_the_index_job_reads_the_dataset_read_only_answers_the_hub_alone_and_has_no_privileges(tmp_path, volume):
    settings = k8s_settings(tmp_path, volume)
    path = cluster.claim_path("lung") if volume == "pvc" else "/exports/lung"
    objects, job, secret = cluster.index_objects(settings, "lung", path, "vre-index-lung-abc123",
                                                 image="vre-notebook:1", token="t" * 40)
    for obj in (*objects, job, secret):
        validate(obj)
    ns, policies = objects[0], objects[1:]
    assert ns["metadata"]["name"] == "vre-0catalog" and ns["metadata"]["labels"]["vre.instance"] == "vre"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == ("restricted" if volume == "pvc" else "baseline")
    deny, hub = policies
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}   # no egress at all
    assert hub["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": cluster.INDEX_PORT}]
    assert hub["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"vre.component": "hub"}
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsUser"] == cluster.INDEX_UID
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["command"][:3] == ["python3", "-I", f"{cluster.SOURCE_DIR}/indexpod.py"]
    # placed on a busy node (it asks for little), held to its limits once running
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2000m", "memory": "4096Mi"}}
    data = next(m for m in c["volumeMounts"] if m["name"] == "dataset")
    assert data["readOnly"] and data["mountPath"] == "/data/lung"
    source = next(v for v in pod["volumes"] if v["name"] == "dataset")
    if volume == "pvc":
        assert source["persistentVolumeClaim"] == {"claimName": "dataset-lung", "readOnly": True}
    else:
        assert source["nfs"] == {"server": "nfs.example.org", "path": "/exports/lung", "readOnly": True}
    assert secret["stringData"]["index.py"] == Path(index_module.__file__).read_text()
    assert job["spec"]["activeDeadlineSeconds"] == cluster.JOB_DEADLINE_S   # never Pending for ever
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["metadata"]["labels"]["vre.role"] == "indexer"
    with pytest.raises(Exception, match="allow-list"):
        cluster.index_objects(settings, "lung", path, "x", image="elsewhere:1", token="t" * 40)


# --- registrations where the hub cannot see the dataset ---------------------------------------
def test_registrations_name_a_claim_or_an_nfs_path_and_never_the_hubs_own_folders(tmp_path):
    for volume, given, expect in (("pvc", "", "claim:dataset-lung"), ("nfs", "/exports/lung/", "/exports/lung")):
        settings = k8s_settings(tmp_path / volume, volume)
        vdb.upgrade(settings.vre_db_url)
        path = registry.given_path(settings, given, "lung")
        with vdb.session_scope(settings.vre_db_url) as db:
            root, fields = registry.check_new_dataset(db, settings, path, "lung", title="Lung CT")
            assert str(root) == expect and fields == {"title": "Lung CT"}
            db.add(vdb.Dataset(slug="lung", title="Lung CT", path=str(root), catalog={}))
        with vdb.session_scope(settings.vre_db_url) as db, pytest.raises(Conflict, match="taken"):
            registry.check_new_dataset(db, settings, registry.given_path(settings, given, "lung"), "lung", title="x")
    settings = k8s_settings(tmp_path / "pvc", "pvc")
    with vdb.session_scope(settings.vre_db_url) as db, pytest.raises(VREError, match="leave the path out"):
        registry.check_new_dataset(db, settings, "/srv/lung", "other", title="x")
    settings = k8s_settings(tmp_path / "nfs", "nfs")
    with vdb.session_scope(settings.vre_db_url) as db:
        with pytest.raises(VREError, match="absolute path on the NFS server"):
            registry.check_new_dataset(db, settings, "exports/x", "other", title="x")
        for inside in ("/exports/lung/sub", "//exports/lung/sub", "/exports/./lung/x/.."):
            with pytest.raises(Conflict, match="overlaps dataset 'lung'|already registered as dataset 'lung'"):
                registry.check_new_dataset(db, settings, inside, "other", title="x")
        for broad in ("/", "//", "/etc/x", "/home"):
            with pytest.raises(VREError, match="system folder"):
                registry.check_new_dataset(db, settings, broad, "other", title="x")
    with pytest.raises(VREError, match="give the dataset's folder"):
        registry.given_path(settings, " ", "other")
    host = Settings(state_dir=tmp_path / "h" / "state", run_dir=tmp_path / "h" / "run")
    assert registry.source_kind(host) == "host" and not cluster.in_cluster(host)
    assert registry.source_kind(k8s_settings(tmp_path / "hp", "hostPath")) == "host"


def test_the_demo_registers_no_folder_datasets_where_sessions_mount_claims(tmp_path):
    """The demo's cohorts would be folders on the hub's volume, which sessions cannot mount when
    datasets are claims: the demo says so and makes its projects and accounts without them."""
    from sqlalchemy import select

    from vre.demo.provision import provision_demo

    settings = k8s_settings(tmp_path, "pvc")
    vdb.upgrade(settings.vre_db_url)
    settings.secrets_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    provision_demo(settings, log=lines.append)
    assert any("the demo has none" in line for line in lines), lines
    with vdb.session_scope(settings.vre_db_url) as db:
        assert db.scalars(select(vdb.Dataset)).all() == []
        projects = db.scalars(select(vdb.Project)).all()
        assert {p.slug for p in projects} == {"lung-screening", "prostate-ai"} and all(not p.grants for p in projects)
    assert not (settings.state_dir / "demo-data").exists()
