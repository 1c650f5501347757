"""The claims reader (``vre.claims``), run as its pod runs it (``python3 -I -c <source>``), against
a folder laid out as its claims are mounted: it answers what the hub's own walk would find, never
follows a link, refuses what is not below its root, answers no one without its token, and ends by
itself when idle. The airlock freezes through it as it does on the host
(tests/k8s/test_helm_install.py does the same through a reader pod on the test cluster)."""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vre import db as vdb
from vre import projects as P
from vre.access.resolve import MountMap, resolve
from vre.accounts import add_account
from vre.airlock import requests as ops
from vre.airlock import store
from vre.airlock.rules import DEFAULTS
from vre.audit import open_store
from vre.claims import pods as claim_pods
from vre.claims import reader
from vre.claims.files import LOCAL, ReaderFiles, ReaderUnavailable
from vre.plan import Mount
from vre.settings import Settings


class Reader:
    """A reader process on 127.0.0.1, started exactly as in its pod."""

    def __init__(self, root: Path, idle: float = 60, token: str | None = None):
        self.root = root
        self.token = token if token is not None else secrets.token_urlsafe(32)
        env = {"PATH": os.environ["PATH"], "VRE_READER_TOKEN": self.token}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", Path(reader.__file__).read_text(), "--root", str(root),
             "--host", "127.0.0.1", "--port", "0", "--idle", str(idle)],
            env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "on port" not in line:
            self.proc.kill()
            raise AssertionError(f"the reader did not start: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(line.rsplit(" ", 1)[-1])

    def files(self, token: str | None = None, root: Path | None = None) -> ReaderFiles:
        return ReaderFiles("127.0.0.1", self.port, token or self.token, str(root or self.root))

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def claims(tmp_path):
    """A reader's root: the member's home and the project's workspace, with what a researcher
    can put there (links in and out, a loop, a FIFO, a link on the way to a folder)."""
    root = tmp_path / "claims"
    home, ws = root / "home", root / "workspace"
    for d in (home / "sub", ws / "out"):
        d.mkdir(parents=True)
    (home / "a.txt").write_text("alpha\n")
    (home / "sub" / "b.txt").write_text("beta\n")
    (ws / "out" / "table.csv").write_text("a,b\n1,2\n")
    (home / "to-data").symlink_to("/data/ct/1.dcm")
    (home / "linked.csv").symlink_to("/home/jovyan/project/out/table.csv")
    (home / "up").symlink_to("../../../etc/passwd")
    (home / "etc").symlink_to("/etc")
    (home / "loop1").symlink_to("loop2")
    (home / "loop2").symlink_to("loop1")
    (home / "subl").symlink_to("sub")
    os.mkfifo(home / "fifo")
    r = Reader(root)
    yield root, r
    r.stop()


def mount_map(root: Path, files) -> MountMap:
    return MountMap.from_plan("/home/jovyan", (
        Mount(Path("/srv/ct"), "/data/ct", True), Mount(root / "home", "/home/jovyan", False, "home"),
        Mount(root / "workspace", "/home/jovyan/project", False, "workspace")), files)


PATHS = ["a.txt", "sub/b.txt", "subl/b.txt", "to-data", "linked.csv", "up", "etc/passwd", "fifo", "missing",
         "sub/../a.txt", "/home/jovyan/project/out/table.csv", "project/out", "/etc/hostname", "subl", ""]


@pytest.mark.parametrize("path", PATHS)
def test_the_reader_resolves_as_the_host_does(claims, path):
    root, r = claims
    assert resolve(mount_map(root, r.files()), path) == resolve(mount_map(root, LOCAL), path)


def test_a_link_loop_is_an_error_through_the_reader_too(claims):
    root, r = claims
    for files in (LOCAL, r.files()):
        with pytest.raises(OSError, match="too many levels"):
            resolve(mount_map(root, files), "loop1")


def test_the_reader_follows_no_link_and_stays_below_its_root(claims):
    root, r = claims
    f = r.files()
    assert f.scandir(str(root / "home"))[:3] == [("a.txt", False), ("etc", False), ("fifo", False)]
    assert ("subl", False) in f.scandir(str(root / "home")) and ("sub", True) in f.scandir(str(root / "home"))
    with pytest.raises(OSError) as e:
        f.scandir(str(root / "home/subl"))        # a link to a folder is not walked into
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with pytest.raises(OSError) as e:
        f.open(str(root / "home"), "linked.csv")    # nor read through
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        f.open(str(root / "home"), "subl/b.txt")  # nor passed on the way
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        f.open(str(root / "home"), "fifo")        # and a FIFO does not block it
    assert time.monotonic() - t0 < 5
    with pytest.raises(FileNotFoundError, match="not on the project's claims"):
        f.lstat("/etc")   # the hub does not ask
    for outside in ("/etc", f"{root}/../claims2", f"{root}/home/../../x"):
        with pytest.raises(ReaderUnavailable, match="not below|not allowed"):
            r.files(root=Path("/")).lstat(outside)   # and the reader would not answer
    with f.open(str(root / "home"), "sub/b.txt") as body:
        assert body.read() == b"beta\n"


def test_parts_of_files_and_walks_are_answered_as_the_host_does(claims):
    """The job service's two questions (a log from an offset, the files below a job's folder)
    give through the reader what they give on the host: links neither followed nor listed."""
    root, r = claims
    ws = root / "workspace"
    (ws / "out" / "log.txt").write_bytes(b"0123456789" * 300_000)   # 3 MB: more than one chunk
    (ws / "out" / "deep" / "er").mkdir(parents=True)
    (ws / "out" / "deep" / "er" / "x.bin").write_bytes(b"x")
    (ws / "out" / "home").symlink_to(root / "home")
    (ws / "out" / "secret").symlink_to(root / "home" / "a.txt")
    os.mkfifo(ws / "out" / "pipe")
    for files in (LOCAL, r.files()):
        assert files.read(str(ws), "out/log.txt", 5, 7) == b"5678901"
        assert files.read(str(ws), "out/log.txt", 2_999_998, 100) == b"89"
        assert files.read(str(ws), "out/log.txt", 3_000_000) == b""
        assert len(files.read(str(ws), "out/log.txt", 10, 2_500_000)) == 2_500_000
        assert sorted(files.walk(str(ws), "out")) == [("deep/er/x.bin", 1), ("log.txt", 3_000_000),
                                                      ("table.csv", 8)]
        with pytest.raises(OSError):
            files.read(str(ws), "out/secret")
        with pytest.raises(OSError):
            files.walk(str(ws), "out/home")
    with pytest.raises(ReaderUnavailable, match="whole number"):
        r.files().read(str(ws), "out/log.txt", -1)


def test_a_walk_is_bounded_and_holds_no_descriptor_per_folder(claims, monkeypatch):
    root, _r = claims
    many = root / "workspace" / "many"
    for i in range(300):
        (many / f"d{i:03}").mkdir(parents=True)
        (many / f"d{i:03}" / "f").write_text("x")
    monkeypatch.setattr(reader, "WALK_VISIT", 1000)
    assert len(reader.walk(str(root), str(many))["files"]) == 300
    monkeypatch.setattr(reader, "WALK_VISIT", 100)
    cut = reader.walk(str(root), str(many))
    assert cut["truncated"] and len(cut["files"]) < 100


def test_the_hubs_processes_share_one_reader_per_member(claims, tmp_path, monkeypatch):
    """The VRE service, the access layer's broker and the CLI are processes of one hub pod: the
    first to need a member's reader starts it and leaves its pod name and token root-only in the
    run directory; the others take it over (the project's quota holds one reader per member)."""
    import types

    root, r = claims
    settings = Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", backend="kubernetes",
                        k8s_storage="pvc")
    monkeypatch.setattr(claim_pods.k8s, "READER_PORT", r.port)
    monkeypatch.setattr(claim_pods, "ROOT", str(root))
    starts = []

    class Core:   # the API as it answers about the reader's pod
        async def read_namespaced_pod(self, name, ns):
            ready = types.SimpleNamespace(ready=True)
            return types.SimpleNamespace(status=types.SimpleNamespace(pod_ip="127.0.0.1", container_statuses=[ready]))

        async def delete_namespaced_pod(self, *a, **kw):
            pass

    def process():
        readers = claim_pods.ClaimReaders(settings)

        async def core():
            return Core()

        async def start(plan):
            starts.append(plan.user)
            return claim_pods._Reader("vre-lung", "reader-ann-0a1b2c", r.files(), time.monotonic())
        monkeypatch.setattr(readers, "_core", core)
        monkeypatch.setattr(readers, "_start", start)
        return readers

    plan = types.SimpleNamespace(user="ann", role="session", pool="lung", project="lung",
                                 labels={"vre.project": "lung"})
    monkeypatch.setattr(claim_pods.k8s, "namespace_name", lambda p: "vre-lung")
    service, broker = process(), process()
    assert service.files(plan).lstat(str(root / "home" / "a.txt")).st_size == 6
    assert broker.files(plan).lstat(str(root / "home" / "a.txt")).st_size == 6
    assert starts == ["ann"]   # the broker took the service's reader over
    (shared,) = [p for p in (settings.run_dir / "claims-readers").iterdir() if not p.name.endswith(".lock")]
    assert oct(shared.stat().st_mode)[-3:] == "600" and oct(shared.parent.stat().st_mode)[-3:] == "700"
    assert json.loads(shared.read_text()) == {"pod": "reader-ann-0a1b2c", "token": r.token}


def test_the_reader_answers_only_with_its_token(claims):
    root, r = claims
    for wrong in ("x" * 43, r.token[:-1] + ("A" if r.token[-1] != "A" else "B")):
        with pytest.raises(ReaderUnavailable, match="token"):
            r.files(wrong).lstat(str(root / "home/a.txt"))
        with pytest.raises(ReaderUnavailable, match="token"):
            r.files(wrong).open(str(root / "home"), "a.txt")
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
    conn.request("GET", f"/read?path={root}/home/a.txt")
    resp = conn.getresponse()
    assert resp.status == 401 and b"alpha" not in resp.read()


def test_a_reader_without_a_token_does_not_start(tmp_path):
    run = subprocess.run([sys.executable, "-I", "-c", Path(reader.__file__).read_text(), "--root", str(tmp_path),
                          "--port", "0"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "VRE_READER_TOKEN" in run.stderr


def test_an_idle_reader_exits_by_itself(tmp_path):
    """Only the hub's questions keep it alive: another pod knocking without the token does not."""
    r = Reader(tmp_path, idle=2)
    try:
        assert r.files().healthy()
        knocked = time.monotonic()
        while r.proc.poll() is None and time.monotonic() - knocked < 15:
            assert not r.files("x" * 43).healthy()
            time.sleep(0.2)
        assert r.proc.wait(timeout=5) == 0 and time.monotonic() - knocked < 15
        assert not r.files().healthy()
    finally:
        r.stop()


def test_a_file_that_shrinks_while_read_is_an_incomplete_read(claims, monkeypatch):
    root, r = claims
    big = root / "home" / "big.bin"
    with open(big, "wb") as f:
        f.truncate(256 << 20)   # sparse: far more than the socket buffers hold
    body = r.files().open(str(root / "home"), "big.bin")
    assert len(body.read(1 << 20)) == 1 << 20
    os.truncate(big, 0)
    with pytest.raises(http.client.IncompleteRead):
        while body.read(1 << 20):
            pass
    body.close()
    os.truncate(big, 256 << 20)   # read whole, the same is an OSError (as a failed read on the host)
    files, real_open = r.files(), ReaderFiles.open

    def shrinks_after_open(self, base, rel, **kw):
        body = real_open(self, base, rel, **kw)
        os.truncate(big, 0)
        return body
    monkeypatch.setattr(ReaderFiles, "open", shrinks_after_open)
    with pytest.raises(OSError, match="changed while it was read"):
        files.read(str(root / "home"), "big.bin", 0, 256 << 20)
    monkeypatch.undo()
    # the airlock says so rather than freeze a short copy
    os.truncate(big, 256 << 20)
    copy = store.copy_stream

    def shrinking(src, dst, **kw):
        src.read(1 << 20)
        os.truncate(big, 0)
        return copy(src, dst, **kw)

    monkeypatch.setattr(store, "copy_stream", shrinking)
    c = store.Candidate("/home/jovyan/big.bin", "big.bin", source=str(root / "home"), rel="big.bin",
                        size=256 << 20, files=r.files())
    settings = Settings(state_dir=root.parent / "state")
    settings.state_dir.mkdir()
    fr = store.freeze(settings, 1, c, DEFAULTS, limit=1 << 40)
    assert fr.stored == "" and "could not be read to its end" in fr.problems[0], fr
    assert list(store.request_dir(settings, 1).iterdir()) == []   # nothing half-copied is left


# --- the airlock through a reader -------------------------------------------------------------
@pytest.fixture
def world(db_url, tmp_path, claims, monkeypatch):
    """A project on Kubernetes with claims: the hub's own folders stay empty, the files are on the
    reader's claims."""
    root, r = claims
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url, backend="kubernetes", k8s_storage="pvc",
                        k8s_unobserved_reads=True)
    with vdb.session_scope(db_url) as db:
        for name in ("ann", "ben"):
            add_account(db, name, password=f"{name}-password-1")
        (tmp_path / "ct").mkdir()
        db.add(vdb.Dataset(slug="ct", title="CT", path=str(tmp_path / "ct"), catalog={}))
        P.create_project(db, "lung", "Lung")
        db.flush()
        P.grant(db, "lung", "ct")
        for m in ("ann", "ben"):
            P.add_member(db, "lung", m)
        P.set_profile(db, "lung", "small", cpu=1, memory="1G")
    asked = []

    class Readers:   # one reader process answers for every plan's claims (its root holds them all)
        def files(self, plan):
            asked.append(claim_pods.reader_of(plan))
            return r.files()

    monkeypatch.setattr(claim_pods, "ROOT", str(root))
    monkeypatch.setattr(claim_pods, "readers", lambda s: Readers())
    return settings, root, asked


def who(name):
    return ops.Actor(name, checker_scope=True)


def test_an_export_is_frozen_through_the_reader(world):
    settings, root, asked = world
    r = ops.create(settings, who("ann"), "lung", "results", "", [])
    assert asked == []    # creating a request starts no reader
    ops.add_files(settings, who("ann"), r["id"], ["a.txt", "project/out", "linked.csv"])
    assert asked and set(asked) == {"ann"}
    with pytest.raises(ops.Refused) as e:
        ops.add_files(settings, who("ann"), r["id"], ["to-data", "etc/passwd", "missing", "fifo"])
    text = str(e.value)
    assert "inside a dataset" in text and "outside your home" in text and "no such file" in text
    assert "not a regular file" in text
    out = ops.submit(settings, who("ann"), r["id"])
    assert out["state"] == "submitted"
    sizes = {f["name"]: (f["size"], f["sha256"]) for f in out["files"]}
    table = (root / "workspace/out/table.csv").read_bytes()
    assert sizes["a.txt"] == (6, hashlib.sha256(b"alpha\n").hexdigest())
    assert sizes["out/table.csv"] == sizes["linked.csv"] == (len(table), hashlib.sha256(table).hexdigest())
    # the copies are the hub's: changing the claims afterwards changes nothing frozen
    (root / "home/a.txt").write_text("changed\n")
    stored = sorted(p.read_bytes() for p in store.request_dir(settings, r["id"]).iterdir())
    assert stored == sorted([b"alpha\n", table, table])
    assert [e["action"] for e in open_store(settings).query(limit=10, newest_first=False, action="airlock.")][-1] \
        == "airlock.submit"


def test_a_held_jobs_output_leaves_through_the_held_pools_reader(world):
    """Held jobs' folders are on the held pool's claim: the airlock asks the held pool's reader
    for paths below /held/jobs (and only for those), with the same rules as everywhere."""
    settings, root, asked = world
    out = root / "held" / "jobs" / "7"
    out.mkdir(parents=True)
    (out / "counts.csv").write_text("a,1\n")
    (out / "shadow").symlink_to("/etc/shadow")
    r = ops.create(settings, who("ann"), "lung", "held", "", ["a.txt"])
    assert set(asked) == {"ann"}   # her home's file: her reader only
    ops.add_files(settings, who("ann"), r["id"], ["/held/jobs/7/counts.csv"])
    assert "lung.held" in asked
    with pytest.raises(ops.Refused):
        ops.add_files(settings, who("ann"), r["id"], ["/held/jobs/7/shadow"])
    assert ops.submit(settings, who("ann"), r["id"])["state"] == "submitted"
    stored = sorted(p.read_bytes() for p in store.request_dir(settings, r["id"]).iterdir())
    assert stored == [b"a,1\n", b"alpha\n"]


def test_checking_and_updating_an_export_start_its_readers_before_their_transactions(world, monkeypatch):
    """As submitting does: a check or a file's update asks the readers its files need (a held
    file: the held pool's, whose pod may have to start) before its transaction, never inside it."""
    settings, root, asked = world
    out = root / "held" / "jobs" / "8"
    out.mkdir(parents=True)
    (out / "counts.csv").write_text("b,2\n")
    r = ops.create(settings, who("ann"), "lung", "held", "", ["a.txt", "/held/jobs/8/counts.csv"])
    held_file = next(f["id"] for f in ops.submit(settings, who("ann"), r["id"])["files"] if f["held"])
    order = []
    warm, tx = store.warm, ops._tx
    monkeypatch.setattr(store, "warm", lambda mm, paths: (order.append(("warm", list(paths))), warm(mm, paths)))
    monkeypatch.setattr(ops, "_tx", lambda s: (order.append(("tx",)), tx(s))[1])
    ops.update_file(settings, who("ann"), r["id"], held_file)
    assert order[:2] == [("warm", ["/held/jobs/8/counts.csv"]), ("tx",)]
    (out / "more.csv").write_text("c,3\n")
    order.clear()
    ops.update_file(settings, who("ann"), r["id"], held_file, "/held/jobs/8/more.csv")
    assert order[:2] == [("warm", ["/held/jobs/8/more.csv"]), ("tx",)]
    r2 = ops.create(settings, who("ann"), "lung", "draft", "", ["a.txt"])
    order.clear()
    ops.check(settings, who("ann"), r2["id"])
    assert order[:2] == [("warm", ["/home/jovyan/a.txt"]), ("tx",)]


def test_the_job_service_reads_a_members_workspace_through_her_reader(world):
    """On claims a job's script is read at submission, and its log, progress and outputs
    afterwards, through the acting member's reader; a log that shrinks while read is no log yet,
    not an error page."""
    from vre.jobs import inputs, service

    settings, root, asked = world
    ws = root / "workspace"
    (ws / "train.py").write_text("print(2)\n")
    with vdb.session_scope(settings.vre_db_url) as db:
        job = service.submit(db, settings, "ben", {"project": "lung", "kind": "script", "target": "project/train.py",
                                                    "lane": "held"})
        assert asked == ["ben"] and base64.b64decode(inputs.load(settings, job.id)["input/train.py"]) == b"print(2)\n"
        job = service.submit(db, settings, "ben", {"project": "lung", "kind": "script", "target": "project/train.py"})
        out = ws / "jobs" / str(job.id)   # what the worker makes
        out.mkdir(parents=True)
        (out / "log.txt").write_text("[vre] started\nepoch 1\n")
        (out / "progress.json").write_text('{"done": 1, "total": 4}')
        (out / "plot.png").write_bytes(b"png")
        (out / "elsewhere").symlink_to(root / "home")
        folder = service.job_files(db, settings, job, "ann")
        assert folder.base == str(root / "workspace") and folder.rel == f"jobs/{job.id}"
        assert service.read_log(settings, job, folder=folder) == ("[vre] started\nepoch 1\n", 22)
        assert asked[-1] == "ann"
        assert service.read_log(settings, job, 14, folder=folder) == ("epoch 1\n", 22)
        detail = service.to_dict(settings, job, detail=True, folder=folder)
        assert detail["progress"] == {"done": 1, "total": 4}
        assert [o["path"] for o in detail["outputs"]] == [f"/home/jovyan/project/jobs/{job.id}/{n}"
                                                          for n in ("log.txt", "plot.png")]
        with pytest.raises(ReaderUnavailable, match="whole number"):
            service.read_log(settings, job, 10**19, folder=folder)


def test_the_download_guard_resolves_a_sessions_links_through_her_reader(world):
    """On claims the access layer's broker cannot read the session's home: it asks her reader, so
    a link in her home to a dataset file is a dataset file and a copy of a DICOM file is DICOM
    (on the hub's own paths, which do not exist there, both passed for plain files of the home)."""
    from vre.access.broker import Broker, access_file
    from vre.access.resolve import MountMap

    settings, root, asked = world
    settings = settings.replace(run_dir=root.parent / "run")
    (root / "home" / "copy.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    mounts = (Mount(Path("/srv/ct"), "/data/ct", True, "dataset"),
              Mount(settings.state_dir / "nowhere" / "home", "/home/jovyan", False, "home"),
              Mount(settings.state_dir / "nowhere" / "ws", "/home/jovyan/project", False, "workspace"))
    table = access_file(settings, "ann-lung")
    table.parent.mkdir(parents=True)
    table.write_text(MountMap.from_plan("/home/jovyan", mounts).dump(user="ann", project="lung"))
    broker = Broker(settings)
    facts = {p: broker.classify("ann-lung", p, raw=True) for p in ("to-data", "a.txt", "up", "copy.dcm", "missing")}
    assert facts["to-data"]["kind"] == "dataset" and facts["to-data"]["path"] == "/data/ct/1.dcm"
    assert facts["a.txt"]["kind"] == "home" and facts["a.txt"]["exists"] and not facts["a.txt"]["dicom"]
    assert facts["up"]["kind"] == "system"
    assert facts["copy.dcm"]["dicom"] is True
    assert facts["missing"]["kind"] == "home" and not facts["missing"]["exists"]
    assert set(asked) == {"ann"}
    # a contents read (the Lab's file browser and editor) asks no reader: the mounts' kinds decide
    asked.clear()
    assert broker.classify("ann-lung", "to-data")["kind"] == "home" and asked == []
    assert broker.classify("ann-lung", "/data/ct/1.dcm")["kind"] == "dataset"


def test_a_reader_that_cannot_start_changes_nothing(world, monkeypatch):
    settings, _root, _asked = world

    class Gone:
        def files(self, plan):
            raise ReaderUnavailable("the cluster's API does not answer")

    monkeypatch.setattr(claim_pods, "readers", lambda s: Gone())
    with pytest.raises(ReaderUnavailable, match="does not answer"):
        ops.create(settings, who("ben"), "lung", "x", "", ["a.txt"])
    assert ops.list_requests(settings, who("ben")) == []


def test_an_export_starts_the_readers_its_files_need_before_its_transaction():
    """``airlock.store.warm``: the reader behind each of the request's paths is asked a first
    question (its pod started) before the transaction that asks it where her files lead, and
    only those (a held export needs the held pool's reader, not her own); on the host, nothing."""
    from types import SimpleNamespace

    from vre.access.resolve import MountMap
    from vre.airlock import store
    from vre.claims.files import ReaderUnavailable

    asked = []

    def lstat(path):
        asked.append(path)
        raise ReaderUnavailable("not yet")
    mounts = (("/home/jovyan/project", "/claims/workspace", "workspace"), ("/home/jovyan", "/claims/home", "home"),
              ("/held/jobs", "/claims/held/jobs", "held"))
    mm = MountMap.from_plan("/home/jovyan", [SimpleNamespace(target=t, source=s, kind=k) for t, s, k in mounts],
                            SimpleNamespace(lstat=lstat))
    store.warm(mm, ["/held/jobs/7/result.txt"])
    assert asked == ["/claims/held/jobs"]
    store.warm(mm, ["results/a.csv", "~/project/b.csv", "/home/jovyan/c.csv", "/etc/passwd", ""])
    assert asked == ["/claims/held/jobs", "/claims/home", "/claims/workspace"]
    store.warm(MountMap("/home/jovyan", (("/home/jovyan", "/srv/homes/ann", "home"),)), ["a.csv"])   # the host's
    assert len(asked) == 3
