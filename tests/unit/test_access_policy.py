"""The access layer's pure parts: route classes, download decisions, path resolution in a
session's mount table, kernel message parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vre.access import kernelmsg, policy
from vre.access.resolve import MountMap, candidates, is_dicom, read_head, resolve


# --- route classes ------------------------------------------------------------------------------
@pytest.mark.parametrize("rest, method, query, kind, path", [
    ("lab", "GET", "", "pass", None),
    ("lab/tree/notes.ipynb", "GET", "", "pass", None),
    ("static/lab/main.js", "GET", "", "pass", None),
    ("api/kernels", "POST", "", "pass", None),
    ("api/contents/notes.ipynb", "GET", "", "contents", "notes.ipynb"),
    ("api/contents/notes.ipynb", "GET", "content=0", "pass", None),
    ("api/contents/notes.ipynb", "PUT", "", "pass", None),
    ("api/contents/data/x.dcm", "GET", "type=file&format=base64", "contents", "data/x.dcm"),
    ("api/contents/a.csv", "GET", "download=1", "download", "a.csv"),
    ("files/data/ct/1.dcm", "GET", "", "download", "data/ct/1.dcm"),
    ("files/a.csv", "GET", "download=true", "download", "a.csv"),
    ("view/report.html", "GET", "", "download", "report.html"),
    ("nbconvert/html/nb.ipynb", "GET", "download=true", "download", "nb.ipynb"),
    ("lab/api/settings", "GET", "download=1", "download", "lab/api/settings"),
    ("vre/api/datasets", "GET", "", "pass", None),
    ("proxy/8787/status", "GET", "", "pass", None),
    ("proxy/5000/", "GET", "", "refuse", None),
    ("proxy/absolute/8080/", "GET", "", "refuse", None),
    ("newext/api", "GET", "", "refuse", None),
    (".vre/policy", "GET", "", "policy", None),
    ("api/kernels/abc/channels", "GET", "", "kernel", None),
    ("terminals/websocket/1", "GET", "", "terminal", None),
])
def test_route_classes(rest, method, query, kind, path):
    r = policy.classify(rest, method, query)
    assert (r.kind, r.path) == (kind, path)


# --- decisions ----------------------------------------------------------------------------------
H = "/home/jovyan"


@pytest.mark.parametrize("mode, kind, path, dicom, image, allowed", [
    ("all", "dataset", "/data/ct/x.dcm", False, False, False),
    ("all", "catalog", "/opt/vre/catalog/ct/index.json", False, False, False),
    ("all", "home", f"{H}/copy.bin", True, False, False),
    ("all", "system", "/etc/passwd", False, False, False),
    ("all", "home", f"{H}/x.csv", False, False, True),
    ("results", "home", f"{H}/x.csv", False, False, False),
    ("results", "home", f"{H}/results/x.csv", False, False, True),
    ("results", "workspace", f"{H}/project/results/x.csv", False, False, True),
    ("none", "home", f"{H}/results/x.csv", False, False, False),
    ("none", "home", f"{H}/plot.png", False, True, True),
    ("none", "dataset", "/data/ct/x.png", False, True, False),
])
def test_decide(mode, kind, path, dicom, image, allowed):
    assert policy.decide(mode, kind, path, is_dir=False, dicom=dicom, image_embed=image).allowed is allowed


def test_contents_answers():
    text = {"type": "file", "format": "text", "content": "a"}
    png = {"type": "file", "format": "base64", "mimetype": "image/png", "content": ""}
    blob = {"type": "file", "format": "base64", "mimetype": "application/octet-stream", "content": ""}
    assert policy.decide_contents_answer("none", "home", f"{H}/a.txt", text).allowed
    assert policy.decide_contents_answer("none", "home", f"{H}/a.png", png).allowed
    assert not policy.decide_contents_answer("none", "home", f"{H}/a.bin", blob).allowed
    assert policy.decide_contents_answer("all", "home", f"{H}/a.bin", blob).allowed
    assert not policy.decide_contents("all", "dataset", "/data/ct/a.csv", is_dir=False, dicom=False).allowed
    assert policy.decide_contents("none", "dataset", "/data/ct", is_dir=True, dicom=False).allowed


# --- resolution in a session's mount table ------------------------------------------------------
@pytest.fixture
def session(tmp_path):
    """A home and a dataset on the host, mounted as a session sees them."""
    home, data = tmp_path / "home", tmp_path / "ds"
    (data / "s1").mkdir(parents=True)
    (data / "s1" / "1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"rest")
    home.mkdir()
    (home / "notes.txt").write_text("n")
    (home / "sub").mkdir()
    os.symlink("/data/ct/s1/1.dcm", home / "innocent.txt")     # absolute, in the session's namespace
    os.symlink("../../../data/ct", home / "sub" / "up")          # relative, climbing out of the home
    os.symlink(str(data / "s1" / "1.dcm"), home / "hostpath")    # a host path means nothing inside
    os.symlink("loop2", home / "loop1")
    os.symlink("loop1", home / "loop2")
    os.symlink("/proc/self/root/data/ct/s1/1.dcm", home / "magic")
    mounts = [type("M", (), {"target": H, "source": home, "kind": "home"}),
              type("M", (), {"target": "/data/ct", "source": data, "kind": "dataset"})]
    return MountMap.from_plan(H, mounts), home, data


@pytest.mark.parametrize("path, kind, final", [
    ("notes.txt", "home", f"{H}/notes.txt"),
    ("innocent.txt", "dataset", "/data/ct/s1/1.dcm"),
    ("sub/up/s1/1.dcm", "dataset", "/data/ct/s1/1.dcm"),
    ("../../data/ct/s1/1.dcm", "dataset", "/data/ct/s1/1.dcm"),
    ("sub/../innocent.txt", "dataset", "/data/ct/s1/1.dcm"),
    ("/data/ct/s1", "dataset", "/data/ct/s1"),
    ("magic", "system", "/proc/self/root/data/ct/s1/1.dcm"),
])
def test_resolve_follows_links_in_the_sessions_namespace(session, path, kind, final):
    mm, _home, _data = session
    r = resolve(mm, path)
    assert (r.kind, r.path) == (kind, final)
    if kind == "dataset":
        assert r.dataset == "ct"


def test_resolve_never_follows_host_paths_and_stops_loops(session):
    mm, _home, data = session
    r = resolve(mm, "hostpath")
    assert r.kind == "system" and not r.exists and r.path == str(data / "s1" / "1.dcm")
    with pytest.raises(OSError):
        resolve(mm, "loop1")


def test_mount_map_round_trip_and_sniffing(session, tmp_path):
    mm, home, data = session
    path = tmp_path / "access.json"
    path.write_text(mm.dump())
    assert MountMap.load(path) == mm
    assert is_dicom(read_head(str(data / "s1" / "1.dcm")))
    assert not is_dicom(read_head(str(home / "notes.txt")))
    os.mkfifo(home / "fifo")
    assert read_head(str(home / "fifo")) == b""            # never blocks on a FIFO
    assert read_head(str(home / "innocent.txt")) == b""    # never follows a last-moment link
    assert candidates("a%2Fb") == ["a%2Fb", "a/b"]


# --- kernel messages ----------------------------------------------------------------------------
def _v1(channel, header, content, parent=None):
    parts = [channel.encode(), json.dumps(header).encode(), json.dumps(parent or {}).encode(), b"{}",
             json.dumps(content).encode()]
    offsets = [8 * (len(parts) + 2)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets) + b"".join(parts)


def test_execute_requests_in_both_wire_forms():
    header = {"msg_type": "execute_request", "msg_id": "m1"}
    v1 = _v1("shell", header, {"code": "x = 1"})
    assert kernelmsg.executed_code(kernelmsg.parse(v1, kernelmsg.V1)) == ("execute", "x = 1")
    legacy = json.dumps({"channel": "shell", "header": header, "content": {"code": "y = 2"}})
    assert kernelmsg.executed_code(kernelmsg.parse(legacy, None)) == ("execute", "y = 2")
    debug = _v1("control", {"msg_type": "debug_request"}, {"command": "evaluate", "arguments": {"expression": "z"}})
    assert kernelmsg.executed_code(kernelmsg.parse(debug, kernelmsg.V1)) == ("debug_evaluate", "z")
    assert kernelmsg.executed_code(kernelmsg.parse(_v1("shell", {"msg_type": "kernel_info_request"}, {}),
                                                   kernelmsg.V1)) is None


@pytest.mark.parametrize("frame", [b"", b"\xff" * 16, (10**9).to_bytes(8, "little") + b"\0" * 16,
                                   (3).to_bytes(8, "little") + (64).to_bytes(8, "little") * 3, b"not json", "[1, 2"])
def test_malformed_frames_are_not_messages(frame):
    assert kernelmsg.parse(frame, kernelmsg.V1 if isinstance(frame, bytes) else None) is None


def test_withheld_output_notice_answers_the_same_request():
    out = kernelmsg.parse(_v1("iopub", {"msg_type": "stream", "session": "s"}, {"text": "x" * 10},
                              parent={"msg_id": "req-7"}), kernelmsg.V1)
    notice = kernelmsg.parse(kernelmsg.stream_notice(out, "withheld", kernelmsg.V1), kernelmsg.V1)
    assert notice.channel == "iopub" and notice.parent_header == {"msg_id": "req-7"}
    assert notice.header["msg_type"] == "stream" and notice.content["text"] == "withheld"
    legacy = json.loads(kernelmsg.stream_notice(out, "withheld", None))
    assert legacy["parent_header"] == {"msg_id": "req-7"} and legacy["channel"] == "iopub"
