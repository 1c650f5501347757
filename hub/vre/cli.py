"""The ``vre`` command: run the hub and provision accounts, datasets and projects.

Every command validates its input; errors print one line saying what to fix and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import db as vdb
from .errors import NotFound, VREError
from .audit.events import emit_cli
from .settings import Settings, SettingsError, load
from .tables import print_table

HUB_CONFIG = Path(__file__).resolve().parent.parent / "jupyterhub_config.py"


def _settings(args) -> Settings:
    return load(args.config)


def _db(settings: Settings):
    vdb.upgrade(settings.vre_db_url)
    return vdb.session_scope(settings.vre_db_url)


# --- hub ------------------------------------------------------------------------------------
def cmd_up(args) -> int:
    """Prepare the state directory and database, provision the demo on first start, run the hub."""
    settings = _settings(args)
    if os.geteuid() != 0:
        raise VREError("'vre up' must run as root: the hub creates sandboxes, cgroups and network namespaces")
    running = running_hub(settings)
    if running:
        raise VREError(f"a hub of this installation already runs (pid {running}, state in {settings.state_dir}); "
                       "stop it first (SIGTERM), or give this one its own VRE_STATE_DIR")
    _prepare_state(settings)
    vdb.upgrade(settings.vre_db_url)
    if settings.demo and not args.no_demo:
        from .demo.provision import provision_demo

        provision_demo(settings)
    config = os.environ.get("VRE_HUB_CONFIG") or str(HUB_CONFIG)
    if not Path(config).exists():
        raise VREError(f"JupyterHub config {config} not found; set VRE_HUB_CONFIG")
    print(f"[vre] hub on {settings.bind_url} (state in {settings.state_dir}, settings from {settings._source})",
          flush=True)
    argv = [str(Path(sys.executable).parent / "jupyterhub"), "-f", config]
    os.chdir(settings.state_dir)
    os.execv(argv[0], argv)
    return 0  # not reached


def running_hub(settings: Settings) -> int | None:
    """The pid of a live hub of this installation (its pid file names a JupyterHub process that
    runs in this state directory, where ``vre up`` starts it), else None."""
    try:
        pid = int((settings.state_dir / "jupyterhub.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ProcessLookupError, ValueError, OSError):
        return None
    if b"jupyterhub" not in cmdline or Path(cwd) != settings.state_dir.resolve():
        return None
    return pid


def _prepare_state(settings: Settings) -> None:
    for d, mode in ((settings.state_dir, 0o711), (settings.projects_dir, 0o711), (settings.catalog_dir, 0o755),
                    (settings.secrets_dir, 0o700), (settings.run_dir, 0o755), (settings.sessions_run_dir, 0o711)):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)


def cmd_down(args) -> int:
    """Stop this installation: its hub (and so its managed services), every session and batch
    worker, the proxy and the access layer, and remove its project islands."""
    import signal

    from .backends import cgroups, netns

    settings = _settings(args)
    hub = _stop_hub(settings)
    stopped = 0
    base = cgroups.SessionCgroup("x", settings.instance)
    parent = base.dirs["pids"].parent
    if parent.is_dir():
        for d in sorted(p for p in parent.iterdir() if p.is_dir()):
            cg = cgroups.SessionCgroup(d.name, settings.instance)
            cg.kill_all(2)
            cg.remove()
            stopped += 1
    for d in set(base.dirs.values()):  # the instance's own (now empty) parent cgroups
        try:
            d.parent.rmdir()
        except OSError:
            pass
    from .access.proxy import is_proxy, stop_layer

    pid_file = settings.state_dir / "proxy.pid"
    if pid_file.exists():
        try:   # only the proxy: after a reboot the file's pid may be anyone's (VREAccessProxy._check_pid)
            pid = int(pid_file.read_text().strip())
            if is_proxy(pid):
                os.kill(pid, signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass
        pid_file.unlink(missing_ok=True)

    stop_layer(settings)
    import asyncio

    if netns.NETNS_DIR.is_dir():
        for ns in netns.NETNS_DIR.iterdir():
            if ns.name.startswith(f"{settings.instance}-"):
                asyncio.run(netns.delete_if_unused(ns.name))
    if settings.backend == "docker":  # session containers, project networks and their firewall rules
        from .backends.docker import remove_instance_containers

        stopped += remove_instance_containers(settings)
    if settings.backend == "kubernetes":  # session pods and their Secrets (project namespaces stay)
        from .backends.kubernetes import KubernetesBackendError, remove_instance_sessions

        try:
            stopped += remove_instance_sessions(settings)
        except KubernetesBackendError as e:
            print(f"warning: session pods not removed: {e}", file=sys.stderr)
    print(f"stopped {'the hub (pid %d), ' % hub if hub else ''}{stopped} session(s), batch workers, the proxy "
          "and the access layer")
    return 0


def _stop_hub(settings: Settings, patience: float = 60) -> int | None:
    """SIGTERM to a live hub of this installation and wait for it to exit (JupyterHub then stops
    its managed services); SIGKILL after ``patience`` seconds (its services die with it)."""
    import signal
    import time

    pid = running_hub(settings)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + patience
    while running_hub(settings) == pid:
        if time.monotonic() > deadline:
            print(f"the hub (pid {pid}) did not stop within {patience:.0f} s of SIGTERM; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    return pid


def cmd_db_upgrade(args) -> int:
    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    print(f"database at head: {settings.vre_db_url.split('@')[-1]}")
    return 0


# --- users ----------------------------------------------------------------------------------
def cmd_user_add(args) -> int:
    """The Users admin page's function (``vre.admin.create_account``): same rules, same audit event."""
    from . import access_requests as AR
    from .admin import create_account

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    said, generated = create_account(settings, AR.Actor.cli(None), args.name, args.role, password=password,
                                     oidc=args.oidc)
    print(said)
    if generated:
        print(f"password (shown once): {generated}")
    return 0


def cmd_user_list(args) -> int:
    from sqlalchemy import select

    with _db(_settings(args)) as db:
        rows = [[a.name, a.role, ", ".join(sorted(m.project.slug for m in a.memberships)),
                 "disabled" if a.disabled else ("locked" if a.locked_until and a.locked_until > vdb.utcnow() else "ok")]
                for a in db.scalars(select(vdb.Account).order_by(vdb.Account.name))]
    print_table(rows, ["user", "role", "projects", "status"])
    return 0


def cmd_user_set_password(args) -> int:
    from .accounts import set_password

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    if password is None:
        import getpass

        password = getpass.getpass(f"new password for {args.name}: ")
    settings = _settings(args)
    with _db(settings) as db:
        set_password(db, args.name, password)
    emit_cli(settings, "user.update", target=f"user/{args.name}", details={"change": "password"})
    print(f"password of {args.name!r} changed")
    return 0


def _change_account(args, change: str) -> int:
    """One admin change to an account: the Users admin page's function (``vre.admin``), so the
    same rules and the same audit event; the operator acts as an admin."""
    from . import access_requests as AR
    from .admin import change_account

    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    print(change_account(settings, AR.Actor.cli(None), args.name, change))
    return 0


def cmd_user_set_role(args) -> int:
    """The Users admin page's function (``vre.admin.set_role``): same rules, same audit event."""
    from . import access_requests as AR
    from .admin import set_role

    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    print(set_role(settings, AR.Actor.cli(None), args.name, args.role))
    return 0


def cmd_user_unlock(args) -> int:
    return _change_account(args, "unlock")


def cmd_user_reset_mfa(args) -> int:
    return _change_account(args, "reset-mfa")


def cmd_user_disable(args) -> int:
    return _change_account(args, "enable" if args.enable else "disable")


# --- datasets -------------------------------------------------------------------------------
def _dataset_fields(args) -> dict:
    """The catalogue fields of ``vre dataset add|edit`` (None: not given)."""
    keywords = None if args.keywords is None else [k.strip() for k in args.keywords.split(",") if k.strip()]
    return dict(title=args.title, description=args.description, publisher=args.publisher,
                access_rights=args.terms, condition=args.condition, interoperability_tier=args.tier,
                keywords=keywords, license=args.license, contact_point=args.contact)


def _dataset_admin(args):
    """The Datasets admin page's functions (``vre.dataset_admin``), so the same rules and the same
    audit events; the operator acts as an admin."""
    from . import access_requests as AR
    from . import dataset_admin

    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    return dataset_admin, settings, AR.Actor.cli(None)


def cmd_dataset_add(args) -> int:
    admin, settings, who = _dataset_admin(args)
    _, report = admin.register(settings, who, args.path, args.slug, _dataset_fields(args), workers=args.workers)
    print(f"registered dataset {args.slug!r}: {report.summary()}")
    _print_report_problems(report)
    return 0


def _print_report_problems(report) -> None:
    if report.errors:
        print(f"warning: {report.errors} file(s) were not readable as DICOM and were left out, e.g.:")
        for path, reason in report.error_examples:
            print(f"  {path}: {reason}")
    if report.clinical_files:
        print(f"clinical files: {', '.join(report.clinical_files[:10])}")


def cmd_dataset_reindex(args) -> int:
    admin, settings, who = _dataset_admin(args)
    report = admin.reindex(settings, who, args.slug, workers=args.workers)
    print(f"re-indexed {args.slug!r}: {report.summary()}")
    _print_report_problems(report)
    return 0


def cmd_dataset_edit(args) -> int:
    admin, settings, who = _dataset_admin(args)
    changed = admin.update(settings, who, args.slug, _dataset_fields(args))
    print(f"catalogue record of {args.slug!r}: " + (f"changed {', '.join(changed)}" if changed else "no change"))
    return 0


def cmd_dataset_list(args) -> int:
    from sqlalchemy import select

    with _db(_settings(args)) as db:
        rows = [[d.slug, d.title, ", ".join(d.catalog.get("modalities", [])), d.catalog.get("num_subjects"),
                 d.catalog.get("num_series"), ", ".join(sorted(g.project.slug for g in d.grants)), d.path]
                for d in db.scalars(select(vdb.Dataset).order_by(vdb.Dataset.slug))]
    print_table(rows, ["dataset", "title", "modalities", "subjects", "series", "granted to", "path"])
    return 0


def cmd_dataset_show(args) -> int:
    from .projects import get_dataset

    with _db(_settings(args)) as db:
        print(json.dumps(get_dataset(db, args.slug).catalog, indent=2, default=str))
    return 0


def cmd_dataset_remove(args) -> int:
    admin, settings, who = _dataset_admin(args)
    admin.remove(settings, who, args.slug)
    print(f"removed dataset {args.slug!r} from the catalogue (its files are untouched)")
    return 0


def cmd_dataset_steward(args) -> int:
    """A dataset's stewards decide its access requests (besides admins)."""
    from . import access_requests as AR

    settings = _settings(args)
    adding = args.ds_cmd == "add-steward"
    with _db(settings) as db:
        (AR.add_steward if adding else AR.remove_steward)(db, args.slug, args.user)
    emit_cli(settings, "dataset.steward_add" if adding else "dataset.steward_remove", dataset=args.slug,
             target=f"user/{args.user}")
    print(f"{args.user!r} {'now decides' if adding else 'no longer decides'} access requests for {args.slug!r}")
    return 0


# --- access requests ------------------------------------------------------------------------
def cmd_access_request(args) -> int:
    """The hub pages' twin: the same functions (``vre.access_requests``), so the same rules."""
    from . import access_requests as AR

    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    who = AR.Actor.cli(args.as_user)
    if args.ar_cmd == "list":
        rows = AR.list_requests(settings, None if who.operator else who, open_only=args.open)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table([[r["id"], r["project"], r["dataset"] + (" (retired)" if r["dataset_retired"] else ""),
                          r["requester"], r["mode"], r["state"], r["granted_mode"] or "",
                          (r["granted_expires_at"] or "")[:16], r["decided_by"] or "", r["reason"][:40]] for r in rows],
                        ["id", "project", "dataset", "requester", "asked", "state", "granted", "until", "by", "reason"])
        return 0
    if args.ar_cmd == "approve":
        r = AR.approve(settings, who, args.id, mode=args.mode, expires=args.expires)
        until = f", until {r['granted_expires_at'][:16]} UTC" if r["granted_expires_at"] else ""
        print(f"approved access request {r['id']}: {r['dataset']!r} granted to {r['project']!r} "
              f"({r['granted_mode']}{until})")
    elif args.ar_cmd == "deny":
        r = AR.deny(settings, who, args.id, args.reason)
        print(f"denied access request {r['id']} ({r['dataset']!r} for {r['project']!r}); {r['requester']} sees the reason")
    elif args.ar_cmd == "withdraw":
        r = AR.withdraw(settings, who, args.id)
        print(f"withdrew access request {r['id']}")
    return 0


# --- projects -------------------------------------------------------------------------------
def cmd_project(args) -> int:
    """``vre project ...``: each change is ``vre.project_admin``'s (the Projects admin page's too)."""
    from . import access_requests as AR
    from . import project_admin as PA
    from . import projects as P

    settings = _settings(args)
    vdb.upgrade(settings.vre_db_url)
    who = AR.Actor.cli(None)
    match args.project_cmd:
        case "create":
            said = PA.create(settings, who, args.slug, args.title, args.description or "", args.expires)
        case "grant":
            said = PA.grant(settings, who, args.project, args.dataset, mode=args.mode, expires=args.expires)
        case "update-grant":
            said = PA.update_grant(settings, who, args.project, args.dataset, mode=args.mode, expires=args.expires)
        case "revoke":
            said = PA.revoke(settings, who, args.project, args.dataset)
        case "add-member":
            said = PA.add_member(settings, who, args.project, args.user)
        case "remove-member":
            said = PA.remove_member(settings, who, args.project, args.user)
        case "set-profile":
            said = PA.set_profile(settings, who, args.project, args.name, cpu=args.cpu, memory=args.memory,
                                  gpus=args.gpus, gpu_shared=args.gpu_shared, description=args.description or "",
                                  node_selector=args.node_selector)
        case "remove-profile":
            said = PA.remove_profile(settings, who, args.project, args.name)
        case "set-quota":
            said = PA.set_quota(settings, who, args.project, jobs=args.jobs, cpu=args.cpu, memory=args.memory,
                                gpus=args.gpus)
        case "set-cell-audit":
            said = PA.set_cell_audit(settings, who, args.project, args.state == "on")
        case "set-downloads":
            said = PA.set_downloads(settings, who, args.project, args.mode)
        case "set-egress-cap":
            said = PA.set_egress_cap(settings, who, args.project, args.cap)
        case "set-expiry":
            said = PA.set_expiry(settings, who, args.project, args.expires)
        case "list":
            from sqlalchemy import select

            with vdb.session_scope(settings.vre_db_url) as db:
                rows = [[p.slug, p.title, len(p.members), ", ".join(P.describe_grant(g) for g in p.grants),
                         ", ".join(pr.name for pr in p.profiles),
                         ("expired" if p.is_expired() else f"{p.expires_at:%Y-%m-%d}") if p.expires_at else "never"]
                        for p in db.scalars(select(vdb.Project).order_by(vdb.Project.slug))]
            print_table(rows, ["project", "title", "members", "datasets", "profiles", "expires"])
            return 0
        case "show":
            with vdb.session_scope(settings.vre_db_url) as db:
                p = P.get_project(db, args.slug)
                print(json.dumps({
                    "slug": p.slug, "title": p.title, "description": p.description,
                    "expires_at": p.expires_at.isoformat() if p.expires_at else None, "expired": p.is_expired(),
                    "audit_cells": p.audit_cells, "downloads": p.downloads, "egress_cap": p.egress_cap,
                    "job_quota": P.job_quota(p),
                    "members": sorted(m.account.name for m in p.members),
                    "datasets": sorted(g.dataset.slug for g in p.grants),
                    "grants": sorted((P.grant_summary(g) for g in p.grants), key=lambda g: g["dataset"]),
                    "profiles": {pr.name: {"cpu": pr.cpu, "mem_mb": pr.mem_mb, "gpus": pr.gpus,
                                           "gpu_shared": pr.gpu_shared} for pr in p.profiles},
                }, indent=2))
            return 0
    print(said)
    return 0


def cmd_jobs(args) -> int:
    """Admins' view of the batch queue (researchers use the Lab panel, ``vre-job`` or the API)."""
    from sqlalchemy import select

    from .jobs import service
    from .plan import PlanRefused

    settings = _settings(args)
    if args.jobs_cmd == "engine":
        from .jobs.engine import main as engine_main

        engine_main()
        return 0
    if args.jobs_cmd == "cancel":  # the Users admin page's function: same rule, same audit event
        from . import access_requests as AR
        from .admin_running import cancel_job

        vdb.upgrade(settings.vre_db_url)
        print(cancel_job(settings, AR.Actor.cli(None), args.id))
        return 0
    with _db(settings) as db:
        if args.jobs_cmd == "list":
            q = select(vdb.Job).join(vdb.Project).order_by(vdb.Job.id.desc()).limit(args.limit)
            if args.project:
                q = q.where(vdb.Project.slug == args.project)
            if args.state:
                q = q.where(vdb.Job.state == args.state)
            rows = [[j.id, j.project.slug, j.account.name, j.kind, j.target, j.state,
                     f"{j.cpu:g}/{j.mem_mb}/{j.gpus}", f"{j.submitted_at:%Y-%m-%d %H:%M:%S}", j.reason[:60]]
                    for j in db.scalars(q)]
            print_table(rows, ["id", "project", "user", "kind", "target", "state", "cpu/MiB/gpu", "submitted",
                               "reason"])
            return 0
        job = vdb.get_by_id(db, vdb.Job, args.id)
        if job is None:
            raise NotFound(f"there is no job {args.id}")
        # read as its author would (on claims: through her reader, while she is a member)
        try:
            folder = service.job_files(db, settings, job, job.account.name)
        except PlanRefused as e:
            raise VREError(f"job {job.id}'s folder is on project {job.project.slug}'s claims, read as its author "
                           f"{job.account.name}, who cannot work in the project now ({e}); read it from a "
                           "member's session") from None
        if args.jobs_cmd == "show":
            print(json.dumps(service.to_dict(settings, job, detail=True, folder=folder), indent=2))
        elif args.jobs_cmd == "log":
            print(service.read_log(settings, job, folder=folder)[0], end="")
    return 0


def cmd_demo(args) -> int:
    from .demo.provision import provision_demo

    settings = _settings(args)
    _prepare_state(settings)
    vdb.upgrade(settings.vre_db_url)
    provision_demo(settings)
    return 0


# --- parser ---------------------------------------------------------------------------------
def _catalogue_options(p, unset, *, tier) -> None:
    """The catalogue fields of ``vre dataset add`` and ``edit`` (but the title), ``unset`` when not given."""
    p.add_argument("--description", default=unset)
    p.add_argument("--publisher", default=unset)
    p.add_argument("--terms", default=unset, help="access rights / terms of use")
    p.add_argument("--condition", default=unset, help="e.g. 'Lung cancer'")
    p.add_argument("--tier", type=tier, default=None, help="EUCAIM interoperability tier (1-3)")
    p.add_argument("--keywords", default=unset, help="comma-separated")
    p.add_argument("--license", default=unset, help="licence of the data (name or URL)")
    p.add_argument("--contact", default=unset, help="contact point: e-mail or URL of the data steward")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre", description="Secure virtual research environment for imaging research")
    parser.add_argument("--config", help="settings file (default: $VRE_CONFIG or /etc/vre/vre.toml if present)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="set up state and database, create the demo on first start, run the hub")
    p.add_argument("--no-demo", action="store_true", help="do not create demo data and accounts")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the hub, all sessions and the proxy").set_defaults(func=cmd_down)
    sub.add_parser("demo", help="create the demo datasets, projects and accounts (once)").set_defaults(func=cmd_demo)
    dbp = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_cmd", required=True)
    dbp.add_parser("upgrade", help="migrate the database to the current schema").set_defaults(func=cmd_db_upgrade)

    users = sub.add_parser("user", help="local accounts").add_subparsers(dest="user_cmd", required=True)
    p = users.add_parser("add", help="create an account (prints a generated password once)")
    p.add_argument("name")
    p.add_argument("--role", default="researcher", help="researcher (default), admin or auditor")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--oidc", action="store_true",
                   help="for someone who logs in through the OpenID Connect provider: no password; their first "
                        "login under this name takes the account (add them to projects before they come)")
    p.set_defaults(func=cmd_user_add)
    users.add_parser("list").set_defaults(func=cmd_user_list)
    p = users.add_parser("set-password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=cmd_user_set_password)
    p = users.add_parser("set-role", help="change an account's role (the hub's rights follow within a minute)")
    p.add_argument("name")
    p.add_argument("role", choices=list(vdb.ROLES))
    p.set_defaults(func=cmd_user_set_role)
    p = users.add_parser("unlock", help="clear a lockout after failed logins")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_unlock)
    p = users.add_parser("reset-mfa", help="forget a lost second factor (TOTP, recovery codes): set up again at next login")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_reset_mfa)
    p = users.add_parser("disable", help="refuse logins and new sessions (--enable to undo)")
    p.add_argument("name")
    p.add_argument("--enable", action="store_true")
    p.set_defaults(func=cmd_user_disable)
    from .airlock.cli import add_user_parser

    add_user_parser(users)

    ds = sub.add_parser("dataset", help="datasets and their catalogue").add_subparsers(dest="ds_cmd", required=True)
    p = ds.add_parser("add", help="register and index a directory of DICOM files")
    p.add_argument("path", nargs="?", default="",
                   help="the folder (on Kubernetes with datasets in claims: left out, the claim dataset-<slug>)")
    p.add_argument("--slug", required=True, help="short name: /data/<slug> in sessions")
    p.add_argument("--title", required=True)
    _catalogue_options(p, "", tier=int)
    p.add_argument("--workers", type=int, default=None, help="index processes (default: all cores)")
    p.set_defaults(func=cmd_dataset_add)
    p = ds.add_parser("reindex", help="re-read changed files")
    p.add_argument("slug")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_dataset_reindex)
    p = ds.add_parser("edit", help="change catalogue fields (those given; '' clears one)")
    p.add_argument("slug")
    p.add_argument("--title", default=None)
    _catalogue_options(p, None, tier=str)
    p.set_defaults(func=cmd_dataset_edit)
    ds.add_parser("list").set_defaults(func=cmd_dataset_list)
    p = ds.add_parser("show", help="print the catalogue record")
    p.add_argument("slug")
    p.set_defaults(func=cmd_dataset_show)
    p = ds.add_parser("remove", help="unregister (files untouched)")
    p.add_argument("slug")
    p.set_defaults(func=cmd_dataset_remove)
    for name, text in (("add-steward", "let USER decide access requests for the dataset (besides admins)"),
                       ("remove-steward", "stop USER deciding the dataset's access requests")):
        p = ds.add_parser(name, help=text)
        p.add_argument("slug")
        p.add_argument("user")
        p.set_defaults(func=cmd_dataset_steward)

    ar = sub.add_parser(
        "access-request", help="researchers' requests for datasets: list, approve, deny",
        description="Access requests, as on the hub's access-requests page and with its rules: admins and "
                    "a dataset's stewards decide, nobody decides their own request, a decision is final. "
                    "Without --as the operator acts as an admin under their login name.")
    ar.set_defaults(func=cmd_access_request)
    arc = ar.add_subparsers(dest="ar_cmd", required=True)

    def ar_cmd(name, help, *, rid=True):
        p = arc.add_parser(name, help=help)
        if rid:
            p.add_argument("id", type=int)
        p.add_argument("--as", dest="as_user", metavar="USER", help="act as this account, with its rights")
        return p

    p = ar_cmd("list", "requests, newest first (with --as: those USER made or may decide)", rid=False)
    p.add_argument("--open", action="store_true", help="only those waiting for a decision")
    p.add_argument("--json", action="store_true")
    p = ar_cmd("approve", "approve: grants the dataset to the project (the grant's rules apply)")
    p.add_argument("--mode", choices=list(vdb.GRANT_MODES), help="default: the mode asked for")
    p.add_argument("--expires", help="the grant's expiry: 2027-06-30 (through that day, UTC), an ISO time "
                                     "or never (default)")
    p = ar_cmd("deny", "deny, with the reason the requester reads")
    p.add_argument("--reason", required=True)
    ar_cmd("withdraw", "withdraw an open request (its requester only: --as USER)")

    pr = sub.add_parser("project", help="projects, members, grants, profiles, expiry")
    pj = pr.add_subparsers(dest="project_cmd", required=True)
    p = pj.add_parser("create")
    p.add_argument("slug")
    p.add_argument("--title", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--expires", default=None, help="date (valid through that day, UTC), ISO time or 'never'")
    for name, a, b in (("revoke", "project", "dataset"), ("add-member", "project", "user"),
                       ("remove-member", "project", "user")):
        p = pj.add_parser(name)
        p.add_argument(a)
        p.add_argument(b)
    modes = "interactive (sessions and batch jobs) or batch-only (held batch jobs only; sessions see the catalogue record)"
    until = "date (valid through that day, UTC), ISO time or 'never'; a past moment is refused"
    p = pj.add_parser("grant", help="grant a dataset to a project (change an existing grant with update-grant)")
    p.add_argument("project")
    p.add_argument("dataset")
    p.add_argument("--mode", default="interactive", help=f"{modes}; default interactive")
    p.add_argument("--expires", default=None, help=f"the grant's own expiry: {until}")
    p = pj.add_parser("update-grant", help="change an existing grant's mode and/or expiry")
    p.add_argument("project")
    p.add_argument("dataset")
    p.add_argument("--mode", default=None, help=modes)
    p.add_argument("--expires", default=None, help=until)
    p = pj.add_parser("set-profile", help="add or change a resource profile")
    p.add_argument("project")
    p.add_argument("name")
    p.add_argument("--cpu", type=float, required=True)
    p.add_argument("--memory", required=True, help="e.g. 4G")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--gpu-shared", action="store_true", help="its GPUs may be shared with other sharing holders")
    p.add_argument("--node-selector", action="append", metavar="LABEL=VALUE",
                   help="Kubernetes: a node label its sessions must land on (repeatable), e.g. "
                        "nvidia.com/gpu.product=NVIDIA-H200; the other backends run on one host")
    p.add_argument("--description", default="")
    p = pj.add_parser("set-quota", help="batch queue quota: jobs at once and their total CPUs, memory, GPUs")
    p.add_argument("project")
    p.add_argument("--jobs", type=int, help="jobs running at once")
    p.add_argument("--cpu", type=float, help="CPUs of all running jobs together")
    p.add_argument("--memory", help="memory of all running jobs together, e.g. 16G")
    p.add_argument("--gpus", type=int, help="GPUs of all running jobs together")
    p = pj.add_parser("remove-profile")
    p.add_argument("project")
    p.add_argument("name")
    p = pj.add_parser("set-cell-audit", help="record the code of every executed cell (off by default)")
    p.add_argument("project")
    p.add_argument("state", choices=["on", "off"])
    p = pj.add_parser("set-downloads", help="what may leave through the browser as raw files: none (default: "
                      "the airlock is the way out), results (~/results, ~/project/results), all (home and workspace; "
                      "never dataset files or DICOM)")
    p.add_argument("project")
    p.add_argument("mode", choices=["none", "results", "all"])
    p = pj.add_parser("set-egress-cap", help="bytes a member's sessions may send to the browser per day, "
                      "e.g. 2G; none: no cap (egress is always counted)")
    p.add_argument("project")
    p.add_argument("cap")
    p = pj.add_parser("set-expiry")
    p.add_argument("project")
    p.add_argument("expires")
    pj.add_parser("list")
    p = pj.add_parser("show")
    p.add_argument("slug")
    pr.set_defaults(func=cmd_project)
    from .airlock.cli import add_project_parser

    add_project_parser(pj)

    jobs = sub.add_parser("jobs", help="the batch queue (admins)")
    jobs.set_defaults(func=cmd_jobs)
    jb = jobs.add_subparsers(dest="jobs_cmd", required=True)
    p = jb.add_parser("list", help="jobs, newest first")
    p.add_argument("--project")
    p.add_argument("--state", choices=list(vdb.JOB_STATES))
    p.add_argument("--limit", type=int, default=50)
    p = jb.add_parser("show", help="one job as JSON")
    p.add_argument("id", type=int)
    p = jb.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("id", type=int)
    p = jb.add_parser("log", help="print a job's log")
    p.add_argument("id", type=int)
    jb.add_parser("engine", help="run the job engine in the foreground (the hub normally runs it)")

    from .audit.cli import add_parser as add_audit_parser

    add_audit_parser(sub)
    from .airlock.cli import add_parser as add_airlock_parser

    add_airlock_parser(sub)
    from .images import add_cli as add_images_cli

    add_images_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (VREError, SettingsError) as e:
        print(f"vre: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"vre: error: permission denied: {e.filename or e}; run as root", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
