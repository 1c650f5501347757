"""``vre-job``: the batch queue from a session's terminal.

    vre-job submit notebook.ipynb -p alpha=0.5 --cpu 2     vre-job list
    vre-job submit train.py --args a b --gpus 1            vre-job log 12 [--follow]
    vre-job status 12     vre-job cancel 12     vre-job rerun 12     vre-job wait 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import FINAL, Job, JobError, _call, list_jobs, submit


def _params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise JobError(f"parameter {item!r}: write name=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw  # a bare word is a string
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vre-job", description="Submit and follow batch jobs of this project.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="queue a notebook (.ipynb) or a Python script from the workspace")
    s.add_argument("path")
    s.add_argument("-p", "--param", action="append", default=[], help="notebook parameter name=value (JSON value)")
    s.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="script arguments (last option)")
    for flag, kind in (("--cpu", float), ("--mem-mb", int), ("--gpus", int), ("--max-runtime", int)):
        s.add_argument(flag, type=kind)
    s.add_argument("--profile")
    s.add_argument("--name", default="")
    s.add_argument("--held", action="store_true",
                   help="a held job: batch-only datasets too; its log and outputs leave only through the airlock")
    sub.add_parser("list", help="the project's jobs, newest first")
    for name in ("status", "cancel", "rerun", "wait"):
        sub.add_parser(name).add_argument("id", type=int)
    lg = sub.add_parser("log")
    lg.add_argument("id", type=int)
    lg.add_argument("-f", "--follow", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "submit":
            kind = "notebook" if a.path.endswith(".ipynb") else "script"
            params = _params(a.param) if kind == "notebook" else {"args": a.args}
            job = submit(kind, os.path.abspath(a.path), params=params, cpu=a.cpu, mem_mb=a.mem_mb, gpus=a.gpus,
                         max_runtime=a.max_runtime, profile=a.profile, name=a.name, held=a.held)
            if a.held:
                print(f"job {job.id} queued, held: its outputs stay on the hub; to export them, add "
                      f"{job.data['outdir']} to an airlock request")
            else:
                print(f"job {job.id} queued; outputs will be in {job.data['outdir']}")
        elif a.cmd == "list":
            for job in list_jobs():
                d = job.data
                where = f"#{d['position']} in queue" if d["position"] else (d["reason"] or "")
                print(f"{d['id']:>5}  {d['state']:<10} {d['user']:<12} {d['kind']:<9} {d['target']}  {where}")
        elif a.cmd == "status":
            print(json.dumps(_call("GET", f"/{a.id}"), indent=2))
        elif a.cmd == "cancel":
            print(Job(_call("POST", f"/{a.id}/cancel")).data["state"])
        elif a.cmd == "rerun":
            print(f"job {Job(_call('POST', f'/{a.id}/rerun')).id} queued")
        elif a.cmd == "wait":
            job = Job(_call("GET", f"/{a.id}")).wait()
            print(job.data["state"], job.data["reason"])
            return 0 if job.data["state"] == "succeeded" else 1
        elif a.cmd == "log":
            offset = 0
            while True:
                chunk = _call("GET", f"/{a.id}/log?offset={offset}")
                sys.stdout.write(chunk["text"])
                sys.stdout.flush()
                offset = chunk["offset"]
                if not a.follow or chunk["state"] in FINAL:
                    break
                time.sleep(1)
    except JobError as e:
        print(f"vre-job: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
