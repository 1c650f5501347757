"""The airlock's backend without a hub: freezing, rules, the state machine, blinded reviews, the
signed release record and the audit of every step (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import pytest
from sqlalchemy import select

from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.airlock import record as rec
from vre.airlock import requests as ops
from vre.airlock import review as R
from vre.airlock.rules import DEFAULTS, set_rules
from vre.airlock.store import write_zip
from vre.audit import open_store
from vre.errors import NotFound, VREError
from vre.plan import project_paths
from vre.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
NB = json.dumps({"cells": [{"cell_type": "code", "source": "print(1)", "metadata": {}, "execution_count": 1,
                            "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]}],
                 "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    data = tmp_path / "lung-ct"
    data.mkdir()
    (data / "clinical.csv").write_text("id,age\n1,60\n2,70\n")
    with vdb.session_scope(db_url) as db:
        for name in ("ann", "ben", "chk1", "chk2", "eve"):
            add_account(db, name, password=f"{name}-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="lung", path=str(data), catalog={}))
        P.create_project(db, "lung", "Lung")
        db.flush()
        P.grant(db, "lung", "lung-ct")
        for m in ("ann", "ben", "chk2"):
            P.add_member(db, "lung", m)
        P.set_profile(db, "lung", "small", cpu=1, memory="1G")
        for c in ("chk1", "chk2"):
            db.scalar(select(vdb.Account).where(vdb.Account.name == c)).output_checker = True
    workspace, home = project_paths(settings, "lung", "ann")
    for d in (workspace / "out", home):
        d.mkdir(parents=True, exist_ok=True)
    (workspace / "out" / "table.csv").write_text("a,b\n1,2\n3,4\n")
    (workspace / "out" / "plot.png").write_bytes(PNG)
    (home / "analysis.ipynb").write_text(NB)
    return settings


def home(settings):
    return project_paths(settings, "lung", "ann")[1]


def ws(settings):
    return project_paths(settings, "lung", "ann")[0]


def who(name, checker=True):
    return ops.Actor(name, checker_scope=checker)


def actions(settings):
    return [e["action"] for e in open_store(settings).query(limit=1000, newest_first=False, action="airlock.")]


def submitted(settings, files=("project/out/table.csv", "project/out/plot.png", "analysis.ipynb")):
    r = ops.create(settings, who("ann"), "lung", "Nodule results", "for the paper", list(files))
    return ops.submit(settings, who("ann"), r["id"])


def review_all(settings, rid, reviewer, decision="approve", comment=""):
    files = ops.get(settings, who(reviewer), rid)["files"]
    return ops.review(settings, who(reviewer), rid, [{"file": f["id"], "decision": decision, "comment": comment}
                                                     for f in files])


def test_transitions_follow_the_state_machine():
    req = vdb.AirlockRequest(id=1, state="draft", history=[])
    R.transition(req, "submitted", "ann")
    with pytest.raises(R.WrongState, match="cannot become released"):
        R.transition(req, "released", "ann")
    R.transition(req, "in_review", "chk")
    R.transition(req, "changes_requested", "chk")
    R.transition(req, "submitted", "ann")
    R.transition(req, "withdrawn", "ann")
    with pytest.raises(R.WrongState, match="closed"):
        R.transition(req, "submitted", "ann")
    assert [h.to_state for h in req.history] == ["submitted", "in_review", "changes_requested", "submitted",
                                                 "withdrawn"]


def test_submission_freezes_copies_in_private_storage(world):
    r = submitted(world)
    assert r["state"] == "submitted" and r["round"] == 1 and r["reviews_required"] == 2
    files = {f["name"]: f for f in r["files"]}
    assert set(files) == {"table.csv", "plot.png", "analysis.ipynb"}
    assert all(f["frozen"] and len(f["sha256"]) == 64 for f in files.values())
    base = world.state_dir / "airlock" / str(r["id"])
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    stored = list(base.iterdir())
    assert len(stored) == 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)
    # the original changes; the frozen copy does not
    (ws(world) / "out" / "table.csv").write_text("a,b\n9,9\n")
    again = ops.get(world, who("ann"), r["id"])
    assert {f["name"]: f["sha256"] for f in again["files"]} == {k: f["sha256"] for k, f in files.items()}
    assert actions(world)[:2] == ["airlock.create", "airlock.submit"]


def test_blinded_then_consolidated_then_released_with_a_signed_record(world):
    rid = submitted(world)["id"]
    review_all(world, rid, "chk1")
    # blinded: chk1 sees its own decisions; chk2, the author and a member see none
    assert {rv["reviewer"] for rv in ops.get(world, who("chk1"), rid)["reviews"]} == {"chk1"}
    assert ops.get(world, who("chk2"), rid)["reviews"] == []
    seen = ops.get(world, who("ann"), rid)
    assert seen["reviews"] == [] and seen["phase"] == "independent" and seen["state"] == "in_review"
    assert {f["status"] for f in seen["files"]} == {"pending"}
    with pytest.raises(R.WrongState, match="independent reviews"):
        ops.release(world, who("chk1"), rid)
    review_all(world, rid, "chk2")   # a checker who is a member may review another's request
    after = ops.get(world, who("ann"), rid)
    assert after["phase"] == "consolidation" and len(after["reviews"]) == 6
    assert {f["status"] for f in after["files"]} == {"approved"}
    out = ops.release(world, who("chk1"), rid, "fine")
    assert out["state"] == "released"
    got = ops.get_record(world, who("ann"), rid)
    assert got["verified"] and got["record"]["request"] == rid
    assert {f["name"] for f in got["record"]["files"] if f["released"]} == {"table.csv", "plot.png", "analysis.ipynb"}
    assert {d["reviewer"] for d in got["record"]["decisions"]} == {"chk1", "chk2"}
    assert got["record"]["rules"]["reviews_required"] == 2
    # tampering is detected
    key = rec.public_key_path(world.secrets_dir)
    assert rec.verify(got["text"], got["signature"], key)
    assert not rec.verify(got["text"].replace("Nodule", "Nodul3"), got["signature"], key)
    # the author and members download; the zip carries the sums and the record
    files, text, sig = ops.download(world, who("ben"), rid)
    buf = io.BytesIO()
    write_zip(buf, files, text, sig)
    z = zipfile.ZipFile(buf)
    sums = dict(line.split("  ")[::-1] for line in z.read("SHA256SUMS").decode().splitlines())
    import hashlib
    for name, digest in sums.items():
        assert hashlib.sha256(z.read(name)).hexdigest() == digest
    assert rec.verify(z.read("release-record.json").decode(), z.read("release-record.json.sig").decode().strip(), key)
    assert actions(world) == ["airlock.create", "airlock.submit", "airlock.review_start"] + ["airlock.review"] * 6 \
        + ["airlock.consolidate", "airlock.approve", "airlock.release", "airlock.download"]


def test_who_may_do_what(world):
    rid = submitted(world)["id"]
    with pytest.raises(NotFound):
        ops.get(world, who("eve"), rid)          # a stranger sees nothing
    with pytest.raises(NotFound):
        ops.get(world, who("chk1", checker=False), rid)  # checker flag without the scope: a stranger
    with pytest.raises(R.Forbidden, match="author"):
        ops.review(world, who("ann"), rid, [{"file": 1, "decision": "approve"}])
    with pytest.raises(R.Forbidden, match="author"):
        ops.preview(world, who("ann"), rid, ops.get(world, who("ann"), rid)["files"][0]["id"])
    with pytest.raises(R.Forbidden, match="released"):
        ops.download(world, who("ann"), rid)
    with pytest.raises(R.Forbidden, match="output checkers"):
        ops.review(world, who("ben"), rid, [{"file": 1, "decision": "approve"}])
    fid = ops.get(world, who("chk1"), rid)["files"][0]["id"]
    assert ops.preview(world, who("chk1"), rid, fid).sha256
    denied = [e for e in open_store(world).query(limit=100, action="airlock.") if e["outcome"] == "denied"]
    assert {e["action"] for e in denied} == {"airlock.review", "airlock.file_view", "airlock.download"}
    view = open_store(world).query(limit=10, action="airlock.file_view", outcome="ok")[0]
    assert view["details"]["sha256"] and view["actor"] == "chk1" and view["target"] == f"airlock/{rid}"


def test_changes_requested_update_file_and_resubmit(world):
    rid = submitted(world)["id"]
    files = {f["name"]: f["id"] for f in ops.get(world, who("chk1"), rid)["files"]}
    for c in ("chk1", "chk2"):
        ops.review(world, who(c), rid, [{"file": files["table.csv"], "decision": "changes", "comment": "round"},
                                        {"file": files["plot.png"], "decision": "approve"},
                                        {"file": files["analysis.ipynb"], "decision": "approve"}])
    with pytest.raises(R.WrongState, match="changes were requested"):
        ops.release(world, who("chk1"), rid)
    with pytest.raises(VREError, match="comment"):
        ops.return_(world, who("chk1"), rid, "")
    assert ops.return_(world, who("chk1"), rid, "round the numbers")["state"] == "changes_requested"
    (ws(world) / "out" / "table.csv").write_text("a,b\n0,0\n")
    up = ops.update_file(world, who("ann"), rid, files["table.csv"])
    table = next(f for f in up["files"] if f["name"] == "table.csv")
    assert table["version"] == 2 and table["status"] == "pending"
    again = ops.submit(world, who("ann"), rid)
    assert again["state"] == "submitted" and again["round"] == 2 and again["phase"] == "independent"
    for c in ("chk1", "chk2"):
        ops.review(world, who(c), rid, [{"file": files["table.csv"], "decision": "approve"}])
    assert ops.release(world, who("chk2"), rid)["state"] == "released"
    files_out, _, _ = ops.download(world, who("ann"), rid)
    assert {o.name for o in files_out} == {"table.csv", "plot.png", "analysis.ipynb"}
    released = next(o for o in files_out if o.name == "table.csv")
    assert released.path.read_text() == "a,b\n0,0\n"


def test_conflicts_are_resolved_in_consolidation(world):
    rid = submitted(world, files=("project/out/table.csv",))["id"]
    fid = ops.get(world, who("chk1"), rid)["files"][0]["id"]
    ops.review(world, who("chk1"), rid, [{"file": fid, "decision": "approve"}])
    ops.review(world, who("chk2"), rid, [{"file": fid, "decision": "reject", "comment": "small counts"}])
    assert ops.get(world, who("chk1"), rid)["files"][0]["status"] == "conflict"
    with pytest.raises(R.WrongState, match="disagree"):
        ops.release(world, who("chk1"), rid)
    ops.review(world, who("chk1"), rid, [{"file": fid, "decision": "reject", "comment": "agreed"}])
    assert ops.get(world, who("chk1"), rid)["files"][0]["status"] == "rejected"
    assert ops.reject(world, who("chk1"), rid, "counts below 10")["state"] == "rejected"


@pytest.mark.parametrize("make, fragment", [
    (lambda s: os.symlink("/data/lung-ct/clinical.csv", home(s) / "link.csv"), "inside a dataset"),
    (lambda s: os.symlink("/etc/passwd", home(s) / "link.csv"), "outside your home"),
    (lambda s: None, "no such file"),
])
def test_bad_paths_are_refused_when_added(world, make, fragment):
    make(world)
    with pytest.raises(ops.Refused, match=fragment) as e:
        ops.create(world, who("ann"), "lung", "x", "", ["link.csv"])
    assert e.value.files and e.value.files[0]["problems"]


def test_a_symlink_within_the_home_is_followed_in_the_session(world):
    os.symlink("/home/jovyan/project/out/table.csv", home(world) / "t.csv")
    r = ops.create(world, who("ann"), "lung", "x", "", ["t.csv"])
    assert ops.submit(world, who("ann"), r["id"])["files"][0]["size"] == len("a,b\n1,2\n3,4\n")


def test_exports_work_on_kubernetes_with_host_paths(world):
    """Kubernetes with hostPath storage: the hub reads the members' folders itself (with claims it
    asks a claims reader: tests/unit/test_claims.py)."""
    r = ops.create(world, who("ann"), "lung", "x", "", [])
    hosted = world.replace(backend="kubernetes", k8s_storage="hostPath")
    assert ops.add_files(hosted, who("ann"), r["id"], ["project/out/table.csv"])["files"]


def test_rules_and_dataset_copies_are_listed_per_file_before_submission(world):
    (home(world) / "clin.csv").write_bytes((world.state_dir.parent / "lung-ct" / "clinical.csv").read_bytes())
    (home(world) / "big.csv").write_text("x\n" * 20)
    (home(world) / "run.sh").write_text("echo\n")
    (home(world) / "scan.png").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", max_csv_rows=10)
    r = ops.create(world, who("ann"), "lung", "x", "", ["clin.csv", "big.csv", "run.sh", "scan.png",
                                                       "project/out/plot.png"])
    report = ops.check(world, who("ann"), r["id"])
    problems = {f["name"]: " ".join(f["problems"]) for f in report["files"]}
    assert not report["ok"]
    assert "dataset file lung-ct/clinical.csv" in problems["clin.csv"]
    assert "21 rows" in problems["big.csv"] or "20 rows" in problems["big.csv"]
    assert "not allowed" in problems["run.sh"]
    assert "DICOM" in problems["scan.png"]
    assert problems["plot.png"] == ""
    with pytest.raises(ops.Refused) as e:
        ops.submit(world, who("ann"), r["id"])
    assert len(e.value.files) == 4
    assert ops.get(world, who("ann"), r["id"])["state"] == "draft"
    assert not any((world.state_dir / "airlock" / str(r["id"])).glob("*"))  # nothing left stored


def test_a_huge_folder_is_refused_quickly(world):
    big = ws(world) / "many"
    big.mkdir()
    for i in range(3000):
        (big / f"{i}.csv").touch()
    with pytest.raises(ops.Refused, match="more than 100 files"):
        ops.create(world, who("ann"), "lung", "x", "", ["project/many"])


def test_request_size_limit(world):
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", max_file="40", max_request="60", reviews=1)
    (home(world) / "a.txt").write_text("x" * 35)
    (home(world) / "b.txt").write_text("y" * 35)
    (home(world) / "c.txt").write_text("z" * 45)
    r = ops.create(world, who("ann"), "lung", "x", "", ["a.txt", "b.txt", "c.txt"])
    with pytest.raises(ops.Refused) as e:
        ops.submit(world, who("ann"), r["id"])
    text = str(e.value)
    assert "c.txt" in text and "per file" in text and "per request" in text


def test_rules_defaults_and_validation(world):
    with vdb.session_scope(world.vre_db_url) as db:
        assert ops.rules_of(P.get_project(db, "lung"), db) == DEFAULTS
        with pytest.raises(VREError, match="reviews"):
            set_rules(db, "lung", reviews=0)
        with pytest.raises(VREError, match="extension"):
            set_rules(db, "lung", extensions="c$v")
        r = set_rules(db, "lung", extensions=".CSV, png", reviews=1)
        assert r.extensions == ("csv", "png") and r.reviews_required == 1


def test_withdraw_and_nothing_after(world):
    rid = submitted(world)["id"]
    assert ops.withdraw(world, who("ann"), rid, "wrong files")["state"] == "withdrawn"
    with pytest.raises(R.WrongState):
        ops.submit(world, who("ann"), rid)
    with pytest.raises(R.WrongState):
        review_all(world, rid, "chk1")


def test_names_with_odd_characters(world):
    (home(world) / "résumé table (v2).csv").write_text("a\n1\n")
    (home(world) / "bad\nname.csv").write_text("a\n1\n")
    r = ops.create(world, who("ann"), "lung", "x", "", ["résumé table (v2).csv", "bad\nname.csv"])
    report = ops.check(world, who("ann"), r["id"])
    problems = {f["name"]: f["problems"] for f in report["files"]}
    assert problems["résumé table (v2).csv"] == []
    assert "control characters" in " ".join(problems["bad\nname.csv"])


def test_two_submissions_at_once_one_wins_and_nothing_is_left_over(world):
    import threading

    (home(world) / "big.txt").write_bytes(os.urandom(8 << 20))
    r = ops.create(world, who("ann"), "lung", "x", "", ["big.txt", "project/out/table.csv"])
    results = []

    def go():
        try:
            results.append(ops.submit(world, who("ann"), r["id"])["state"])
        except VREError as e:
            results.append(type(e).__name__)
    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["WrongState", "submitted"]
    stored = {f["sha256"] for f in ops.get(world, who("ann"), r["id"])["files"]}
    assert len(list((world.state_dir / "airlock" / str(r["id"])).iterdir())) == 2 == len(stored)


def test_routes_roles_and_groups():
    from vre.api import routes
    from vre.roles import AIRLOCK_REVIEW_SCOPE, AIRLOCK_SCOPE, CHECKER_GROUP, groups_for, load_roles

    sessions = [r[0] for r in routes(Settings(), sessions_only=True)]
    assert r"api/airlock/requests" in sessions and any(p.endswith("(check|submit|withdraw)") for p in sessions)
    assert not any("reviews" in p or "preview" in p or "release" in p for p in sessions)
    full = [r[0] for r in routes(Settings())]
    assert any(p.endswith("/reviews") for p in full) and any(p.endswith("/preview") for p in full)
    roles = {r["name"]: r for r in load_roles()}
    assert AIRLOCK_SCOPE in roles["user"]["scopes"] and AIRLOCK_SCOPE in roles["server"]["scopes"]
    assert AIRLOCK_REVIEW_SCOPE not in roles["server"]["scopes"]
    assert roles["output-checker"]["groups"] == [CHECKER_GROUP]
    assert groups_for("researcher", True) == [CHECKER_GROUP] and groups_for("researcher") == []


def test_cli_checker_and_rules(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    vre = str(Path(sys.executable).parent / "vre")
    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": "/tmp/vre-cli-run"}

    def run(*args, input=None):
        return subprocess.run([vre, *args], env=env, capture_output=True, text=True, input=input, timeout=120)
    assert run("user", "add", "carl", "--password-stdin", input="carl-password-1\n").returncode == 0
    assert run("user", "add", "aud", "--role", "auditor", "--password-stdin", input="aud-password-12\n").returncode == 0
    assert run("user", "set-checker", "carl", "on").returncode == 0
    r = run("user", "set-checker", "aud", "on")
    assert r.returncode == 2 and "auditor" in r.stderr
    assert run("project", "create", "lung", "--title", "Lung").returncode == 0
    r = run("project", "set-airlock-rules", "lung", "--reviews", "1", "--extensions", "csv,png", "--max-file", "1M")
    assert r.returncode == 0 and json.loads(r.stdout)["reviews_required"] == 1
    r = run("project", "set-airlock-rules", "lung", "--max-file", "1G")
    assert r.returncode == 2 and "max-request" in r.stderr
    r = run("airlock", "submit", "1")
    assert r.returncode == 2 and "--as" in r.stderr


def test_a_folder_expands_to_its_files_without_hidden_ones(world):
    (ws(world) / "out" / ".ipynb_checkpoints").mkdir()
    (ws(world) / "out" / ".ipynb_checkpoints" / "x-checkpoint.ipynb").write_text(NB)
    (ws(world) / "out" / "sub").mkdir()
    (ws(world) / "out" / "sub" / "n.json").write_text("{}")
    r = ops.create(world, who("ann"), "lung", "x", "", [{"path": "/home/jovyan/project/out", "description": "all"}])
    assert sorted(f["name"] for f in r["files"]) == ["out/plot.png", "out/sub/n.json", "out/table.csv"]
    assert {f["description"] for f in r["files"]} == {"all"}
    assert ops.submit(world, who("ann"), r["id"])["state"] == "submitted"


def test_previews_never_serve_active_content():
    from vre.api.airlock import PREVIEW_CSP, PREVIEW_TYPES

    assert PREVIEW_TYPES["svg"].startswith("text/plain")
    assert not any("html" in t or "svg+xml" in t or "javascript" in t for t in PREVIEW_TYPES.values())
    assert PREVIEW_CSP.startswith("sandbox") and "default-src 'none'" in PREVIEW_CSP


# --- a held job's files (vre.airlock.held) ---------------------------------------------------------
#: Names, contents and a link target a held job chose: none may reach its author before release.
SECRETS = ("patient-4711-age-63", "LEAKNAME", "TARGET-LEAK")


def held_job(settings, job=7):
    """A held job's folder as the job left it: names of its choosing, a table and a figure."""
    from vre.plan import held_dir

    d = held_dir(settings, "lung") / "jobs" / str(job)
    (d / "LEAKNAME-figures").mkdir(parents=True)
    (d / "patient-4711-age-63.csv").write_text("a,b\n" + "1,2\n" * 12345)
    (d / "LEAKNAME-figures" / "roc.png").write_bytes(PNG)
    return d


def leaks(reply) -> list[str]:
    text = json.dumps(reply) if not isinstance(reply, str) else reply
    return [s for s in SECRETS if s in text]


def test_held_links_and_special_files_are_refused_naming_nothing(world):
    d = held_job(world)
    os.symlink("/x/TARGET-LEAK", d / "LEAKNAME-link.csv")
    os.mkfifo(d / "LEAKNAME-fifo.csv")
    for named in ("/held/jobs/7", "/held/jobs/7/LEAKNAME-link.csv", "/held/jobs/7/LEAKNAME-fifo.csv"):
        with pytest.raises(ops.Refused) as e:
            ops.create(world, who("ann"), "lung", "x", "", [named])
        said = json.dumps({"message": str(e.value), "files": e.value.files, "problems": e.value.problems})
        assert "regular files and folders" in said and not e.value.files
        assert leaks(said.replace(named, "")) == [], said  # only what the author typed comes back
    # a link of the author's own leads into a held folder, or to a held job's link: refused, no target
    os.symlink("/held/jobs/7/patient-4711-age-63.csv", home(world) / "mine.csv")
    os.symlink("/held/jobs/7/LEAKNAME-link.csv", home(world) / "theirs.csv")
    for named, fragment in (("mine.csv", "through a link"), ("theirs.csv", "regular files and folders")):
        with pytest.raises(ops.Refused, match=fragment) as e:
            ops.create(world, who("ann"), "lung", "x", "", [named])
        assert leaks({"m": str(e.value), "f": e.value.files, "p": e.value.problems}) == []


def test_held_files_are_withheld_from_their_author_until_release(world):
    d = held_job(world)
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", reviews=1)
    r = ops.create(world, who("ann"), "lung", "held results", "", ["/held/jobs/7/", "project/out/table.csv"])
    rid = r["id"]
    held_rows = [f for f in r["files"] if f["held"]]
    assert leaks(r) == [] and len(held_rows) == 2 and r["withheld_files"] == 2 and r["file_count"] == 3
    assert all(f["withheld"] and f["path"] == "/held/jobs/7" and f["name"] is f["size"] is f["sha256"] is None
               for f in held_rows)
    assert r["total_size"] == len("a,b\n1,2\n3,4\n")  # the workspace file alone
    table = next(f for f in r["files"] if not f["held"])
    assert table["name"] == "table.csv" and table["size"] == 12 and not table["withheld"]
    # a check says that held files break the rules (12,346 rows > 10,000), never which, how or how big
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", max_csv_rows=10_000)
    report = ops.check(world, who("ann"), rid)
    assert not report["ok"] and leaks(report) == [] and "12346" not in json.dumps(report)
    assert [p for p in report["problems"] if "held files" in p] and not any(
        f["problems"] or f["size"] is not None for f in report["files"] if f["held"])
    with pytest.raises(ops.Refused) as e:
        ops.submit(world, who("ann"), rid)
    assert leaks({"m": str(e.value), "f": e.value.files, "p": e.value.problems}) == [] and not e.value.files
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", max_csv_rows=50_000)
    assert ops.check(world, who("ann"), rid)["ok"]
    out = ops.submit(world, who("ann"), rid)
    assert leaks(out) == [] and all(f["sha256"] is None for f in out["files"] if f["held"])
    assert leaks(ops.get(world, who("ben"), rid)) == []             # a member: withheld too
    assert leaks(ops.list_requests(world, who("ann"))) == []
    # frozen at submission: the job renames and rewrites its files; the checkers see what was submitted
    (d / "patient-4711-age-63.csv").rename(d / "other.csv")
    (d / "other.csv").write_text("changed\n")
    seen = ops.get(world, who("chk1"), rid)
    names = {f["name"]: f for f in seen["files"]}
    assert set(names) == {"7/patient-4711-age-63.csv", "7/LEAKNAME-figures/roc.png", "table.csv"}
    assert names["7/patient-4711-age-63.csv"]["held"] and names["7/patient-4711-age-63.csv"]["size"] > 12345 * 4
    assert ops.preview(world, who("chk1"), rid, names["7/patient-4711-age-63.csv"]["id"]).path.read_text() \
        .startswith("a,b\n1,2\n")
    # released: the approved held file is the author's like any other; the rejected one stays withheld
    decisions = [{"file": f["id"], "decision": "approve"} for f in seen["files"] if "LEAKNAME" not in f["name"]]
    decisions.append({"file": names["7/LEAKNAME-figures/roc.png"]["id"], "decision": "reject", "comment": "no"})
    ops.review(world, who("chk1"), rid, decisions)
    ops.release(world, who("chk1"), rid)
    after = ops.get(world, who("ann"), rid)
    assert {f["name"] for f in after["files"]} == {"7/patient-4711-age-63.csv", "table.csv", None}
    assert "LEAKNAME" not in json.dumps(after) and after["withheld_files"] == 1
    record = ops.get_record(world, who("ann"), rid)
    assert record["verified"] and "LEAKNAME" not in record["text"] and "patient-4711-age-63" in record["text"]


def test_a_held_file_is_updated_from_a_held_folder_only(world):
    held_job(world)
    with vdb.session_scope(world.vre_db_url) as db:
        set_rules(db, "lung", reviews=1)
    rid = ops.create(world, who("ann"), "lung", "x", "", ["/held/jobs/7/patient-4711-age-63.csv"])["id"]
    ops.submit(world, who("ann"), rid)
    fid = ops.get(world, who("chk1"), rid)["files"][0]["id"]
    ops.review(world, who("chk1"), rid, [{"file": fid, "decision": "changes", "comment": "round"}])
    ops.return_(world, who("chk1"), rid, "round")
    with pytest.raises(VREError, match="held job's folder"):  # its job-chosen name would show
        ops.update_file(world, who("ann"), rid, fid, "project/out/table.csv")
    assert ops.update_file(world, who("ann"), rid, fid)["files"][0]["version"] == 2
