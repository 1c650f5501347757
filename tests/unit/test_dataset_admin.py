"""Dataset administration (vre.dataset_admin), shared by ``vre dataset add|reindex|edit|remove`` and
the Datasets admin page: the rules (admins only, path errors, taken names, granted datasets), the
audit event each change records (the same for CLI and web, but for who acted and how), the page's
background indexings (``Runs``) and its templates. On SQLite and PostgreSQL."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from vre import access_requests as AR
from vre import dataset_admin
from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.api.admin_datasets import Runs
from vre.audit import open_store
from vre.audit.events import cli_actor
from vre.demo.synth import make_cohort
from vre.errors import Conflict, NotFound, VREError
from vre.settings import Settings

WEB = AR.Actor("admin", via="web", client="192.0.2.7")
OPERATOR = AR.Actor.cli(None)
FIELDS = {"title": "Lung CT", "description": "", "publisher": "Test hospital", "access_rights": "",
          "condition": "Lung cancer", "interoperability_tier": "2", "keywords": "ct, lung", "license": "",
          "contact_point": ""}


@pytest.fixture(scope="module")
def data():
    """A small cohort (clinical.csv included) and one file that is not DICOM, readable by sessions
    (so not under pytest's private tmp)."""
    root = Path(tempfile.mkdtemp(prefix="vre-dsadmin-"))
    make_cohort("lung-ct", root / "cohort", patients=1, slices=3, size=32)
    (root / "cohort" / "notes.dcm").write_text("not an image")
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    yield root / "cohort"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name, role in (("bob", "researcher"), ("admin", "admin")):
            add_account(db, name, role=role, password=f"{name}-password-1")
    return settings


def events(settings):
    return [e for e in open_store(settings).query(limit=100) if e["action"].startswith("dataset.")]


def test_register_edit_reindex_remove_from_the_web_are_audited_with_the_admin(world, data):
    seen = []
    where, report = dataset_admin.register(world, WEB, str(data), "lung", FIELDS,
                                           progress=lambda done, total: seen.append((done, total)))
    assert where == str(data.resolve())
    assert (report.files_seen, report.errors, report.series) == (5, 1, 1)
    assert report.error_examples[0][0] == "notes.dcm" and report.clinical_files == ["clinical.csv"]
    assert seen[-1] == (4, 4)
    (row,) = dataset_admin.list_datasets(world)
    assert (row["slug"], row["title"], row["modalities"], row["subjects"]) == ("lung", "Lung CT", ["CT"], 1)

    assert dataset_admin.update(world, WEB, "lung", {**FIELDS, "title": "Lung CT, 2024", "keywords": "ct"}) == [
        "keywords", "title"]
    assert dataset_admin.update(world, WEB, "lung", {**FIELDS, "title": "Lung CT, 2024", "keywords": "ct"}) == []
    shown = dataset_admin.describe(world, "lung")
    assert shown["title"] == "Lung CT, 2024" and shown["fields"]["keywords"] == ["ct"]
    assert shown["fields"]["interoperability_tier"] == 2 and shown["record"]["num_series"] == 1
    published = json.loads((world.catalog_dir / "lung" / "record.json").read_text())
    assert published["title"] == "Lung CT, 2024" and published["path"] == "/data/lung"
    assert published["num_instances"] == 3  # what the index computed stays

    assert dataset_admin.reindex(world, WEB, "lung").files_indexed == 0  # nothing changed
    dataset_admin.remove(world, WEB, "lung")
    assert dataset_admin.list_datasets(world) == [] and data.is_dir()  # files untouched
    got = [(e["action"], e["actor"], e["actor_role"], e["outcome"], e["target"], e["dataset"], e["client"],
            e["details"]) for e in events(world)]
    assert got == [
        ("dataset.register", "admin", "admin", "ok", str(data.resolve()), "lung", "192.0.2.7",
         {"via": "web", "files": 5, "errors": 1, "series": 1}),
        ("dataset.update", "admin", "admin", "ok", "", "lung", "192.0.2.7",
         {"via": "web", "changed": ["keywords", "title"]}),
        ("dataset.reindex", "admin", "admin", "ok", "", "lung", "192.0.2.7", {"via": "web", "read": 0}),
        ("dataset.remove", "admin", "admin", "ok", "", "lung", "192.0.2.7", {"via": "web"}),
    ]


def test_a_reindex_replaces_the_index_whole_and_a_failed_one_leaves_it(world, data):
    """Whoever has the index open while it is re-indexed (the catalogue route streaming it to a
    session pod, a session's reader) keeps the whole index as it was; the new one takes its place
    in one rename. A re-index that fails leaves the index as it was, and no copy behind."""
    root = Path(tempfile.mkdtemp(prefix="vre-dsadmin-"))
    try:
        shutil.copytree(data, root / "cohort")
        os.chmod(root, 0o755)
        dataset_admin.register(world, WEB, str(root / "cohort"), "lung2", FIELDS)
        index = world.catalog_dir / "lung2" / "index.sqlite"
        before = index.read_bytes()
        with open(index, "rb") as streaming:
            (root / "cohort" / "notes.dcm").unlink()
            report = dataset_admin.reindex(world, WEB, "lung2")
            assert report.files_removed == 1 and report.files_indexed == 0
            assert streaming.read() == before   # the file it opened, whole and unchanged
        assert index.read_bytes() != before and oct(index.stat().st_mode)[-3:] == "644"
        assert sorted(p.name for p in index.parent.iterdir()) == ["index.sqlite", "record.json"]
        after = index.read_bytes()
        for f in (root / "cohort").rglob("*"):
            if f.is_file():
                f.unlink()
        with pytest.raises(VREError, match="empty"):
            dataset_admin.reindex(world, WEB, "lung2")
        assert index.read_bytes() == after
        assert sorted(p.name for p in index.parent.iterdir()) == ["index.sqlite", "record.json"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_operator_records_what_the_cli_always_recorded(world, data):
    dataset_admin.register(world, OPERATOR, str(data), "lung", FIELDS)
    (e,) = events(world)
    assert (e["action"], e["actor"], e["actor_role"], e["client"], e["details"]) == (
        "dataset.register", cli_actor(), "admin", None, {"via": "cli", "files": 5, "errors": 1, "series": 1})


def test_refusals_say_what_to_fix_and_change_nothing(world, data, tmp_path):
    (tmp_path / "private").mkdir(mode=0o700)
    for who in (AR.Actor("bob", client="192.0.2.8"), AR.Actor("ghost")):
        with pytest.raises(AR.Forbidden, match="only admins manage datasets"):
            dataset_admin.check_register(world, who, str(data), "lung", FIELDS)
    with pytest.raises(AR.Forbidden):
        dataset_admin.register(world, AR.Actor("bob"), str(data), "lung", FIELDS)
    afile = data / "clinical.csv"
    for path, message in ((str(tmp_path / "missing"), "does not exist"), (str(afile), "is not a directory"),
                          (str(tmp_path / "private"), "not searchable by other users")):
        with pytest.raises(VREError, match=message):
            dataset_admin.check_register(world, WEB, path, "lung", FIELDS)
    with pytest.raises(VREError, match="interoperability_tier must be 1, 2 or 3"):
        dataset_admin.check_register(world, WEB, str(data), "lung", {**FIELDS, "interoperability_tier": "7"})
    dataset_admin.register(world, WEB, str(data), "lung", FIELDS)
    with pytest.raises(Conflict, match="slug 'lung' is taken"):
        dataset_admin.check_register(world, WEB, str(data.parent), "lung", FIELDS)
    with pytest.raises(Conflict, match="already registered as dataset 'lung'"):
        dataset_admin.check_register(world, WEB, str(data), "other", FIELDS)
    with pytest.raises(VREError, match="needs a title"):
        dataset_admin.update(world, WEB, "lung", {"title": ""})
    with pytest.raises(NotFound, match="unknown dataset 'nope'"):
        dataset_admin.update(world, WEB, "nope", {"title": "x"})
    with vdb.session_scope(world.vre_db_url) as db:
        P.create_project(db, "proj", "Project")
        P.grant(db, "proj", "lung")
    with pytest.raises(Conflict, match="granted to proj; revoke those grants first"):
        dataset_admin.remove(world, WEB, "lung")
    with pytest.raises(AR.Forbidden):
        dataset_admin.remove(world, AR.Actor("bob"), "lung")
    assert dataset_admin.describe(world, "lung")["title"] == "Lung CT"
    denied = [(e["action"], e["actor"], e["dataset"]) for e in events(world) if e["outcome"] == "denied"]
    assert denied == [("dataset.register", "bob", "lung"), ("dataset.register", "ghost", "lung"),
                      ("dataset.register", "bob", "lung"), ("dataset.remove", "bob", "lung")]
    assert [e["action"] for e in events(world) if e["outcome"] == "ok"] == ["dataset.register"]


def _wait(run):
    for _ in range(600):
        if run.state != "running":
            return run
        threading.Event().wait(0.05)
    raise AssertionError(f"still running: {run}")


def test_background_runs_one_per_dataset_with_progress_and_errors():
    runs, gate = Runs(), threading.Event()

    def slow(progress):
        progress(3, 10)
        gate.wait(10)
        raise VREError("no DICOM files found in /x")
    run = runs.start("lung", "register", "admin", slow)
    for _ in range(100):
        if run.total:
            break
        threading.Event().wait(0.02)
    assert (run.state, run.done, run.total) == ("running", 3, 10)
    with pytest.raises(Conflict, match="'lung' is being indexed now"):
        runs.start("lung", "reindex", "other", slow)
    gate.set()
    assert _wait(run).as_json()["error"] == "no DICOM files found in /x" and run.state == "failed"
    crash = _wait(runs.start("lung", "reindex", "admin", lambda progress: 1 / 0))
    assert crash.state == "failed" and "ZeroDivisionError" in crash.error
    runs.forget("lung")
    assert runs.get("lung") is None and runs.all() == []


def test_the_pages_render(world, data):
    """The templates with what the handlers give them (the browser test drives them for real)."""
    from vre.api.admin_datasets import Run, _form_values, _report
    from vre.api.pages import render
    from vre.catalog.metadata import CATALOG_FIELDS, EUCAIM_TIERS

    class Handler:
        _hub_auth_user_cache = {"name": "admin"}
        xsrf_token = b"token"

    _, report = dataset_admin.register(world, WEB, str(data), "lung", FIELDS)
    common = dict(datasets_url="/services/vre/admin/datasets", fields=CATALOG_FIELDS, tiers=EUCAIM_TIERS)
    pending = Run("new", "register", "admin", state="failed", error="no DICOM files found")
    html = render(Handler(), "admin-datasets.html", datasets=dataset_admin.list_datasets(world), pending=[pending],
                  retired="", form={"path": "/x", "title": "T <b>"}, error="a message", **common)
    assert 'id="dataset-lung"' in html and "no DICOM files found" in html and "T &lt;b&gt;" in html
    assert "hub&#39;s host" in html or "hub's host" in html
    described = dataset_admin.describe(world, "lung")
    for run in (Run("lung", "reindex", "admin", done=2, total=4),
                Run("lung", "register", "admin", state="done", report=_report(report)), None):
        html = render(Handler(), "admin-dataset.html", slug="lung", dataset=described, run=run,
                      dataset_url="/d/lung", progress_url="/d/lung/progress", done="saved", record_json="{}",
                      form=_form_values(described["fields"]), **common)
        assert 'value="Lung CT"' in html and '<option value="2" selected>' in html
    html = render(Handler(), "admin-dataset.html", slug="lung", dataset=None, dataset_url="", progress_url="",
                  done="", record_json="", run=Run("lung", "register", "admin", state="done", report=_report(report)),
                  **common)
    assert "notes.dcm" in html and "clinical.csv" in html and "edit-form" not in html


def test_the_cli_uses_the_same_functions(data, tmp_path):
    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": "/tmp/vre-cli-run"}

    def vre(*args):
        return subprocess.run([str(Path(sys.executable).parent / "vre"), *args], env=env, capture_output=True,
                              text=True, timeout=120)
    r = vre("dataset", "add", str(data), "--slug", "lung", "--title", "Lung CT", "--tier", "2")
    assert r.returncode == 0 and "registered dataset 'lung'" in r.stdout and "notes.dcm" in r.stdout
    r = vre("dataset", "edit", "lung", "--title", "Lung CT, 2024", "--tier", "", "--keywords", "ct,lung")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "catalogue record of 'lung': changed interoperability_tier, keywords, title"
    record = json.loads(vre("dataset", "show", "lung").stdout)
    assert (record["title"], record["keywords"], "interoperability_tier" in record) == (
        "Lung CT, 2024", ["ct", "lung"], False)
    assert vre("dataset", "edit", "lung", "--title", "Lung CT, 2024").stdout.strip().endswith("no change")
    r = vre("dataset", "edit", "nope", "--title", "x")
    assert r.returncode == 2 and "unknown dataset 'nope'" in r.stderr
    events = json.loads(vre("audit", "query", "--action", "dataset.update", "--json").stdout)
    assert [(e["actor"], e["details"]) for e in events] == [
        (cli_actor(), {"via": "cli", "changed": ["interoperability_tier", "keywords", "title"]})]


def test_a_folder_is_one_dataset_from_the_allowed_roots_never_a_system_folder(world, data, db_url, tmp_path):
    """A folder inside or around a registered dataset would put a file in two datasets with
    different grants; with ``dataset_roots`` set, only folders below them are taken; system
    folders never are (the indexer runs as root and publishes what it reads)."""
    from vre.settings import SettingsError, load

    dataset_admin.register(world, WEB, str(data), "lung", FIELDS)
    inner = next(p for p in data.iterdir() if p.is_dir())
    for folder in (data.parent, inner):
        with pytest.raises(Conflict, match="overlaps dataset 'lung'"):
            dataset_admin.register(world, WEB, str(folder), "lung2", FIELDS)
    for folder, said in (("/etc", "is a system folder"), ("/proc/self", "is a system folder"),
                         ("/usr", "is a system folder")):
        with pytest.raises(VREError, match=said):
            dataset_admin.register(world, WEB, folder, "sys", FIELDS)
    elsewhere = Path(tempfile.mkdtemp(prefix="vre-dsroots-"))
    try:
        make_cohort("lung-ct", elsewhere / "cohort", patients=1, slices=2, size=32)
        for dirpath, _, files in os.walk(elsewhere):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        limited = Settings(state_dir=world.state_dir, db_url=db_url, dataset_roots=f"/srv/imaging, {data.parent}")
        with pytest.raises(VREError, match="outside the folders datasets may come from .*/srv/imaging"):
            dataset_admin.register(limited, WEB, str(elsewhere / "cohort"), "other", FIELDS)
        assert [d["slug"] for d in dataset_admin.list_datasets(world)] == ["lung"]
        free = Settings(state_dir=world.state_dir, db_url=db_url, dataset_roots=str(elsewhere))
        dataset_admin.register(free, WEB, str(elsewhere / "cohort"), "other", FIELDS)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    with pytest.raises(SettingsError, match="dataset_roots: 'data' is not a folder"):
        load(environ={"VRE_DATASET_ROOTS": "data"})


def test_registrations_at_once_never_share_a_slug_or_a_folder(world, data):
    """Two registrations at once (the page's and the CLI's) would both pass the checks (the slug
    free, the folders apart: the database shows neither until it commits) and index into the same
    catalogue place. One of the same slug or an overlapping folder is refused while the first runs,
    naming it, and changes nothing; an unrelated one runs beside it."""
    other = data.parent / "other"   # beside the cohort: readable by sessions, unlike pytest's tmp
    shutil.copytree(data, other, dirs_exist_ok=True)
    started, release = threading.Event(), threading.Event()
    results = {}

    def slow_progress(done, total):
        started.set()
        release.wait(30)

    def first():
        results["first"] = dataset_admin.register(world, WEB, str(data), "lung", FIELDS, progress=slow_progress)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(30)
        inside = next(p for p in data.iterdir() if p.is_dir())
        for slug, path in (("lung", other), ("lung-a", data), ("lung-b", inside), ("lung-c", data.parent)):
            for check in (dataset_admin.check_register, dataset_admin.register):  # the page checks first
                with pytest.raises(Conflict, match=f"dataset 'lung' \\({data.resolve()}\\) is being registered now"):
                    check(world, OPERATOR, str(path), slug, FIELDS)
        dataset_admin.register(world, OPERATOR, str(other), "lung2", FIELDS)   # apart: goes through
    finally:
        release.set()
        t.join(60)
    assert results["first"][0] == str(data.resolve())
    assert sorted(d["slug"] for d in dataset_admin.list_datasets(world)) == ["lung", "lung2"]
    assert json.loads((world.catalog_dir / "lung" / "record.json").read_text())["title"] == "Lung CT"
    assert not list((world.run_dir / "registering").glob("*.json"))   # nothing left behind


def test_a_registration_that_died_blocks_nothing(world, data):
    """Its entry is left, unlocked (the lock went with the process): the next registration of
    the same slug removes it and goes through."""
    folder = world.run_dir / "registering"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lung.json").write_text(json.dumps({"slug": "lung", "path": str(data.resolve())}))
    assert dataset_admin.register(world, OPERATOR, str(data), "lung", FIELDS)[0] == str(data.resolve())
    assert not (folder / "lung.json").exists()
