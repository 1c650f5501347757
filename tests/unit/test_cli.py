"""The `vre` command on bad input: one clear line, exit code 2, nothing half-done."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vre.demo.synth import corrupt_examples, make_cohort

VRE = str(Path(sys.executable).parent / "vre")


@pytest.fixture
def run(tmp_path):
    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": "/tmp/vre-cli-run"}

    def _run(*args, input=None):
        return subprocess.run([VRE, *args], env=env, capture_output=True, text=True, input=input, timeout=120)
    return _run


@pytest.fixture
def public_tmp():
    """Datasets must be readable by session uids, so not under pytest's private (0700) tmp."""
    path = Path(tempfile.mkdtemp(prefix="vre-cli-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _readable(path: Path) -> Path:
    os.chmod(path, 0o755)
    for dirpath, dirs, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o755)
    return path


def test_dataset_add_errors(run, public_tmp):
    tmp_path = public_tmp
    empty = tmp_path / "empty"
    empty.mkdir()
    _readable(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not dicom")
    (junk / "scan.dcm").write_bytes(b"\x00" * 10)
    _readable(junk)
    afile = tmp_path / "afile.dcm"
    afile.write_text("x")
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(afile)], "is not a directory"),
        ([str(empty)], "empty"),
        ([str(junk)], "no DICOM"),
    ]
    for path_args, fragment in cases:
        r = run("dataset", "add", *path_args, "--slug", "ds-one", "--title", "T")
        assert r.returncode == 2, r.stdout + r.stderr
        assert fragment.lower() in r.stderr.lower(), r.stderr
        assert "Traceback" not in r.stderr
    r = run("dataset", "list")
    assert "ds-one" not in r.stdout  # nothing half-registered


def test_dataset_add_with_some_corrupt_files_succeeds_with_a_report(run, public_tmp):
    tmp_path = public_tmp
    data = tmp_path / "cohort"
    make_cohort("lung-ct", data, patients=1, slices=4, size=32)
    corrupt_examples(data / "broken")
    _readable(data)
    r = run("dataset", "add", str(data), "--slug", "cohort", "--title", "Cohort", "--tier", "2",
            "--condition", "Lung cancer")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stdout and "broken/" in r.stdout
    r = run("dataset", "add", str(data), "--slug", "cohort2", "--title", "Again")
    assert r.returncode == 2 and "already registered as dataset 'cohort'" in r.stderr
    r = run("dataset", "add", str(tmp_path), "--slug", "cohort", "--title", "Again")
    assert r.returncode == 2 and "slug 'cohort' is taken" in r.stderr
    r = run("dataset", "reindex", "cohort")
    assert r.returncode == 0 and "0 read" in r.stdout, r.stdout
    r = run("dataset", "add", str(tmp_path), "--slug", "cohort3", "--title", "T")
    assert r.returncode == 2 and "overlaps dataset 'cohort'" in r.stderr  # a file would be in two datasets
    other = tmp_path / "other"
    other.mkdir()
    _readable(other)
    r = run("dataset", "add", str(other), "--slug", "cohort3", "--title", "T", "--tier", "7")
    assert r.returncode == 2 and "interoperability_tier must be 1, 2 or 3" in r.stderr


def test_dataset_must_be_readable_by_sessions(run, public_tmp):
    tmp_path = public_tmp
    data = tmp_path / "private"
    make_cohort("lung-ct", data, patients=1, slices=2, size=32)
    _readable(data)
    os.chmod(data, 0o700)
    r = run("dataset", "add", str(data), "--slug", "private", "--title", "T")
    assert r.returncode == 2 and "chmod" in r.stderr


def test_project_commands_explain_errors(run):
    assert run("project", "grant", "nope", "nope").stderr.startswith("vre: error: unknown project 'nope'")
    r = run("user", "add", "Bad Name")
    assert r.returncode == 2 and "invalid user name" in r.stderr
    r = run("user", "add", "judy", "--password-stdin", input="short\n")
    assert r.returncode == 2 and "too short" in r.stderr
    r = run("user", "add", "judy")
    assert r.returncode == 0 and "password (shown once):" in r.stdout
    r = run("user", "add", "kim", "--oidc")
    assert r.returncode == 0 and "shown once" not in r.stdout and "first login as 'kim'" in r.stdout
    r = run("user", "add", "lea", "--oidc", "--password-stdin", input="lea-password-123\n")
    assert r.returncode == 2 and "no password" in r.stderr


def test_batch_quota_and_jobs_commands(run, tmp_path):
    assert run("project", "create", "lung", "--title", "Lung").returncode == 0
    r = run("project", "set-quota", "lung", "--jobs", "3", "--memory", "12G", "--gpus", "0")
    assert r.returncode == 0 and "3 job(s) at once" in r.stdout and "12288 MiB" in r.stdout
    assert '"slots": 3' in run("project", "show", "lung").stdout
    bad = run("project", "set-quota", "lung", "--memory", "lots")
    assert bad.returncode == 2 and bad.stderr.startswith("vre: error:")
    assert run("project", "set-quota", "nope", "--jobs", "1").returncode == 2
    # a queued job, cancelled by an admin, with its audit event
    from vre import db as vdb
    from vre.accounts import add_account
    from vre.settings import Settings

    url = Settings(state_dir=tmp_path / "state").vre_db_url
    with vdb.session_scope(url) as db:
        add_account(db, "ann", password="ann-password-1")
        project = db.query(vdb.Project).one()
        db.add(vdb.Job(project=project, account=db.query(vdb.Account).one(), kind="script", target="/x.py",
                       params={}, profile="p", cpu=1, mem_mb=64, gpus=0, max_runtime_s=60, state="queued",
                       reason="", attempts=0, cancel_requested=False, worker="", devices="", usage={}))
    assert "queued" in run("jobs", "list").stdout
    r = run("jobs", "cancel", "1")
    assert r.returncode == 0 and "cancelled" in r.stdout
    assert run("jobs", "cancel", "1").returncode == 2  # already ended
    assert run("jobs", "show", "7").stderr.startswith("vre: error: there is no job 7")
    assert "job.cancel" in run("audit", "query", "--action", "job.").stdout


def test_grant_modes_and_expiry_from_the_cli(run, tmp_path):
    from vre import db as vdb
    from vre.settings import Settings

    assert run("project", "create", "lung", "--title", "Lung").returncode == 0
    with vdb.session_scope(Settings(state_dir=tmp_path / "state").vre_db_url) as db:
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT", path="/srv/lung-ct", catalog={}))
    bad = run("project", "grant", "lung", "lung-ct", "--mode", "batch")
    assert bad.returncode == 2 and "unknown grant mode 'batch': use one of interactive, batch-only" in bad.stderr
    bad = run("project", "grant", "lung", "lung-ct", "--expires", "2020-01-01")
    assert bad.returncode == 2 and "is in the past" in bad.stderr and "Traceback" not in bad.stderr
    r = run("project", "grant", "lung", "lung-ct", "--mode", "batch-only", "--expires", "2099-06-30")
    assert r.returncode == 0 and "batch jobs only" in r.stdout and "until 2099-07-01" in r.stdout, r.stderr
    again = run("project", "grant", "lung", "lung-ct")
    assert again.returncode == 2 and "vre project update-grant lung lung-ct" in again.stderr
    r = run("project", "update-grant", "lung", "lung-ct", "--mode", "interactive", "--expires", "never")
    assert r.returncode == 0 and "sessions and batch jobs" in r.stdout and "until" not in r.stdout
    assert run("project", "update-grant", "lung", "lung-ct").stderr.startswith("vre: error: nothing to change")
    assert run("project", "update-grant", "lung", "lung-ct", "--mode", "batch-only").returncode == 0
    assert "lung-ct (batch-only)" in run("project", "list").stdout
    show = json.loads(run("project", "show", "lung").stdout)
    assert show["grants"] == [{"dataset": "lung-ct", "mode": "batch-only", "expires_at": None, "expired": False}]
    events = json.loads(run("audit", "query", "--action", "project.", "--json").stdout)
    grants = [(e["action"], e["details"].get("mode"), e["details"].get("expires_at")) for e in events
              if e["action"] != "project.create"]
    assert grants == [("project.grant", "batch-only", "2099-07-01T00:00:00+00:00"),
                      ("project.grant_update", "interactive", None), ("project.grant_update", "batch-only", None)]
