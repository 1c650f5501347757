"""What the access layer lets through to a session, by route: pure functions, table-driven.

A request path below a session's prefix (``/user/<name>/<server>/``) falls in one class:

* ``pass``: the Lab, its static files and APIs, kernels, terminals, the VRE extension's API
  (``vre/``: datasets, viewer; it serves what display needs), the project's Dask dashboard;
* ``download``: a raw file to the user's computer: ``files/``, ``view/``, ``nbconvert/``, and any
  request with ``download=1|true`` (how JupyterLab 4 downloads: ``<a download href=files/...>``,
  "Save and Export As" is ``nbconvert/<format>/<path>?download=true``);
* ``contents``: a contents-API read with content (the Lab opens documents this way: a base64
  answer is a file's bytes in the browser);
* ``policy``: ``.vre/policy``, answered by the layer itself (what the Lab should hide);
* ``refuse``: anything else, e.g. a new extension's route or ``proxy/<port>`` to a program the
  researcher started: a way out that nobody reviewed. Listing it here is a decision.

:func:`decide` then rules on a resolved file: dataset and catalogue files never leave raw; DICOM
never leaves raw, wherever it sits; the project's ``downloads`` mode says what else may
(``none``: nothing but images a notebook or Markdown shows; ``results``: also regular files
under the results directories; ``all``: any file of the home and workspace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

DOWNLOAD_MODES = ("none", "results", "all")
#: Session paths whose files ``results`` lets out (the home's and the workspace's results/).
RESULTS_DIRS = ("/home/jovyan/results/", "/home/jovyan/project/results/")

_PASS = re.compile(
    r"^(?:$|lab(?:/.*)?$|static/|kernelspecs/|custom/|nbextensions/|vre/|oauth_callback$|logout$|login$"
    r"|proxy/8787/|api(?:/.*)?$|metrics$)")
_DOWNLOAD = re.compile(r"^(?:files|view)/(?P<path>.*)$|^nbconvert/[^/]+/(?P<nbpath>.*)$")
_CONTENTS = re.compile(r"^api/contents(?:/(?P<path>.*))?$")
_KERNEL_WS = re.compile(r"^api/kernels/(?P<kernel>[^/]+)/channels$")
_TERMINAL_WS = re.compile(r"^terminals/websocket/(?P<name>[^/]+)$")
POLICY_PATH = ".vre/policy"


@dataclass(frozen=True)
class Route:
    kind: str            # pass | download | contents | policy | refuse | kernel | terminal
    path: str | None = None   # the file path a download or contents read names (URL-decoded)
    name: str | None = None   # the kernel id or terminal name of a websocket
    label: str = ""           # the route's name in audit events (files, view, nbconvert, contents, ...)


def classify(rest: str, method: str, query: str) -> Route:
    """The class of a request below a session's prefix; ``rest`` is the decoded path after it."""
    args = parse_qs(query, keep_blank_values=True)
    downloading = any(v.lower() in ("1", "true", "yes") for v in args.get("download", []))
    if rest == POLICY_PATH:
        return Route("policy")
    if m := _KERNEL_WS.match(rest):
        return Route("kernel", name=m["kernel"], label="kernel")
    if m := _TERMINAL_WS.match(rest):
        return Route("terminal", name=m["name"], label="terminal")
    if m := _DOWNLOAD.match(rest):
        label = rest.split("/", 1)[0]
        return Route("download", path=m["path"] if m["path"] is not None else m["nbpath"], label=label)
    if m := _CONTENTS.match(rest):
        path = m["path"] or ""
        if downloading:
            return Route("download", path=path, label="contents")
        if method in ("GET", "HEAD") and args.get("content", ["1"])[-1] != "0":
            return Route("contents", path=path, label="contents")
        return Route("pass", label="contents")
    if rest.startswith("terminals/"):
        return Route("pass", label="terminals")
    if _PASS.match(rest):
        return Route("download" if downloading else "pass", path=rest if downloading else None,
                     label="download" if downloading else "")
    return Route("refuse", label=rest.split("/", 1)[0][:40])


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""      # dataset | catalog | dicom | mode | missing | outside
    message: str = ""


DATASET_MESSAGE = ("Dataset files cannot be downloaded from the VRE; use the viewer or request an export "
                   "through the airlock")
DICOM_MESSAGE = ("DICOM files cannot be downloaded from the VRE; use the viewer or request an export "
                 "through the airlock")
MODE_MESSAGE = ("Downloads from this project are off (downloads = {mode}); request an export of your "
                "results through the airlock")


def decide(mode: str, kind: str, session_path: str, *, is_dir: bool, dicom: bool, image_embed: bool) -> Verdict:
    """May a raw file at ``session_path`` (in a mount of ``kind``) go to the browser?
    ``image_embed``: the browser asked for it to show as an image (``Sec-Fetch-Dest: image``)."""
    if kind in ("dataset", "catalog"):
        return Verdict(False, kind, DATASET_MESSAGE)
    if dicom:
        return Verdict(False, "dicom", DICOM_MESSAGE)
    if kind not in ("home", "workspace"):
        return Verdict(False, "outside", MODE_MESSAGE.format(mode=mode))
    if is_dir:
        return Verdict(True)
    if image_embed or mode == "all":
        return Verdict(True)
    if mode == "results" and any(session_path.startswith(d) for d in RESULTS_DIRS):
        return Verdict(True)
    return Verdict(False, "mode", MODE_MESSAGE.format(mode=mode))


def decide_contents(mode: str, kind: str, session_path: str, *, is_dir: bool, dicom: bool) -> Verdict:
    """May a contents read with content go to the browser, before the answer is seen? Directory
    listings may; dataset and catalogue files and DICOM may not. Other files: see
    :func:`decide_contents_answer` once the answer says its format."""
    if is_dir:
        return Verdict(True)
    if kind in ("dataset", "catalog"):
        return Verdict(False, kind, DATASET_MESSAGE)
    if dicom:
        return Verdict(False, "dicom", DICOM_MESSAGE)
    return Verdict(True)


def decide_contents_answer(mode: str, kind: str, session_path: str, model: dict) -> Verdict:
    """A contents answer: notebooks and text are for editing and pass; a file's raw bytes (base64)
    pass for images (the image viewer) and otherwise as raw downloads would."""
    if model.get("type") != "file" or model.get("format") != "base64":
        return Verdict(True)
    if str(model.get("mimetype") or "").startswith("image/"):
        return decide(mode, kind, session_path, is_dir=False, dicom=False, image_embed=True)
    return decide(mode, kind, session_path, is_dir=False, dicom=False, image_embed=False)
