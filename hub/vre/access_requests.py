"""Access requests: a researcher asks that one of their projects be granted a dataset; an admin or
one of the dataset's stewards approves (the grant is made by ``projects.grant``, in the same
transaction) or denies with a reason. One function per action, used by the hub pages
(``vre.api.access_pages``) and the CLI (``vre access-request``) alike, so both follow one set of rules:

* only a member of the project may ask, for a dataset the project does not have yet, and only one
  request per (project, dataset) is open at a time (a partial unique index holds it in the database);
* justification and intended use are required and length-limited; the mode asked for is one of
  ``db.GRANT_MODES``;
* admins decide any request, a dataset's stewards (``vre dataset add-steward``) those for it; nobody
  decides their own request, admins included; a decided or withdrawn request is final;
* the requester may withdraw their open request;
* a request outlives its dataset's retirement (``vre dataset remove``, refused while one is open):
  it lists under the slug it kept, marked ``dataset_retired``, and can no longer be decided.

Each action records its audit event after its transaction commits (a recorded event is a fact);
refused decisions that matter (deciding one's own request, deciding without the right) are
recorded as ``outcome=denied``. Raises ``VREError`` subclasses whose message says what to fix.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import db as vdb
from . import projects as P
from .audit.events import cli_actor, emit, role_of
from .db import AccessRequest, utcnow
from .errors import Conflict, NotFound, VREError

#: (least, most) characters of the texts a requester and a decider write.
LIMITS = {"justification": (20, 4000), "intended_use": (10, 2000), "reason": (3, 2000)}
FINAL = ("approved", "denied", "withdrawn")


class Forbidden(VREError):
    """The caller may not do this to this request (HTTP 403)."""


class Decided(VREError):
    """The request is no longer open (HTTP 409)."""


@dataclass(frozen=True)
class Actor:
    """Who acts: an account name. ``operator``: root at the hub's CLI without ``--as``, who acts as an
    admin under their login name (``audit.events.cli_actor``) and need not have an account."""

    name: str
    via: str = "web"
    client: str | None = None
    operator: bool = False

    @classmethod
    def cli(cls, as_user: str | None) -> Actor:
        return cls(as_user, via="cli") if as_user else cls(cli_actor(), via="cli", operator=True)


def _tx(settings):
    return vdb.versioned_scope(settings.vre_db_url, lambda: Decided(
        "the request was decided or withdrawn at the same moment; look at it again"))


def _text(field: str, value: str | None, label: str) -> str:
    least, most = LIMITS[field]
    value = (value or "").strip()
    if len(value) < least:
        raise VREError(f"{label} is required: write at least {least} characters"
                       + (f" (you wrote {len(value)})" if value else ""))
    if len(value) > most:
        raise VREError(f"{label} is too long: at most {most} characters (you wrote {len(value)}); shorten it")
    return value


def _account(db, name: str) -> vdb.Account:
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == name))
    if account is None or account.disabled:
        raise Forbidden(f"there is no active account {name!r}")
    return account


def _get(db, request_id: int) -> AccessRequest:
    req = vdb.get_by_id(db, AccessRequest, request_id)
    if req is None:
        raise NotFound(f"there is no access request {request_id} (see 'vre access-request list')")
    return req


def decider_as(db, who: Actor, req: AccessRequest) -> str | None:
    """As what ``who`` may decide ``req``: ``operator`` (the CLI), ``admin`` (any request),
    ``steward`` (requests for their dataset, unless they are a member of the asking project:
    a data holder does not grant their own project), or None."""
    if who.operator:
        return "operator"
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == who.name))
    if account is None or account.disabled:
        return None
    if account.role == "admin":
        return "admin"
    stewards = req.dataset.stewards if req.dataset is not None else []  # a retired dataset has none
    if any(s.account_id == account.id for s in stewards) and \
            not any(m.account_id == account.id for m in req.project.members):
        return "steward"
    return None


def may_decide(db, who: Actor, req: AccessRequest) -> bool:
    return decider_as(db, who, req) is not None


def decider_of(db, name: str) -> bool:
    """Whether ``name`` may decide any request at all (shows the deciders' part of the page)."""
    account = db.scalar(select(vdb.Account).where(vdb.Account.name == name))
    if account is None or account.disabled:
        return False
    return account.role == "admin" or db.scalar(
        select(vdb.DatasetSteward.id).where(vdb.DatasetSteward.account_id == account.id).limit(1)) is not None


def _t(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def to_dict(req: AccessRequest) -> dict:
    """``dataset``: the slug the request kept (its dataset may have been retired since:
    ``dataset_retired``, and ``dataset_title`` is then empty)."""
    return {"id": req.id, "project": req.project.slug, "project_title": req.project.title,
            "dataset": req.dataset_slug, "dataset_title": req.dataset.title if req.dataset is not None else "",
            "dataset_retired": req.dataset is None, "requester": req.requester.name,
            "mode": req.mode, "justification": req.justification, "intended_use": req.intended_use,
            "state": req.state, "created_at": _t(req.created_at), "decided_at": _t(req.decided_at),
            "decided_by": req.decided_by, "reason": req.reason, "granted_mode": req.granted_mode,
            "granted_expires_at": _t(req.granted_expires_at)}


def _audit(settings, who: Actor, action: str, req: dict, *, outcome: str = "ok", **details) -> None:
    extra = {"via": "cli", "operator": cli_actor()} if who.via == "cli" else {}
    role = "admin" if who.operator else role_of(settings, who.name)
    emit(settings, action, actor=who.name, actor_role=role, outcome=outcome, target=f"access-request/{req['id']}",
         project=req["project"], dataset=req["dataset"], client=who.client,
         details={**extra, "requester": req["requester"], **details})


# --- the requester ------------------------------------------------------------------------------
def create(settings, who: Actor, project: str, dataset: str, *, mode: str, justification: str,
           intended_use: str) -> dict:
    """Ask that ``project`` (the caller's) be granted ``dataset`` in ``mode``."""
    justification = _text("justification", justification, "a justification")
    intended_use = _text("intended_use", intended_use, "the intended use")
    P.validate_grant_mode(mode)
    try:
        with _tx(settings) as db:
            account = _account(db, who.name)
            p, d = P.get_project(db, project or ""), P.get_dataset(db, dataset or "")
            if not any(m.account_id == account.id for m in p.members):
                raise Forbidden(f"you are not a member of project {p.slug!r}: only its members may ask for data for it")
            held = next((g for g in p.grants if g.dataset_id == d.id), None)
            if held is not None:
                raise VREError(f"project {p.slug!r} already has dataset {d.slug!r} ({P.describe_grant(held)}); "
                               "to change its mode or renew it, ask an administrator")
            if _open_for(db, p.id, d.id) is not None:
                raise VREError(f"project {p.slug!r} already has an open request for {d.slug!r}: wait for its "
                               "decision, or withdraw it first")
            req = AccessRequest(project=p, dataset=d, dataset_slug=d.slug, requester=account, mode=mode,
                                justification=justification, intended_use=intended_use, state="open", reason="")
            db.add(req)
            db.flush()
            out = to_dict(req)
    except IntegrityError:  # another request for the pair was opened at the same moment
        raise VREError(f"project {project!r} already has an open request for {dataset!r}") from None
    _audit(settings, who, "access_request.create", out, mode=mode)
    return out


def _open_for(db, project_id: int, dataset_id: int) -> AccessRequest | None:
    return db.scalar(select(AccessRequest).where(AccessRequest.project_id == project_id,
                                                 AccessRequest.dataset_id == dataset_id,
                                                 AccessRequest.state == "open"))


def _require_open(req: AccessRequest) -> None:
    if req.state != "open":
        by = f" by {req.decided_by}" if req.decided_by else ""
        raise Decided(f"access request {req.id} is already {req.state}{by}: a decision is final "
                      "(a new request can be made)")


def withdraw(settings, who: Actor, request_id: int) -> dict:
    """The requester takes back their open request."""
    with _tx(settings) as db:
        req = _get(db, request_id)
        if req.requester.name != who.name:
            raise Forbidden(f"access request {request_id} is not yours: only its requester may withdraw it")
        _require_open(req)
        req.state, req.decided_at, req.decided_by = "withdrawn", utcnow(), who.name
        db.flush()
        out = to_dict(req)
    _audit(settings, who, "access_request.withdraw", out)
    return out


# --- the deciders -------------------------------------------------------------------------------
def _decide(settings, who: Actor, request_id: int, action: str, apply) -> dict:
    """Check the decider's rights on an open request, then ``apply(db, req)``; refusals of rights
    are recorded (denied) before they are raised."""
    refused = None
    with vdb.concurrent_change_is(lambda: Conflict(
            f"access request {request_id}: the project's grants were changed at the same moment by someone "
            "else; reload the page and decide again")), _tx(settings) as db:
        req = _get(db, request_id)
        if req.requester.name == who.name:
            refused = Forbidden(f"access request {request_id} is your own: someone else must decide it")
        elif (role := decider_as(db, who, req)) is None:
            refused = Forbidden(f"you may not decide access request {request_id}: admins and the stewards of "
                                f"dataset {req.dataset_slug!r} decide it, a steward not for a project they are "
                                "a member of")
        if refused is None:
            _require_open(req)
            if req.dataset is None:  # only a request opened as its dataset was being retired
                raise Conflict(f"dataset {req.dataset_slug!r} was retired: access request {request_id} can no "
                               "longer be decided; its requester may withdraw it")
            details = {**apply(db, req), "as": role}
            req.decided_at, req.decided_by = utcnow(), who.name
            db.flush()
        out = to_dict(req)
    if refused is not None:
        _audit(settings, who, action, out, outcome="denied", reason=str(refused))
        raise refused
    _audit(settings, who, action, out, **details)
    return out


def approve(settings, who: Actor, request_id: int, *, mode: str | None = None, expires: str | None = None) -> dict:
    """Approve: the grant is made (``projects.grant``, its rules) in the decision's transaction.
    ``mode``: the one asked for unless given; ``expires``: a date, an ISO time or never (default)."""
    def apply(db, req):
        # what made the request admissible must still hold when it is granted
        if req.requester.disabled or not any(m.account_id == req.requester_id for m in req.project.members):
            raise Conflict(f"{req.requester.name} is no longer an active member of project {req.project.slug!r}, "
                           f"which asked for {req.dataset_slug!r}: deny access request {req.id} instead")
        if req.project.is_expired():
            raise Conflict(f"project {req.project.slug!r} has expired: extend it (vre project set-expiry) or deny "
                           f"access request {req.id}")
        g = P.grant(db, req.project.slug, req.dataset_slug, mode=mode or req.mode, expires=expires or None)
        req.state, req.granted_mode, req.granted_expires_at = "approved", g.mode, g.expires_at
        return {"mode": g.mode, "expires_at": _t(g.expires_at), "requested_mode": req.mode}

    out = _decide(settings, who, request_id, "access_request.approve", apply)
    _audit(settings, who, "project.grant", out, access_request=out["id"], mode=out["granted_mode"],
           expires_at=out["granted_expires_at"])  # as `vre project grant` records it
    return out


def deny(settings, who: Actor, request_id: int, reason: str) -> dict:
    """Deny with a reason the requester reads."""
    reason = _text("reason", reason, "a reason for the denial")

    def apply(db, req):
        req.state, req.reason = "denied", reason
        return {"reason": reason, "requested_mode": req.mode}

    return _decide(settings, who, request_id, "access_request.deny", apply)


# --- who sees what ------------------------------------------------------------------------------
def list_requests(settings, who: Actor | None = None, *, open_only: bool = False, mine: bool = False) -> list[dict]:
    """Requests, newest first. ``who`` None (the CLI operator): all. Otherwise those the caller made
    (``mine``), or those they made or may decide."""
    with vdb.session_scope(settings.vre_db_url) as db:
        q = select(AccessRequest).order_by(AccessRequest.id.desc())
        if open_only:
            q = q.where(AccessRequest.state == "open")
        rows = db.scalars(q).all()
        if who is not None:
            rows = [r for r in rows if r.requester.name == who.name
                    or (not mine and may_decide(db, who, r))]
        return [to_dict(r) for r in rows]


def to_decide(settings, who: Actor) -> list[dict]:
    """Open requests the caller may decide (never their own, nor one whose dataset is gone), oldest first."""
    with vdb.session_scope(settings.vre_db_url) as db:
        rows = db.scalars(select(AccessRequest).where(AccessRequest.state == "open",
                                                      AccessRequest.dataset_id.is_not(None)).order_by(AccessRequest.id))
        return [to_dict(r) for r in rows if r.requester.name != who.name and may_decide(db, who, r)]


# --- stewards -----------------------------------------------------------------------------------
def add_steward(db, dataset_slug: str, user: str) -> vdb.DatasetSteward:
    """Let ``user`` decide access requests for the dataset. Auditors review, they do not decide."""
    from .accounts import get_account

    dataset, account = P.get_dataset(db, dataset_slug), get_account(db, user)
    if account.role == "auditor":
        raise VREError(f"{user!r} is an auditor: auditors review decisions, they do not make them")
    if any(s.account_id == account.id for s in dataset.stewards):
        raise VREError(f"{user!r} is already a steward of {dataset.slug!r}")
    steward = vdb.DatasetSteward(dataset=dataset, account=account)
    db.add(steward)
    db.flush()
    return steward


def remove_steward(db, dataset_slug: str, user: str) -> None:
    from .accounts import get_account

    dataset, account = P.get_dataset(db, dataset_slug), get_account(db, user)
    match = [s for s in dataset.stewards if s.account_id == account.id]
    if not match:
        raise VREError(f"{user!r} is not a steward of {dataset.slug!r}")
    dataset.stewards.remove(match[0])
