"""The airlock's state machine, who may see and do what, and the two review phases.

States (``vre.db.AIRLOCK_STATES``)::

    draft -> submitted -> in_review -> approved -> released
                 ^            |
                 |            +-> changes_requested -> (resubmit) submitted
                 |            +-> rejected
    draft, submitted, in_review, changes_requested -> withdrawn (by the author)

Reviews are per file and per *version* of a file: "update file" (a new frozen copy) leaves the
old decisions in the history but they no longer count. A reviewer's independent review is complete
when they have decided on the current version of every file. Until ``reviews_required`` reviewers
have completed theirs, the request is in the **independent** (blinded) phase: each reviewer sees
only their own decisions and the author sees none. Then it is in the **consolidation** phase: all
decisions are visible; a decision made now resolves the file (the latest consolidation decision
wins), and a checker releases, returns (changes requested) or rejects the request.

Who: the *author*; *members* of the project (they see submitted requests of their project and may
download released ones); *checkers* (accounts with ``output_checker``, holding the review scope),
who see every submitted request and review any request but their own. The author of a request can
never review, preview or release it, nor download it before release (403); anyone else gets 404.
"""

from __future__ import annotations

from ..db import AIRLOCK_FINAL, Account, AirlockFile, AirlockRequest, AirlockReview, AirlockTransition, utcnow
from ..errors import NotFound, VREError

DECISIONS = ("approve", "changes", "reject")
STATUS_OF = {"approve": "approved", "changes": "changes", "reject": "rejected"}
PHASES = ("independent", "consolidation")

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("submitted", "withdrawn"),
    "submitted": ("in_review", "withdrawn"),
    "in_review": ("changes_requested", "approved", "rejected", "withdrawn"),
    "changes_requested": ("submitted", "withdrawn"),
    "approved": ("released",),
}
#: States in which the author may still change the request's text and files.
EDITABLE = ("draft", "changes_requested")
#: States in which files are frozen and under (or waiting for) review.
REVIEWABLE = ("submitted", "in_review")


class Forbidden(VREError):
    """The caller can see the request but may not do this (HTTP 403)."""


class WrongState(VREError):
    """Not possible in the request's current state (HTTP 409); the message says what is."""


def transition(req: AirlockRequest, to: str, actor: str, comment: str = "") -> None:
    if to not in TRANSITIONS.get(req.state, ()):
        raise WrongState(f"request {req.id} is {req.state.replace('_', ' ')}; it cannot become "
                         f"{to.replace('_', ' ')}" + (" (it is closed)" if req.state in AIRLOCK_FINAL else ""))
    now = utcnow()
    req.history.append(AirlockTransition(from_state=req.state, to_state=to, actor=actor, comment=comment, at=now))
    req.state = to
    req.updated_at = now


# --- who ---------------------------------------------------------------------------------------
def capacities(req: AirlockRequest, account: Account, *, checker_scope: bool = True) -> set[str]:
    """What ``account`` is to ``req``: any of author, member, checker (empty: a stranger)."""
    caps = set()
    if req.author_id == account.id:
        caps.add("author")
    if any(m.account_id == account.id for m in req.project.members):
        caps.add("member")
    if account.output_checker and checker_scope and not account.disabled:
        caps.add("checker")
    return caps


def can_see(req: AirlockRequest, caps: set[str]) -> bool:
    if "author" in caps:
        return True
    return req.state != "draft" and bool(caps & {"member", "checker"})


def require_visible(req: AirlockRequest | None, caps: set[str], request_id) -> AirlockRequest:
    if req is None or not can_see(req, caps):
        raise NotFound(f"there is no airlock request {request_id} you can see")
    return req


def require_author(req: AirlockRequest, caps: set[str], what: str) -> None:
    if "author" not in caps:
        raise Forbidden(f"only the author of request {req.id} can {what}")


def require_reviewer(req: AirlockRequest, caps: set[str], what: str) -> None:
    if "author" in caps:
        raise Forbidden(f"you are the author of request {req.id}: an author can never {what} their own request")
    if "checker" not in caps:
        raise Forbidden(f"only output checkers can {what} a request (ask an admin: vre user set-checker)")


def can_download(req: AirlockRequest, caps: set[str]) -> bool:
    return req.state == "released" and bool(caps & {"author", "member"})


def actions(req: AirlockRequest, caps: set[str]) -> list[str]:
    """What the caller may do now (for the UI; every action is checked again when asked)."""
    out = []
    if "author" in caps:
        if req.state in EDITABLE:
            out += ["edit", "add_files", "remove_file", "check", "submit"]
        if req.state in REVIEWABLE + ("changes_requested",):
            out.append("update_file")
        if req.state in TRANSITIONS and "withdrawn" in TRANSITIONS[req.state]:
            out.append("withdraw")
    elif "checker" in caps and req.state != "draft":
        out.append("preview")
        if req.state in REVIEWABLE:
            out.append("review")
            if phase(req) == "consolidation":
                out += ["release", "return", "reject"]
    if can_download(req, caps):
        out.append("download")
    return out


# --- reviews -------------------------------------------------------------------------------------
def index(req: AirlockRequest) -> dict[tuple[int, int], list[AirlockReview]]:
    """Reviews by (file id, file version), in order: one pass, so that every question below is
    linear in files + reviews (a request may hold thousands of each)."""
    by: dict[tuple[int, int], list[AirlockReview]] = {}
    for r in req.reviews:
        by.setdefault((r.file_id, r.file_version), []).append(r)
    return by


def current_reviews(req: AirlockRequest, f: AirlockFile, by=None) -> list[AirlockReview]:
    return (by if by is not None else index(req)).get((f.id, f.version), [])


def completed_reviewers(req: AirlockRequest, by=None) -> list[int]:
    """Reviewers who have decided on the current version of every file."""
    if not req.files:
        return []
    by = by if by is not None else index(req)
    done = None
    for f in req.files:
        ids = {r.reviewer_id for r in by.get((f.id, f.version), ())}
        done = ids if done is None else done & ids
        if not done:
            return []
    return sorted(done or ())


def phase(req: AirlockRequest, by=None) -> str | None:
    """``independent`` or ``consolidation`` while under review; None in other states."""
    if req.state not in REVIEWABLE:
        return None
    return "consolidation" if len(completed_reviewers(req, by)) >= req.reviews_required else "independent"


def file_status(req: AirlockRequest, f: AirlockFile, by=None) -> str:
    """pending | approved | changes | rejected | conflict, from the current version's decisions."""
    revs = current_reviews(req, f, by)
    resolved = [r for r in revs if r.phase == "consolidation"]
    if resolved:
        return STATUS_OF[resolved[-1].decision]
    latest: dict[int, str] = {}
    for r in revs:
        latest[r.reviewer_id] = r.decision
    if len(latest) < req.reviews_required:
        return "pending"
    decisions = set(latest.values())
    return STATUS_OF[decisions.pop()] if len(decisions) == 1 else "conflict"


def refresh_status(req: AirlockRequest) -> None:
    by = index(req)
    for f in req.files:
        f.status = file_status(req, f, by) if f.sha256 else "pending"


def visible_reviews(req: AirlockRequest, account: Account, caps: set[str]) -> list[AirlockReview]:
    """Blinded phase: a reviewer sees their own decisions, nobody else any. Afterwards: all."""
    if req.state == "draft":
        return []
    if phase(req) == "independent":
        return [r for r in req.reviews if r.reviewer_id == account.id] if "checker" in caps else []
    return list(req.reviews)


def record_decisions(req: AirlockRequest, reviewer: Account, decisions: list[tuple[AirlockFile, str, str]]
                     ) -> list[AirlockReview]:
    """Add a reviewer's decisions [(file, decision, comment)] made together, in the phase the request
    was in when they were made (the caller checked who may decide)."""
    if req.state not in REVIEWABLE:
        raise WrongState(f"request {req.id} is {req.state.replace('_', ' ')}: there is nothing to review")
    current = phase(req)
    now = utcnow()
    made = []
    for f, decision, comment in decisions:
        if decision not in DECISIONS:
            raise VREError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if not f.sha256:
            raise WrongState(f"file {f.name!r} is not frozen yet")
        if decision != "approve" and not (comment or "").strip():
            raise VREError(f"{f.name}: say why in a comment: the author needs to know what to change")
        review = AirlockReview(file_id=f.id, file_version=f.version, reviewer_id=reviewer.id, decision=decision,
                               comment=(comment or "").strip(), phase=current, created_at=now)
        review.reviewer = reviewer
        req.reviews.append(review)
        made.append(review)
    if req.state == "submitted":
        transition(req, "in_review", reviewer.name)
    req.updated_at = now
    refresh_status(req)
    return made


def release_problems(req: AirlockRequest) -> list[str]:
    """Why the request cannot be released now (empty: it can)."""
    by = index(req)
    if phase(req, by) != "consolidation":
        return [f"{req.reviews_required} independent reviews are needed first "
                f"({len(completed_reviewers(req, by))} complete)"]
    problems = []
    for f in req.files:
        status = file_status(req, f, by)
        if status == "conflict":
            problems.append(f"{f.name}: the reviewers disagree; decide it in the consolidation phase")
        elif status == "changes":
            problems.append(f"{f.name}: changes were requested; return the request to the author")
        elif status == "pending":
            problems.append(f"{f.name}: no decision yet")
    if not problems and not any(file_status(req, f, by) == "approved" for f in req.files):
        problems.append("no file is approved: reject the request instead")
    return problems


def require_consolidation(req: AirlockRequest, what: str) -> None:
    if req.state not in REVIEWABLE:
        raise WrongState(f"request {req.id} is {req.state.replace('_', ' ')}: it cannot be {what}")
    if phase(req) != "consolidation":
        raise WrongState(f"request {req.id} can be {what} once {req.reviews_required} independent reviews are "
                         f"complete ({len(completed_reviewers(req))} so far)")
