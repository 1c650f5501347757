"""What researchers and checkers do with airlock requests: one function per action, used by the
REST API and the CLI alike.

Each function opens its own transactions and records its audit events after they commit, so a
recorded event is always a fact. Long work (copying files) runs between two transactions: the
second one checks that the request did not change meanwhile (compare and set on state, round and
file versions) before it records the copies, so two submissions at once cannot both win.
Refused attempts that matter (an author reviewing or downloading their own request, a refused
submission) are recorded too, as ``outcome=denied``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select

from .. import db as vdb
from ..audit.events import cli_actor, emit, role_of
from ..db import AirlockFile, AirlockRequest, utcnow
from ..errors import NotFound, VREError
from ..plan import PlanRefused
from ..projects import get_project
from ..settings import files_on_host
from . import held
from . import record as rec
from . import review as R
from . import store
from .rules import Rules, file_problems, rules_of

MAX_LIST = 500
MAX_TITLE = 255
#: Files named in one audit event's details (the rest are counted): details stay below 64 KiB.
AUDIT_FILES = 100


class Refused(VREError):
    """A submission or addition was refused; ``files`` and ``problems`` say what to fix (HTTP 400)."""

    def __init__(self, message: str, *, files: list[dict] | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.files = files or []
        self.problems = problems or []


@dataclass(frozen=True)
class Actor:
    """Who acts: an account name; ``checker_scope``: the caller's token carries the review scope
    (the CLI acting ``--as`` someone has it: the database's checker flag still decides)."""

    name: str
    checker_scope: bool = False
    via: str = "api"
    client: str | None = None


def _tx(settings):
    """A transaction; a request changed by someone else meanwhile (its ``rev``) is a WrongState."""
    return vdb.versioned_scope(settings.vre_db_url, lambda: R.WrongState(
        "the request changed at the same moment (another submission or review); look at it again and retry"))


@dataclass
class _Ctx:
    db: object
    req: AirlockRequest
    account: vdb.Account
    caps: set = field(default_factory=set)


def _ctx(db, who: Actor, request_id: int) -> _Ctx:
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
    if account is None or account.disabled:
        raise NotFound(f"there is no airlock request {request_id} you can see")
    req = vdb.get_by_id(db, AirlockRequest, request_id)
    caps = R.capacities(req, account, checker_scope=who.checker_scope) if req is not None else set()
    R.require_visible(req, caps, request_id)
    return _Ctx(db, req, account, caps)


def _as(caps: set) -> str:
    return "author" if "author" in caps else "checker" if "checker" in caps else "member" if "member" in caps else "none"


def _audit(settings, who: Actor, action: str, *, request_id, project: str | None, caps: set, outcome: str = "ok",
           **details) -> None:
    extra = {"via": "cli", "operator": cli_actor()} if who.via == "cli" else {}
    emit(settings, action, actor=who.name, actor_role=role_of(settings, who.name), outcome=outcome,
         target=f"airlock/{request_id}", project=project, client=who.client,
         details={"as": _as(caps), **extra, **details})


def _denied(settings, who: Actor, action: str, ctx: _Ctx, error: VREError) -> None:
    _audit(settings, who, action, request_id=ctx.req.id, project=ctx.req.project.slug, caps=ctx.caps,
           outcome="denied", reason=str(error))


def _files_detail(files) -> dict:
    listed = [{"name": f["name"], "sha256": f["sha256"], "size": f["size"]} for f in files[:AUDIT_FILES]]
    return {"files": listed, "file_count": len(files)}


def _t(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# --- what a caller sees -----------------------------------------------------------------------
def _file_row(req: AirlockRequest, f: AirlockFile, caps: set, status: str) -> dict:
    """A file as the caller may see it (a held job's file: ``held.redact`` until it is released)."""
    is_held = held.is_held(f.path)
    row = {
        "id": f.id, "name": f.name, "path": f.path, "description": f.description, "size": f.size,
        "sha256": f.sha256, "version": f.version, "frozen": bool(f.sha256), "frozen_at": _t(f.frozen_at),
        "status": status, "held": is_held, "withheld": False,
    }
    if is_held and not held.shown(caps, released=req.state == "released" and f.status == "approved"):
        return held.redact(row)
    return row


def to_dict(req: AirlockRequest, account: vdb.Account, caps: set, *, detail: bool = True) -> dict:
    by = R.index(req)
    phase = R.phase(req, by)
    blinded = phase == "independent"
    mine = {}
    if blinded and "checker" in caps:
        for r in req.reviews:
            if r.reviewer_id == account.id:
                mine[(r.file_id, r.file_version)] = R.STATUS_OF[r.decision]
    # in the blinded phase nobody learns what others decided from a file's status
    files = [_file_row(req, f, caps, mine.get((f.id, f.version), "pending") if blinded else f.status)
             for f in req.files]
    data = {
        "id": req.id, "project": req.project.slug, "author": req.author.name, "title": req.title,
        "state": req.state, "phase": phase, "round": req.round, "reviews_required": req.reviews_required,
        "reviews_complete": len(R.completed_reviewers(req, by)),
        "created_at": _t(req.created_at), "submitted_at": _t(req.submitted_at), "updated_at": _t(req.updated_at),
        "released_at": _t(req.released_at), "file_count": len(files),
        "withheld_files": sum(f["withheld"] for f in files),  # counted in file_count, not in total_size
        "total_size": sum(f["size"] or 0 for f in files), "you": sorted(caps), "actions": R.actions(req, caps),
    }
    if not detail:
        return data
    current = {(f.id, f.version) for f in req.files}
    data.update({
        "justification": req.justification, "files": files, "rules": req.rules,
        "reviews": [{"id": r.id, "file": r.file_id, "file_version": r.file_version, "reviewer": r.reviewer.name,
                     "decision": r.decision, "comment": r.comment, "phase": r.phase, "time": _t(r.created_at),
                     "current": (r.file_id, r.file_version) in current}
                    for r in R.visible_reviews(req, account, caps)],
        "history": [{"from": h.from_state, "to": h.to_state, "actor": h.actor, "comment": h.comment,
                     "time": _t(h.at)} for h in req.history],
        "record": bool(req.record),
    })
    return data


def get(settings, who: Actor, request_id: int) -> dict:
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        return to_dict(c.req, c.account, c.caps)


def list_requests(settings, who: Actor, *, project: str | None = None, state: str | None = None,
                  role: str | None = None) -> list[dict]:
    """Requests the caller can see, newest first; ``role``: ``author`` (mine), ``review`` (others'
    requests a checker may review now)."""
    if state is not None and state not in vdb.AIRLOCK_STATES:
        raise VREError(f"state must be one of {', '.join(vdb.AIRLOCK_STATES)}")
    with _tx(settings) as db:
        account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
        if account is None:
            return []
        q = select(AirlockRequest).order_by(AirlockRequest.id.desc()).limit(MAX_LIST)
        if project:
            q = q.join(vdb.Project).where(vdb.Project.slug == project)
        if state:
            q = q.where(AirlockRequest.state == state)
        if role == "author":
            q = q.where(AirlockRequest.author_id == account.id)
        elif not (account.output_checker and who.checker_scope):
            member_of = [m.project_id for m in account.memberships]
            q = q.where((AirlockRequest.author_id == account.id) | AirlockRequest.project_id.in_(member_of))
        out = []
        for req in db.scalars(q):
            caps = R.capacities(req, account, checker_scope=who.checker_scope)
            if not R.can_see(req, caps):
                continue
            if role == "review" and ("author" in caps or "checker" not in caps or req.state not in R.REVIEWABLE):
                continue
            out.append(to_dict(req, account, caps, detail=False))
        return out


def rules_for(settings, who: Actor, project: str) -> dict:
    with _tx(settings) as db:
        p = get_project(db, project)
        account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
        if account is None or not (any(m.account_id == account.id for m in p.members) or account.output_checker):
            raise NotFound(f"unknown project {project!r}")
        return rules_of(p, db).to_dict()


# --- the author ---------------------------------------------------------------------------------
def _items(files) -> list[dict]:
    items = []
    for f in files or []:
        if isinstance(f, str):
            f = {"path": f}
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"].strip():
            raise VREError('each file is {"path": "<path in your session>", "description": "..."}')
        desc = f.get("description") or ""
        if not isinstance(desc, str):
            raise VREError("a file's description must be text")
        items.append({"path": f["path"], "description": desc})
    return items


def _add(db, settings, req: AirlockRequest, author: str, items: list[dict]) -> list[str]:
    """Add files (folders: their files) to an editable request; Refused lists every problem."""
    rules = rules_of(req.project, db)
    try:
        mm = store.mount_map(db, settings, author, req.project.slug)
    except PlanRefused as e:
        raise R.Forbidden(str(e)) from None
    names = {f.name for f in req.files}
    problems, refused, added = [], [], []
    for item in items:
        room = rules.max_files - len(req.files) - len(added)
        if room <= 0:
            problems.append(f"{item['path']}: the request already has {rules.max_files} files, the project's limit")
            continue
        cands, trouble = store.expand(mm, item["path"], item["description"], room)
        problems += trouble
        held_problems = []  # a held job's files are refused together, naming none (vre.airlock.held)
        for c in cands:
            if c.problems:
                if held.is_held(c.path):
                    held_problems += c.problems
                else:
                    refused.append(c.to_dict())
            elif c.name in names:
                if held.is_held(c.path):
                    held_problems.append("a file of the same name is already in the request")
                else:
                    refused.append({**c.to_dict(), "problems": [f"a file named {c.name!r} is already in the "
                                                                 "request; rename one of them"]})
            else:
                names.add(c.name)
                added.append(c)
        if held_problems:
            problems.append(held.refused(item["path"], held_problems))
    if problems or refused:
        raise Refused("some files cannot be added: " + "; ".join(
            problems + [f"{f['path']}: {', '.join(f['problems'])}" for f in refused[:10]]), files=refused,
            problems=problems)
    for c in added:
        req.files.append(AirlockFile(path=c.path, name=c.name, description=c.description, size=c.size,
                                     version=0, status="pending"))
    req.updated_at = utcnow()
    return [c.name for c in added]


def create(settings, who: Actor, project: str, title: str, justification: str = "", files=()) -> dict:
    title = (title or "").strip()
    if not title or len(title) > MAX_TITLE:
        raise VREError(f"give the request a title (1-{MAX_TITLE} characters): what are these results?")
    if not isinstance(justification, str):
        raise VREError("justification must be text")
    items = _items(files)
    with _tx(settings) as db:
        account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
        try:
            store.mount_map(db, settings, who.name, project)  # a member who may work in the project
        except PlanRefused as e:
            raise R.Forbidden(str(e)) from None
        p = get_project(db, project)
        rules = rules_of(p, db)
        req = AirlockRequest(project=p, author=account, title=title, justification=justification.strip(),
                             state="draft", reviews_required=rules.reviews_required, rules={}, round=0)
        db.add(req)
        req.history.append(vdb.AirlockTransition(from_state=None, to_state="draft", actor=who.name, comment=""))
        names = _add(db, settings, req, who.name, items) if items else []
        db.flush()
        caps = {"author", "member"}
        out = to_dict(req, account, caps)
    _audit(settings, who, "airlock.create", request_id=out["id"], project=project, caps=caps, title=title,
           files=names[:AUDIT_FILES], file_count=len(names))
    return out


def _warm(settings, who: Actor, request_id: int, paths=None, *, file_id=None) -> None:
    """Before a transaction that asks claims readers about a request's files (``paths``; by
    default the request's files not frozen yet, or its file ``file_id``): start the readers they
    need (the author's own requests only; nothing is decided here: the transaction checks
    everything again)."""
    if files_on_host(settings):
        return
    with vdb.session_scope(settings.vre_db_url) as db:
        req = vdb.get_by_id(db, AirlockRequest, request_id)
        if req is None or req.author.name != who.name:
            return
        if paths is None and file_id is not None:
            paths = [f.path for f in req.files if f.id == int(file_id)]
        elif paths is None:
            paths = [f.path for f in req.files if not f.sha256]
        try:
            mm = store.mount_map(db, settings, req.author.name, req.project.slug)
        except (PlanRefused, VREError):
            return
    store.warm(mm, paths)


def add_files(settings, who: Actor, request_id: int, files) -> dict:
    items = _items(files)
    if not items:
        raise VREError("name at least one file or folder to add")
    _warm(settings, who, request_id, [item["path"] for item in items])
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "add files to it")
        if c.req.state not in R.EDITABLE:
            raise R.WrongState(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: files can be added while "
                               "it is a draft or changes are requested (or withdraw it and start a new one)")
        names = _add(db, settings, c.req, who.name, items)
        out = to_dict(c.req, c.account, c.caps)
    _audit(settings, who, "airlock.update", request_id=request_id, project=out["project"], caps=c.caps,
           change="add_files", files=names[:AUDIT_FILES], file_count=len(names))
    return out


def _file(req: AirlockRequest, file_id) -> AirlockFile:
    f = next((f for f in req.files if f.id == int(file_id)), None)
    if f is None:
        raise NotFound(f"request {req.id} has no file {file_id}")
    return f


def remove_file(settings, who: Actor, request_id: int, file_id: int) -> dict:
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "remove files")
        if c.req.state not in R.EDITABLE:
            raise R.WrongState(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: files can be removed while "
                               "it is a draft or changes are requested")
        f = _file(c.req, file_id)
        stored, name = f.stored, f.name
        c.req.files.remove(f)
        c.req.updated_at = utcnow()
        db.flush()
        out = to_dict(c.req, c.account, c.caps)
    store.discard(settings, request_id, stored)
    _audit(settings, who, "airlock.update", request_id=request_id, project=out["project"], caps=c.caps,
           change="remove_file", file=name)
    return out


def edit(settings, who: Actor, request_id: int, *, title: str | None = None, justification: str | None = None,
         descriptions: dict | None = None) -> dict:
    """Change the title, justification or file descriptions (draft, or changes requested)."""
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "edit it")
        if c.req.state not in R.EDITABLE:
            raise R.WrongState(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: it can be edited while it "
                               "is a draft or changes are requested")
        if title is not None:
            title = str(title).strip()
            if not title or len(title) > MAX_TITLE:
                raise VREError(f"the title must be 1-{MAX_TITLE} characters")
            c.req.title = title
        if justification is not None:
            c.req.justification = str(justification).strip()
        for fid, text in (descriptions or {}).items():
            _file(c.req, fid).description = str(text)
        c.req.updated_at = utcnow()
        out = to_dict(c.req, c.account, c.caps)
    _audit(settings, who, "airlock.update", request_id=request_id, project=out["project"], caps=c.caps,
           change="edit", fields=[k for k, v in (("title", title), ("justification", justification),
                                                 ("descriptions", descriptions)) if v is not None])
    return out


def _datasets(db, settings) -> list[tuple[str, str, str, str]]:
    """What the check for dataset copies looks in (``store.DatasetIndex.match``)."""
    return [(d.slug, d.path, str(d.indexed_at or d.registered_at), str(settings.catalog_dir / d.slug / "index.sqlite"))
            for d in db.scalars(select(vdb.Dataset).order_by(vdb.Dataset.slug))]


def _freeze_all(settings, request_id: int, todo: list[tuple[int, store.Candidate]], rules: Rules, datasets,
                *, already: int, copy: bool, any_held: bool = False
                ) -> tuple[dict[int, store.Frozen], list[dict], list[str]]:
    """Freeze (or only read through) located files, within the request's size limit; (results by
    file id, refused files, request-level problems). Nothing is left stored when anything is refused.
    ``any_held``: the request holds a held job's files, whose sizes its total would give away."""
    results: dict[int, store.Frozen] = {}
    refused, problems = [], []
    total, over = already, False
    for fid, c in todo:
        if c.problems:
            refused.append({"id": fid, **c.to_dict()})
            continue
        early = file_problems(rules, c.name, c.size)
        if early:  # wrong type or too big by its size: not worth reading
            refused.append({"id": fid, **c.to_dict(), "problems": early})
            continue
        if over or total + (c.size or 0) > rules.max_request_bytes:
            if not over:  # the files after this one are only checked by name and size, never read
                at = "a held file" if held.is_held(c.path) else c.name
                problems.append(f"the files add up to more than {rules.max_request_bytes} bytes, the project's "
                                f"limit per request (reached at {at}); split the request")
            over = True
            continue
        fr = store.freeze(settings, request_id, c, rules, limit=rules.max_file_bytes, copy=copy)
        total += fr.size
        if fr.sha256 and fr.size <= rules.max_file_bytes:  # read whole: say so even beside other problems
            twin, unchecked = None, None
            try:
                twin = store.DATASETS.match(datasets, fr.size, fr.sha256)
            except store.Unchecked as e:
                unchecked, where = e.args
                fr.problems.append(f"cannot be checked against dataset {unchecked} ({where}), which the hub cannot "
                                   "read and whose index has no file hashes: an admin restores its folder, or "
                                   "re-indexes it if it is in a claim or on NFS; then submit again")
            if twin:
                fr.problems.append(f"is byte for byte the dataset file {twin}: dataset files never leave the "
                                   "environment")
            if twin or unchecked:
                store.discard(settings, request_id, fr.stored)
                fr.stored = ""
        if fr.problems:
            refused.append({"id": fid, "path": c.path, "name": c.name, "size": fr.size, "problems": fr.problems})
        results[fid] = fr
    if total > rules.max_request_bytes and not problems:
        added = "more than" if any_held else f"{total} bytes, more than"
        problems.append(f"the files add up to {added} the project's limit of {rules.max_request_bytes} bytes "
                        "per request")
    if (refused or problems) and copy:
        for fr in results.values():
            store.discard(settings, request_id, fr.stored)
    return results, refused, problems


def _prepare(db, settings, c: _Ctx, file_ids=None, paths: dict | None = None):
    """(located files to freeze, rules, datasets, bytes already frozen, whether it holds a held job's
    files) for the author's request."""
    try:
        mm = store.mount_map(db, settings, c.req.author.name, c.req.project.slug)
    except PlanRefused as e:
        raise R.Forbidden(str(e)) from None
    rules = rules_of(c.req.project, db)
    todo = []
    for f in c.req.files:
        if (file_ids is None and not f.sha256) or (file_ids is not None and f.id in file_ids):
            named = (paths or {}).get(f.id) or f.path
            todo.append((f.id, store.locate(mm, named, f.name, f.description)))
    already = sum(f.size or 0 for f in c.req.files if f.sha256 and (file_ids is None or f.id not in file_ids))
    return todo, rules, _datasets(db, settings), already, any(held.is_held(f.path) for f in c.req.files)


def check(settings, who: Actor, request_id: int) -> dict:
    """Every rule violation of the request as it would be submitted now, per file (changes nothing)."""
    _warm(settings, who, request_id)
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "check it")
        todo, rules, datasets, already, any_held = _prepare(db, settings, c)
        frozen = [f for f in c.req.files if f.sha256]
        count, project = len(c.req.files), c.req.project.slug
    results, refused, problems = _freeze_all(settings, request_id, todo, rules, datasets, already=already,
                                             copy=False, any_held=any_held)
    if count == 0:
        problems.append("the request has no files")
    if count > rules.max_files:
        problems.append(f"{count} files: more than the project's limit of {rules.max_files}")
    ok = not (refused or problems)
    bad = {f["id"]: f["problems"] for f in refused}
    files = [{"id": fid, "name": cand.name, "path": cand.path, "frozen": False,
              "size": results[fid].size if fid in results else cand.size, "problems": bad.get(fid, [])}
             for fid, cand in todo]
    files += [{"id": f.id, "name": f.name, "path": f.path, "frozen": True, "size": f.size, "problems": []}
              for f in frozen]
    _audit(settings, who, "airlock.check", request_id=request_id, project=project, caps=c.caps,
           ok=ok, refused=len(refused))
    # only the author checks: a held job's files are counted in, never shown (vre.airlock.held)
    files = [held.redact(f) if held.is_held(f["path"]) else {**f, "held": False, "withheld": False} for f in files]
    problems += held.split(refused)[1]
    return {"ok": ok, "problems": problems, "files": files, "rules": rules.to_dict()}


def submit(settings, who: Actor, request_id: int) -> dict:
    """Freeze the files not yet frozen and submit for review; Refused (nothing changed) lists problems."""
    _warm(settings, who, request_id)
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "submit it")
        if c.req.state not in R.EDITABLE:
            raise R.WrongState(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: only a draft or a request "
                               "returned with changes requested can be submitted")
        todo, rules, datasets, already, any_held = _prepare(db, settings, c)
        expected = (c.req.rev, c.req.state, c.req.round, sorted((f.id, f.version) for f in c.req.files))
        count, project = len(c.req.files), c.req.project.slug
    if count == 0:
        raise Refused("the request has no files: add the results to export first", problems=["no files"])
    if count > rules.max_files:
        raise Refused(f"{count} files: more than the project's limit of {rules.max_files} per request")
    results, refused, problems = _freeze_all(settings, request_id, todo, rules, datasets, already=already,
                                             copy=True, any_held=any_held)
    if refused or problems:
        _audit(settings, who, "airlock.submit", request_id=request_id, project=project, caps={"author"},
               outcome="denied", problems=problems, refused=[{"name": f["name"], "problems": f["problems"]}
                                                             for f in refused[:AUDIT_FILES]])
        refused, withheld = held.split(refused)  # the author learns that held files broke rules, not which
        problems += withheld
        raise Refused("the request was not submitted: " + "; ".join(
            problems + [f"{f['name']}: {', '.join(f['problems'])}" for f in refused[:10]])
            + (f" (and {len(refused) - 10} more files)" if len(refused) > 10 else ""),
            files=refused, problems=problems)
    try:
        with _tx(settings) as db:
            c = _ctx(db, who, request_id)
            now = (c.req.rev, c.req.state, c.req.round, sorted((f.id, f.version) for f in c.req.files))
            if now != expected:
                raise R.WrongState(f"request {request_id} changed while its files were being copied; submit again")
            stamp = utcnow()
            for f in c.req.files:
                if f.id in results:
                    fr = results[f.id]
                    f.stored, f.size, f.sha256, f.frozen_at = fr.stored, fr.size, fr.sha256, stamp
                    f.version += 1
            c.req.rules = rules.to_dict()
            c.req.reviews_required = rules.reviews_required
            c.req.round += 1
            c.req.submitted_at = stamp
            R.transition(c.req, "submitted", who.name)
            R.refresh_status(c.req)
            frozen = [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in c.req.files]
            out = to_dict(c.req, c.account, c.caps)
    except BaseException:
        for fr in results.values():
            store.discard(settings, request_id, fr.stored)
        raise
    _audit(settings, who, "airlock.submit", request_id=request_id, project=project, caps=c.caps,
           round=out["round"], total_size=sum(f["size"] for f in frozen), **_files_detail(frozen))
    return out


def _held_path(named: str) -> bool:
    try:
        return held.is_held(store.session_path(named))
    except ValueError:
        return False  # not a path at all: locating it says why


def update_file(settings, who: Actor, request_id: int, file_id: int, path: str | None = None) -> dict:
    """Freeze a file again (from its path, or a new one): a new version whose reviews start afresh."""
    _warm(settings, who, request_id, [path] if path else None, file_id=file_id)
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "update its files")
        if c.req.state not in R.REVIEWABLE + ("changes_requested",):
            raise R.WrongState(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: files are updated while "
                               "it is submitted, in review or returned with changes requested (a draft is frozen "
                               "at submission)")
        f = _file(c.req, file_id)
        if path and held.is_held(f.path) != _held_path(path):
            # a held file's name is the job's: it stays withheld only while its path is held
            raise VREError("a held job's file is updated from a held job's folder, and any other file from outside "
                           "them: remove the file and add the new one instead")
        paths = {f.id: path} if path else None
        todo, rules, datasets, already, any_held = _prepare(db, settings, c, file_ids={f.id}, paths=paths)
        expected = (c.req.rev, c.req.state, f.version)
        project, old = c.req.project.slug, {"sha256": f.sha256, "version": f.version}
    results, refused, problems = _freeze_all(settings, request_id, todo, rules, datasets, already=already,
                                             copy=True, any_held=any_held)
    if refused or problems:
        refused, withheld = held.split(refused)
        problems += withheld
        raise Refused("the file was not updated: " + "; ".join(
            problems + [f"{x['name']}: {', '.join(x['problems'])}" for x in refused]), files=refused,
            problems=problems)
    fr = results[int(file_id)]
    try:
        with _tx(settings) as db:
            c = _ctx(db, who, request_id)
            f = _file(c.req, file_id)
            if (c.req.rev, c.req.state, f.version) != expected:
                raise R.WrongState(f"request {request_id} changed meanwhile; update the file again")
            before = R.phase(c.req)
            previous = f.stored
            if path:
                f.path = todo[0][1].path
            f.stored, f.size, f.sha256, f.frozen_at = fr.stored, fr.size, fr.sha256, utcnow()
            f.version += 1
            c.req.updated_at = utcnow()
            R.refresh_status(c.req)
            after = R.phase(c.req)
            out = to_dict(c.req, c.account, c.caps)
            name = f.name
    except BaseException:
        store.discard(settings, request_id, fr.stored)
        raise
    store.discard(settings, request_id, previous)
    _audit(settings, who, "airlock.file_update", request_id=request_id, project=project, caps=c.caps,
           file=name, file_id=int(file_id), sha256=fr.sha256, size=fr.size, version=old["version"] + 1,
           previous_sha256=old["sha256"], phase_before=before, phase=after)
    return out


def withdraw(settings, who: Actor, request_id: int, comment: str = "") -> dict:
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        R.require_author(c.req, c.caps, "withdraw it")
        R.transition(c.req, "withdrawn", who.name, comment or "")
        out = to_dict(c.req, c.account, c.caps)
    _audit(settings, who, "airlock.withdraw", request_id=request_id, project=out["project"], caps=c.caps,
           comment=comment or "")
    return out


# --- checkers ------------------------------------------------------------------------------------
def _as_reviewer(settings, who: Actor, c: _Ctx, action: str, what: str) -> None:
    try:
        R.require_reviewer(c.req, c.caps, what)
    except R.Forbidden as e:
        _denied(settings, who, action, c, e)
        raise


def review(settings, who: Actor, request_id: int, decisions: list[dict]) -> dict:
    """Record per-file decisions: ``[{"file": id, "decision": approve|changes|reject, "comment": ...}]``."""
    if not isinstance(decisions, list) or not decisions:
        raise VREError('give decisions: [{"file": <id>, "decision": "approve|changes|reject", "comment": "..."}]')
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        _as_reviewer(settings, who, c, "airlock.review", "review")
        before, state_before = R.phase(c.req), c.req.state
        by_id = {f.id: f for f in c.req.files}
        batch = []
        for d in decisions:
            if not isinstance(d, dict) or "file" not in d:
                raise VREError('each decision needs "file" (an id from the request\'s files) and "decision"')
            try:
                f = by_id[int(d["file"])]
            except (KeyError, TypeError, ValueError):
                raise NotFound(f"request {c.req.id} has no file {d['file']}") from None
            batch.append((f, str(d.get("decision") or ""), str(d.get("comment") or "")))
        made = [{"file": f.name, "file_id": f.id, "sha256": f.sha256, "version": f.version, "decision": r.decision,
                 "phase": r.phase, "comment": r.comment}
                for (f, _, _), r in zip(batch, R.record_decisions(c.req, c.account, batch))]
        after, state = R.phase(c.req), c.req.state
        out = to_dict(c.req, c.account, c.caps)
        project = c.req.project.slug
        completed = set(R.completed_reviewers(c.req))
        reviewers = sorted({rv.reviewer.name for rv in c.req.reviews if rv.reviewer_id in completed})
    if state_before == "submitted" and state == "in_review":
        _audit(settings, who, "airlock.review_start", request_id=request_id, project=project, caps=c.caps)
    for m in made:
        _audit(settings, who, "airlock.review", request_id=request_id, project=project, caps=c.caps, **m)
    if before == "independent" and after == "consolidation":
        _audit(settings, who, "airlock.consolidate", request_id=request_id, project=project, caps=c.caps,
               reviewers=reviewers)
    return out


def _decide(settings, who: Actor, request_id: int, to: str, action: str, what: str, done: str,
            comment: str) -> dict:
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        _as_reviewer(settings, who, c, action, what)
        R.require_consolidation(c.req, done)
        if not (comment or "").strip():
            raise VREError("say why in a comment: the author sees it")
        R.transition(c.req, to, who.name, comment.strip())
        out = to_dict(c.req, c.account, c.caps)
    _audit(settings, who, action, request_id=request_id, project=out["project"], caps=c.caps, comment=comment.strip(),
           files={f["name"]: f["status"] for f in out["files"][:AUDIT_FILES]})
    return out


def return_(settings, who: Actor, request_id: int, comment: str) -> dict:
    """Back to the author with changes requested."""
    return _decide(settings, who, request_id, "changes_requested", "airlock.return", "return", "returned", comment)


def reject(settings, who: Actor, request_id: int, comment: str) -> dict:
    return _decide(settings, who, request_id, "rejected", "airlock.reject", "reject", "rejected", comment)


def release(settings, who: Actor, request_id: int, comment: str = "") -> dict:
    """Approve and release: the approved files become downloadable, the signed record is stored."""
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        _as_reviewer(settings, who, c, "airlock.release", "release")
        R.require_consolidation(c.req, "released")
        problems = R.release_problems(c.req)
        if problems:
            raise R.WrongState("the request cannot be released yet: " + "; ".join(problems))
        R.transition(c.req, "approved", who.name, (comment or "").strip())
        stamp = utcnow()
        text, signature = rec.sign_record(settings.secrets_dir, rec.build(c.req, released_by=who.name,
                                                                           released_at=stamp))
        c.req.record, c.req.record_signature = text, signature
        R.transition(c.req, "released", who.name)
        c.req.released_at = stamp
        released = [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in c.req.files if f.status == "approved"]
        withheld = [f.name for f in c.req.files if f.status != "approved"]
        out = to_dict(c.req, c.account, c.caps)
    project = out["project"]
    _audit(settings, who, "airlock.approve", request_id=request_id, project=project, caps=c.caps,
           comment=(comment or "").strip())
    _audit(settings, who, "airlock.release", request_id=request_id, project=project, caps=c.caps,
           record_sha256=rec.digest(text), withheld=withheld[:AUDIT_FILES], **_files_detail(released))
    return out


@dataclass(frozen=True)
class Outgoing:
    """A stored file on its way out (preview or download)."""

    name: str
    path: object
    size: int
    sha256: str
    file_id: int


def preview(settings, who: Actor, request_id: int, file_id: int) -> Outgoing:
    """A checker opens a frozen file (recorded before it is read: a view that cannot be recorded does
    not happen)."""
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        _as_reviewer(settings, who, c, "airlock.file_view", "preview files of")
        f = _file(c.req, file_id)
        if not f.sha256:
            raise R.WrongState(f"file {f.name!r} is not frozen yet")
        out = Outgoing(f.name, store.stored_path(settings, request_id, f.stored), f.size, f.sha256, f.id)
        project = c.req.project.slug
    _audit(settings, who, "airlock.file_view", request_id=request_id, project=project, caps=c.caps,
           file=out.name, file_id=out.file_id, sha256=out.sha256, size=out.size)
    return out


def download(settings, who: Actor, request_id: int, file_id: int | None = None, *, fmt: str = "zip"):
    """The released files (all, or one) for the author or a project member, recorded before they are
    sent. Returns (files, record text, signature)."""
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        if not R.can_download(c.req, c.caps):
            if c.req.state != "released":
                e = R.Forbidden(f"request {c.req.id} is {c.req.state.replace('_', ' ')}: files can be downloaded once "
                                "it is released" + (" (an author never downloads an unreleased request)"
                                                    if "author" in c.caps else ""))
            else:
                e = R.Forbidden("released files are downloaded by the author and the project's members")
            _denied(settings, who, "airlock.download", c, e)
            raise e
        files = [f for f in c.req.files if f.status == "approved" and f.sha256]
        if file_id is not None:
            f = _file(c.req, file_id)
            if f not in files:
                raise NotFound(f"file {f.name!r} was not released (its status is {f.status})")
            files = [f]
        out = [Outgoing(f.name, store.stored_path(settings, request_id, f.stored), f.size, f.sha256, f.id)
               for f in files]
        text, signature, project = c.req.record, c.req.record_signature, c.req.project.slug
    _audit(settings, who, "airlock.download", request_id=request_id, project=project, caps=c.caps,
           format=fmt if file_id is None else "file",
           **_files_detail([{"name": o.name, "sha256": o.sha256, "size": o.size} for o in out]))
    return out, text, signature


def get_record(settings, who: Actor, request_id: int) -> dict:
    """The signed release record and whether its signature verifies with the audit key."""
    with _tx(settings) as db:
        c = _ctx(db, who, request_id)
        if not c.req.record:
            raise NotFound(f"request {request_id} has no release record (it is {c.req.state.replace('_', ' ')})")
        text, signature = c.req.record, c.req.record_signature
    ok = rec.verify(text, signature, rec.public_key_path(settings.secrets_dir))
    return {"record": rec.loads(text), "text": text, "signature": signature, "verified": ok,
            "sha256": rec.digest(text)}
