"""Build step of ``pip install ./extensions``: is the lab extension bundle there and current?

hatch-jupyter-builder calls :func:`build` (``[tool.hatch.build.hooks.jupyter-builder]`` in
pyproject.toml) before the wheel is assembled; the wheel then ships ``vre_session/labextension``
as shared data (``share/jupyter/labextensions/vre-session``). Not part of the installed package.

* no TypeScript sources next to it (an image's build context, which holds only the package and
  its built bundle): the bundle is used as it is;
* the bundle's stamp (``.vre-build-hash``, written by build-labextension.sh) names the current
  sources: nothing to do, so an install from a built checkout is offline and quick;
* otherwise (missing, or older than its sources): ``bash build-labextension.sh --build-only``
  (npm ci when the lock changed, tsc, jupyter-builder; Node >= 20.19).

``python vre_session/_labextension_build.py hash`` prints the sources' hash (the build script's
stamp uses it, so both agree on what "current" means).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

EXT = Path(__file__).resolve().parent.parent  # extensions/
OUT = EXT / "vre_session" / "labextension"
STAMP = ".vre-build-hash"
#: What the bundle is built from (besides the builder's own versions, pinned by package-lock.json).
INPUT_DIRS = ("src", "style")
INPUT_FILES = ("package.json", "package-lock.json", "tsconfig.json", "build-labextension.sh")

log = logging.getLogger("vre_session.labextension")


def sources_hash(ext: Path = EXT) -> str | None:
    """sha256 over the bundle's inputs (names and contents); None without sources."""
    if not (ext / "src").is_dir() or not (ext / "package.json").is_file():
        return None
    files = [p for d in INPUT_DIRS for p in (ext / d).rglob("*") if p.is_file()]
    files += [ext / name for name in INPUT_FILES if (ext / name).is_file()]
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(ext).as_posix()):
        h.update(path.relative_to(ext).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def built_hash(out: Path = OUT) -> str | None:
    """The sources' hash recorded by the last build (``sources=<hash>`` in the stamp), if any."""
    try:
        lines = (out / STAMP).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key == "sources":
            return value.strip()
    return None


def is_current(ext: Path = EXT) -> bool:
    out = ext / "vre_session" / "labextension"
    if not (out / "package.json").is_file():
        return False
    wanted = sources_hash(ext)
    return wanted is None or built_hash(out) == wanted


def build(target_name: str, version: str, **_kwargs) -> None:
    """hatch-jupyter-builder's build function (``version``: "standard" or "editable")."""
    if is_current(EXT):
        log.info("vre-session lab extension: up to date (%s)", OUT)
        return
    if sources_hash(EXT) is None:
        raise RuntimeError(f"the lab extension is not built ({OUT}) and its sources are not here")
    log.info("vre-session lab extension: building (missing or older than its sources)")
    subprocess.run(["bash", str(EXT / "build-labextension.sh"), "--build-only"], cwd=str(EXT), check=True)
    if not is_current(EXT):
        raise RuntimeError("build-labextension.sh did not produce a current lab extension")


if __name__ == "__main__":
    if sys.argv[1:] == ["hash"]:
        print(sources_hash() or "")
    elif sys.argv[1:] == ["current"]:
        sys.exit(0 if is_current() else 1)
    else:
        sys.exit("usage: _labextension_build.py hash|current")
