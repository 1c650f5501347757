"""Held jobs' files in the airlock: what their author may learn about them, decided here only.

A held job reads batch-only data, and its author wrote its code. Anything the airlock told the
author about the job's files before checkers released them (names, sizes, rows, a DICOM flag, the
dataset file one equals, a hash, where a link leads) would carry that data out past review, a
request at a time, while the job keeps renaming and resizing its files. So:

* A file is **held** when the path it is named by lies below ``/held`` (``is_held``). A path that
  only *leads* there through a link in the home or workspace is refused (``THROUGH_LINK``), so the
  name alone decides, today and at every later look. Below ``/held`` no link is followed and only
  regular files and folders are accepted (``NOT_PLAIN``); refusals name nothing the job chose.
* Before release its author and the project's members see, per held file, only its id, version,
  status, the description they wrote and the job's folder (``/held/jobs/<id>``); a request says
  how many held files it holds (``withheld_files``) and its ``total_size`` leaves them out. A refused
  addition says that held files of the path the author gave cannot be added, and the kinds of
  reasons (``refused``); a check, a refused submission or update that held files break the rules
  (``RULES``): never which, how big or why. Output checkers who did not write the request see
  everything.
* Once a request is released, the held files that were released are shown like any other (they
  are in the author's download); the others stay withheld, in the signed record too.

What remains visible is counts and the pass/fail of a check: a bit or a few per call, each call an
audit event (docs/airlock.md).
"""

from __future__ import annotations

import posixpath

from ..plan import HELD_ROOT

#: A held file that is a link, or is not a regular file or folder (or lies below one such).
NOT_PLAIN = ("a symbolic link or something other than a regular file or folder (a pipe, socket or device) in a "
             "held job's folder, which may hold only regular files and folders: fix the job and run it again")
#: A path in the home or workspace whose links lead into a held job's folder.
THROUGH_LINK = ("leads into a held job's folder through a link: name a held job's files by their own path, "
                "/held/jobs/<id>/...")
#: Held files break the project's rules (at a check, a submission or an update).
RULES = ("held files of this request break the project's rules (allowed file types, largest file and request, "
         "rows per table, no DICOM, no copy of a dataset file); which ones and why is withheld from you, as "
         "everything about a held job's files until the output checkers release them: make the job's output "
         "meet the rules and run it again")


def is_held(path: str) -> bool:
    """Whether a session path (absolute) names a file or folder below ``/held``."""
    return posixpath.normpath(path or "/").startswith(HELD_ROOT + "/")


def folder(path: str) -> str:
    """The held job's folder a held path lies in (``/held/jobs/<id>``): all that its author sees."""
    return "/" + "/".join(posixpath.normpath(path).split("/")[1:4])


def shown(caps: set, *, released: bool) -> bool:
    """Whether a caller with ``caps`` sees a held file in full: an output checker who is not the
    author; anyone who may see the request once the file is released."""
    return released or ("checker" in caps and "author" not in caps)


def redact(row: dict) -> dict:
    """A file row (as ``requests.to_dict`` and ``check`` give it) with the job's choices left out."""
    out = {**row, "held": True, "withheld": True, "path": folder(row["path"])}
    for key in ("name", "size", "sha256"):
        if key in out:
            out[key] = None
    if "problems" in out:
        out["problems"] = []
    return out


def refused(named: str, problems) -> str:
    """One problem for the held files a named path stands for that cannot be added."""
    return f"{named}: held files cannot be added: {'; '.join(sorted(set(problems)))}"


def split(refused_files: list[dict]) -> tuple[list[dict], list[str]]:
    """Refused files (``[{path, name, size, problems}]``) as their author may see them: the others
    as they are, held ones as one request-level problem (``RULES``) naming none of them."""
    others = [f for f in refused_files if not is_held(f["path"])]
    return others, ([RULES] if len(others) < len(refused_files) else [])
