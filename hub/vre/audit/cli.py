"""``vre audit query | export | verify | checkpoint``.

Hooked into the main parser by ``vre.cli.build_parser`` with one call::

    from .audit.cli import add_parser as add_audit_parser; add_audit_parser(sub)

Exports and verifications are themselves audited (``audit.export``, ``audit.verify``), attributed
to the login behind sudo (else the effective user). ``verify`` exits 0 when the chain is intact
and 1 when it found tampering; bad input exits 2 like every ``vre`` command.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

from .. import db as vdb
from ..errors import VREError
from ..settings import load
from ..tables import print_table
from . import open_store
from .events import emit_cli
from .schema import ACTIONS, OUTCOMES, SOURCES, AuditError

_FILTERS = ("user", "project", "dataset", "action", "outcome", "session", "source", "since", "until", "text")


def _open(args):
    settings = load(args.config)
    vdb.upgrade(settings.vre_db_url)
    try:
        return open_store(settings)
    except AuditError as e:
        raise VREError(str(e)) from None


def _when(value: str | None, *, end_of_day: bool, what: str) -> dt.datetime | None:
    """ISO date (``--until`` a date: through the end of that day) or ISO date-time (naive = UTC)."""
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            d = dt.date.fromisoformat(text)
            when = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
            return when + dt.timedelta(days=1) if end_of_day else when
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise VREError(f"--{what} {value!r} is not an ISO date (2026-11-22) or date-time (2026-11-22T10:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _filters(args) -> dict:
    f = {name: getattr(args, name) for name in _FILTERS}
    f["since"] = _when(args.since, end_of_day=False, what="since")
    f["until"] = _when(args.until, end_of_day=True, what="until")
    return {k: v for k, v in f.items() if v is not None}


def _record(args, action: str, outcome: str = "ok", **details) -> None:
    emit_cli(load(args.config), action, outcome=outcome, details=details)


def _short(value, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("\n", " ").replace("\t", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_query(args) -> int:
    store = _open(args)
    filters = _filters(args)
    try:
        rows = store.query(**filters, limit=args.limit, offset=args.offset, newest_first=args.newest_first)
        total = store.count(**filters) if len(rows) == args.limit else None
    except AuditError as e:
        raise VREError(str(e)) from None
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print_table([[r["seq"], r["time"][:19].replace("T", " "), r["actor"], r["actor_role"], r["action"],
                   r["outcome"], _short(r["target"], 40), r["project"], r["dataset"], r["session"], r["client"],
                   r["source"] or "(v1)", _short(r["details"], 50) if r["details"] else ""] for r in rows],
                 ["seq", "time (UTC)", "actor", "role", "action", "outcome", "target", "project", "dataset",
                  "session", "client", "source", "details"])
    if total is not None and total > args.offset + len(rows):
        print(f"({total - args.offset - len(rows)} more; use --offset {args.offset + len(rows)} or --limit)")
    elif not rows:
        print("no matching events")
    return 0


def cmd_export(args) -> int:
    store = _open(args)
    filters = _filters(args)
    extra = {"limit": args.limit} if args.limit else {}
    try:
        if args.output in (None, "-"):
            n = store.export(args.format, sys.stdout, **filters, **extra)
            sys.stdout.flush()
        else:
            tmp = f"{args.output}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # audit data: owner only
            with open(fd, "w", newline="", encoding="utf-8") as out:
                n = store.export(args.format, out, **filters, **extra)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, args.output)
    except AuditError as e:
        raise VREError(str(e)) from None
    except OSError as e:
        raise VREError(f"cannot write {args.output}: {e.strerror}") from None
    _record(args, "audit.export", format=args.format, rows=n, output=args.output or "-",
            filters={k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in filters.items()})
    if args.output not in (None, "-"):
        print(f"exported {n} event(s) as {args.format} to {args.output}")
    return 0


def cmd_verify(args) -> int:
    store = _open(args)
    try:
        report = store.verify(public_key=args.public_key, extra_checkpoints=args.checkpoints or ())
    except AuditError as e:
        raise VREError(str(e)) from None
    _record(args, "audit.verify", outcome="ok" if report.ok else "error", intact=report.ok,
            length=report.length, problem=report.problem, seq=report.seq)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.detail)
        for note in report.notes:
            print(f"note: {note}")
    return 0 if report.ok else 1


def cmd_checkpoint(args) -> int:
    store = _open(args)
    cp = store.checkpoint()
    if cp is None:
        print("nothing new since the last checkpoint")
    else:
        print(f"signed checkpoint at seq {cp['seq']} ({cp['time']}), hash {cp['hash']}")
    return 0


def _add_filters(p) -> None:
    p.add_argument("--user", help="actor (user name, service:<name> or system)")
    p.add_argument("--project")
    p.add_argument("--dataset")
    p.add_argument("--action", help="an action (auth.login) or a prefix ending in '.' (session.)")
    p.add_argument("--outcome", choices=OUTCOMES)
    p.add_argument("--session")
    p.add_argument("--source", choices=SOURCES, help="who reported it (session: the researcher's own session)")
    p.add_argument("--since", help="ISO date or date-time, inclusive (UTC unless a zone is given)")
    p.add_argument("--until", help="ISO date (through that day) or date-time, exclusive")
    p.add_argument("--text", help="case-insensitive text in any field or detail")


def cmd_egress(args) -> int:
    from .egress import query

    settings = load(args.config)
    vdb.upgrade(settings.vre_db_url)
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is not None:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise VREError(f"--{name} {value!r} is not an ISO date (2026-11-22)") from None
    rows = query(settings, since=args.since, until=args.until, user=args.user, project=args.project,
                 session=args.session)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table([[r["day"], r["user"], r["project"], r["session"], r["bytes"], r["requests"],
                      ", ".join(f"{k} {v}" for k, v in sorted(r["classes"].items()))] for r in rows],
                    ["day", "user", "project", "session", "bytes", "requests", "by class"])
    return 0


def add_parser(subparsers) -> None:
    """Add the ``audit`` command group to the ``vre`` parser's subparsers."""
    audit = subparsers.add_parser("audit", help="the tamper-evident audit trail: query, export, verify",
                                  description=f"Actions: {', '.join(ACTIONS)}")
    sub = audit.add_subparsers(dest="audit_cmd", required=True)

    p = sub.add_parser("query", help="show matching events (oldest first)")
    _add_filters(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many events (default 100)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--newest-first", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON array of records")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="export matching events for a SIEM (JSON Lines or CSV)")
    _add_filters(p)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--output", "-o", help="file to write (mode 0600); default: standard output")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="walk the hash chain and check the signed checkpoints "
                                      "(exit 0: intact, 1: tampering found)")
    p.add_argument("--public-key", help="check signatures with this public key (a copy kept off the host)")
    p.add_argument("--checkpoints", action="append", metavar="FILE",
                   help="also trust the checkpoints in this JSON Lines file (e.g. a SIEM copy); repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("egress", help="bytes each session sent to the browser, per day (the access layer's meter)")
    for name in ("user", "project", "session"):
        p.add_argument(f"--{name}")
    p.add_argument("--since", help="first day, e.g. 2026-11-22")
    p.add_argument("--until", help="last day (included)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_egress)

    p = sub.add_parser("checkpoint", help="sign the current head of the chain now")
    p.set_defaults(func=cmd_checkpoint)
