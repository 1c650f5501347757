"""The catalogue of a session's or a batch worker's pod on Kubernetes with claims
(``k8s_storage = "pvc"``): the hub's catalogue folder is not on the node, so the pod's first
container fetches its mounted datasets' ``record.json`` and ``index.sqlite`` from the VRE
service's catalogue listener (``k8s_catalogue_port``: ``api/catalogue/<slug>/<file>`` and nothing
else, with the ticket the hub put in the run's Secret for this container alone:
``vre.catalog.tickets``) into a scratch volume that the pod's main container mounts read-only at
``/opt/vre/catalog``.

It runs the session image's ``python3 -I -c`` on this file's source, passed in the pod's command
(nothing from a place a researcher can write), before any of the researcher's code: **standard
library only, no imports from vre** (``tests/unit/test_catalogue_api.py`` runs it that way).

A catalogue the hub cannot hand over now (the service restarting, a dataset not indexed yet) is
tried again until ``--wait`` seconds have passed since the start (all datasets together: the
session's start has a timeout), then left out with a line on the container's log: the session
starts with its datasets' files, its Datasets panel without that index. A batch pod's fetch is
``--required``: a job must not read an empty catalogue as "no series", so the container fails
with the reason and the job engine counts a lost start.
"""

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

FILES = ("record.json", "index.sqlite")
CHUNK = 1 << 20


def fetch(api: str, ticket: str, slug: str, name: str, out: str, timeout: float) -> None:
    """One file, written whole or not at all."""
    request = urllib.request.Request(f"{api}/catalogue/{slug}/{name}",
                                     headers={"Authorization": f"vre-ticket {ticket}"})
    part = out + ".part"
    try:
        with urllib.request.urlopen(request, timeout=max(1.0, timeout)) as r, open(part, "wb") as f:
            expected = int(r.headers.get("Content-Length") or -1)
            got = 0
            while chunk := r.read(CHUNK):
                f.write(chunk)
                got += len(chunk)
        if expected >= 0 and got != expected:
            raise OSError(f"{name} cut short ({got} of {expected} bytes)")
        os.chmod(part, 0o444)
        os.replace(part, out)
    finally:
        if os.path.exists(part):
            os.unlink(part)


def fetch_all(api: str, ticket: str, root: str, slugs: list[str], wait: float, without: str) -> list[str]:
    """Fetch every dataset's files; the slugs whose catalogue could not be had (``without``: what
    then starts without it, for the log)."""
    missing = []
    deadline = time.monotonic() + wait
    for slug in slugs:
        folder = os.path.join(root, slug)
        os.makedirs(folder, exist_ok=True)
        for name in FILES:
            while True:
                try:
                    fetch(api, ticket, slug, name, os.path.join(folder, name), deadline - time.monotonic())
                    break
                except (OSError, urllib.error.URLError) as e:
                    status = getattr(e, "code", None)
                    if (status is not None and 400 <= status < 500) or time.monotonic() > deadline:
                        print(f"vre-catalogue: {slug}/{name}: {e}; {without}", flush=True)
                        missing.append(slug)
                        break
                    time.sleep(1)
            if slug in missing:
                break
        os.chmod(folder, 0o555)
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vre-catalogue")
    ap.add_argument("--root", required=True, help="the scratch folder the session mounts read-only")
    ap.add_argument("--wait", type=float, default=60, help="seconds to keep trying, all datasets together")
    ap.add_argument("--required", action="store_true", help="fail when a catalogue could not be had (batch pods)")
    ap.add_argument("slugs", nargs="*")
    args = ap.parse_args(argv)
    api, ticket = os.environ.get("VRE_API_URL", ""), os.environ.pop("VRE_CATALOG_TICKET", "")
    if not api.startswith("http://") or not ticket:
        print("vre-catalogue: VRE_API_URL (http://...) and VRE_CATALOG_TICKET are required", file=sys.stderr)
        return 2
    without = "the pod does not start" if args.required else "the session starts without it"
    missing = fetch_all(api.rstrip("/"), ticket, args.root, args.slugs, args.wait, without)
    print(f"vre-catalogue: {len(args.slugs) - len(missing)} of {len(args.slugs)} catalogue(s) fetched", flush=True)
    return 1 if args.required and missing else 0


if __name__ == "__main__":
    sys.exit(main())
