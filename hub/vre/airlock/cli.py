"""``vre airlock``: the airlock for admins, tests and scripts.

Researchers and checkers act through the REST API as themselves. The CLI runs as root on the hub
host; ``--as USER`` acts as that account with exactly the checks the API applies (an author still
cannot review their own request; the account's checker flag decides who reviews), and each event
records the account as actor with ``via: cli`` and the operator. Without ``--as``, ``list``,
``show`` and ``verify`` give the admin's view of every request.
"""

from __future__ import annotations

import json
import sys

from sqlalchemy import select

from .. import db as vdb
from ..errors import NotFound, VREError
from ..settings import load
from ..tables import print_table


def _settings(args):
    settings = load(args.config)
    vdb.upgrade(settings.vre_db_url)
    return settings


def _who(args, required: bool = True):
    from .requests import Actor

    if not args.as_user:
        if required:
            raise VREError("say who acts: --as USER (the CLI acts as an account, with that account's rights)")
        return None
    return Actor(args.as_user, checker_scope=True, via="cli")


def _print(data, args) -> None:
    print(json.dumps(data, indent=2))


def _admin_view(settings, request_id: int) -> dict:
    """Everything about a request, all reviews included (root on the hub host)."""
    from .requests import to_dict

    with vdb.session_scope(settings.vre_db_url) as db:
        req = vdb.get_by_id(db, vdb.AirlockRequest, request_id)
        if req is None:
            raise NotFound(f"there is no airlock request {request_id}")
        admin = vdb.Account(id=-1, name="(admin)", output_checker=True)
        data = to_dict(req, admin, {"checker"})
        data["reviews"] = [{"id": r.id, "file": r.file_id, "file_version": r.file_version, "reviewer": r.reviewer.name,
                            "decision": r.decision, "comment": r.comment, "phase": r.phase,
                            "time": r.created_at.isoformat()} for r in req.reviews]
        data["files"] = [{**f, "status": orig.status} for f, orig in zip(data["files"], req.files)]
        data["actions"] = []
        data["you"] = ["admin"]
        return data


def cmd_airlock(args) -> int:
    from . import requests as ops

    settings = _settings(args)
    c = args.airlock_cmd
    if c == "list":
        who = _who(args, required=False)
        if who:
            rows = ops.list_requests(settings, who, project=args.project, state=args.state)
        else:
            with vdb.session_scope(settings.vre_db_url) as db:
                q = select(vdb.AirlockRequest).order_by(vdb.AirlockRequest.id.desc()).limit(args.limit)
                if args.state:
                    q = q.where(vdb.AirlockRequest.state == args.state)
                rows = [{"id": r.id, "project": r.project.slug, "author": r.author.name, "state": r.state,
                         "file_count": len(r.files), "title": r.title,
                         "updated_at": r.updated_at.isoformat()} for r in db.scalars(q)
                        if not args.project or r.project.slug == args.project]
        if args.json:
            _print(rows, args)
        else:
            print_table([[r["id"], r["project"], r["author"], r["state"], r["file_count"], r["title"][:50]]
                         for r in rows], ["id", "project", "author", "state", "files", "title"])
        return 0
    if c == "show":
        who = _who(args, required=False)
        _print(ops.get(settings, who, args.id) if who else _admin_view(settings, args.id), args)
        return 0
    if c == "verify":
        from . import record as rec

        with vdb.session_scope(settings.vre_db_url) as db:
            req = vdb.get_by_id(db, vdb.AirlockRequest, args.id)
            if req is None or not req.record:
                raise NotFound(f"request {args.id} has no release record")
            text, sig = req.record, req.record_signature
        key = args.public_key or rec.public_key_path(settings.secrets_dir)
        ok = rec.verify(text, sig, key)
        print(f"release record of request {args.id}: {'signature valid' if ok else 'SIGNATURE INVALID'} "
              f"(sha256 {rec.digest(text)}, key {key})")
        return 0 if ok else 1
    who = _who(args)
    match c:
        case "create":
            files = [{"path": p, "description": args.description or ""} for p in args.paths]
            out = ops.create(settings, who, args.project, args.title, args.justification or "", files)
        case "add":
            out = ops.add_files(settings, who, args.id, [{"path": p, "description": args.description or ""}
                                                         for p in args.paths])
        case "check":
            out = ops.check(settings, who, args.id)
        case "submit":
            out = ops.submit(settings, who, args.id)
        case "withdraw":
            out = ops.withdraw(settings, who, args.id, args.comment or "")
        case "update":
            out = ops.update_file(settings, who, args.id, args.file, args.path)
        case "review":
            current = ops.get(settings, who, args.id)
            ids = args.file or [f["id"] for f in current["files"]]
            out = ops.review(settings, who, args.id, [{"file": i, "decision": args.decision,
                                                       "comment": args.comment or ""} for i in ids])
        case "release":
            out = ops.release(settings, who, args.id, args.comment or "")
        case "return":
            out = ops.return_(settings, who, args.id, args.comment or "")
        case "reject":
            out = ops.reject(settings, who, args.id, args.comment or "")
        case "download":
            return _download(settings, who, args)
        case _:
            raise VREError(f"unknown airlock command {c!r}")
    _print(out, args)
    return 0


def _download(settings, who, args) -> int:
    import os
    import shutil

    from . import requests as ops
    from .store import read_chunks, write_zip

    files, record, signature = ops.download(settings, who, args.id, args.file, fmt="file" if args.file else "zip")
    target = args.output or (files[0].name.rsplit("/", 1)[-1] if args.file else f"airlock-{args.id}.zip")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        if args.file:
            for chunk in read_chunks(files[0].path, files[0].sha256):
                f.write(chunk)
        else:
            write_zip(f, files, record, signature)
    if args.owner:
        shutil.chown(target, args.owner)
    print(f"wrote {target}: {len(files)} file(s)" + ("" if args.file else ", SHA256SUMS and the signed release record"))
    for o in files:
        print(f"  {o.sha256}  {o.name}")
    return 0


def add_parser(subparsers) -> None:
    from ..db import AIRLOCK_STATES

    al = subparsers.add_parser("airlock", help="reviewed export of results (admins, tests, scripts)",
                               description="The airlock. --as USER acts as that account with its rights.")
    al.set_defaults(func=cmd_airlock)
    sub = al.add_subparsers(dest="airlock_cmd", required=True)

    def cmd(name, help, *, rid=True):
        p = sub.add_parser(name, help=help)
        if rid:
            p.add_argument("id", type=int)
        p.add_argument("--as", dest="as_user", metavar="USER", help="act as this account")
        return p

    p = cmd("list", "requests, newest first (without --as: all of them)", rid=False)
    p.add_argument("--project")
    p.add_argument("--state", choices=list(AIRLOCK_STATES))
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")
    cmd("show", "one request as JSON (without --as: everything, all reviews included)")
    p = cmd("create", "a draft request of files or folders (session paths, or relative to the home)", rid=False)
    p.add_argument("--project", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--justification", default="")
    p.add_argument("--description", default="", help="description of every file named here")
    p.add_argument("paths", nargs="*")
    p = cmd("add", "add files or folders to a draft")
    p.add_argument("--description", default="")
    p.add_argument("paths", nargs="+")
    cmd("check", "list rule violations per file (changes nothing)")
    cmd("submit", "freeze the files and submit for review")
    p = cmd("update", "freeze one file again (its reviews start afresh)")
    p.add_argument("--file", type=int, required=True, help="the file's id")
    p.add_argument("--path", help="a new session path for it")
    p = cmd("review", "decide on files (default: every file)")
    p.add_argument("--decision", required=True, choices=["approve", "changes", "reject"])
    p.add_argument("--file", type=int, action="append", help="a file id (repeatable; default: all)")
    p.add_argument("--comment", default="")
    for name, text in (("release", "approve and release (consolidation phase)"),
                       ("return", "return to the author with changes requested"),
                       ("reject", "reject the request"), ("withdraw", "withdraw (the author)")):
        p = cmd(name, text)
        p.add_argument("--comment", default="")
    p = cmd("download", "write the released files (zip with SHA256SUMS and the signed record, or one file)")
    p.add_argument("--file", type=int, help="one file's id instead of the zip")
    p.add_argument("-o", "--output", help="where to write (default: airlock-<id>.zip in the current directory)")
    p.add_argument("--owner", help="give the written file to this host user")
    p = cmd("verify", "check the release record's signature with the audit key")
    p.add_argument("--public-key", help="the audit public key (a copy kept off the host)")


def cmd_set_checker(args) -> int:
    """``vre user set-checker NAME on|off``: the Users admin page's function (``vre.admin.set_role``)."""
    from .. import access_requests as AR
    from ..admin import set_role

    settings = _settings(args)
    print(set_role(settings, AR.Actor.cli(None), args.name, checker=args.state == "on"))
    return 0


def cmd_set_rules(args) -> int:
    """``vre project set-airlock-rules PROJECT ...``: ``vre.project_admin``'s change (the Projects
    admin page sets the reviewer count with it)."""
    from ..access_requests import Actor
    from ..project_admin import set_airlock_rules

    settings = _settings(args)
    rules = set_airlock_rules(settings, Actor.cli(None), args.project, extensions=args.extensions,
                              max_file=args.max_file, max_request=args.max_request, max_files=args.max_files,
                              max_csv_rows=args.max_csv_rows, reviews=args.reviews)
    print(json.dumps({"project": args.project, **rules}, indent=2))
    return 0


def add_user_parser(users) -> None:
    p = users.add_parser("set-checker", help="make an account an output checker of the airlock (on) or not (off)")
    p.add_argument("name")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(func=cmd_set_checker)


def add_project_parser(pj) -> None:
    p = pj.add_parser("set-airlock-rules", help="the project's airlock rules (what is not given stays)")
    p.add_argument("project")
    p.add_argument("--extensions", help="allowed file types, e.g. csv,png,json,ipynb")
    p.add_argument("--max-file", help="largest file, e.g. 50M")
    p.add_argument("--max-request", help="largest request in all, e.g. 200M")
    p.add_argument("--max-files", type=int, help="most files per request")
    p.add_argument("--max-csv-rows", type=int, help="most rows per CSV/TSV table")
    p.add_argument("--reviews", type=int, help="independent reviews per request (at least 1; default 2)")
    p.set_defaults(func=cmd_set_rules)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: vre airlock ...")
