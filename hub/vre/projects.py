"""Projects: members, dataset grants, resource profiles and permit expiry.

Every function validates its input and raises :class:`vre.errors.VREError` with a message that
says what to fix. Callers (CLI, admin API) own the transaction.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from .accounts import get_account
from .db import GRANT_MODES, Dataset, Grant, Membership, Profile, Project, utcnow
from .errors import NotFound, VREError
from .settings import node_label_problem

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
PROFILE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_MEM_UNITS = {"": 1, "m": 1, "mi": 1, "mb": 1, "mib": 1, "g": 1024, "gi": 1024, "gb": 1024, "gib": 1024}
#: The most memory a profile or a batch quota may name: 64 TiB, in MiB (the columns are ``Integer``,
#: 32-bit on PostgreSQL; this is far below their limit and far above any node).
MAX_MEM_MB = 64 * 1024 * 1024
#: The largest byte cap (egress per day, airlock file and request sizes): 1 PiB (``BigInteger`` columns).
MAX_BYTES = 1024**5
#: The longest title (a project's, a dataset's) and profile description: the ``String(255)`` columns.
MAX_TITLE = 255
#: Expiries from 1970-01-01 to 2200-12-31 (UTC): a past one expires a permit at once, so the past is
#: allowed, but a year outside these is a slip (and the database cannot store year 0 or 10000).
EXPIRY_RANGE = (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2201, 1, 1, tzinfo=dt.timezone.utc))


def shown(text) -> str:
    """What a message repeats of a value typed: its repr, a long one cut (a message says what to fix)."""
    said = repr(str(text))
    return said if len(said) <= 42 else said[:39] + "...'"


def validate_slug(slug: str, what: str = "project") -> str:
    if not SLUG_RE.match(slug or ""):
        raise VREError(
            f"invalid {what} slug {slug!r}: use 3-32 lowercase letters, digits and '-', "
            "starting with a letter (it names the session's network island and paths)"
        )
    return slug


def parse_memory(text: str | int) -> int:
    """'4G', '512M', '1.5GiB' or a number of MiB -> MiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _MEM_UNITS:
        raise VREError(f"invalid memory {shown(text)}: write e.g. 512M, 4G or 16GiB")
    mem = float(m.group(1)) * _MEM_UNITS[unit]  # a 400-digit number is inf: too large, never int()
    if mem > MAX_MEM_MB:
        raise VREError(f"memory {shown(text)} is too large: at most {MAX_MEM_MB // 1024}G (64 TiB)")
    mem_mb = int(mem)
    if mem_mb < 256:
        raise VREError(f"memory {text!r} is too small: a Jupyter session needs at least 256M")
    return mem_mb


def parse_expiry(text: str) -> dt.datetime | None:
    """'never' clears; a date means the permit is valid through that day (UTC); or an ISO time."""
    value = (text or "").strip()
    if value.lower() in ("never", "none", ""):
        return None
    try:
        if len(value) == 10:
            parsed = dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        else:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise VREError(
            f"invalid expiry {shown(text)}: write a date (2027-06-30, valid through that day, UTC), "
            "an ISO time (2027-06-30T12:00:00+00:00) or 'never'"
        ) from None
    except OverflowError:  # 9999-12-31 + the day it is valid through
        parsed = None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    if parsed is None or not EXPIRY_RANGE[0] <= parsed <= EXPIRY_RANGE[1]:  # aware: compared as UTC
        raise VREError(f"expiry {shown(text)} is out of range: give a date from 1970-01-01 to 2200-12-31 (UTC), "
                       "or 'never' for no expiry")
    return parsed


def get_project(db: Session, slug: str) -> Project:
    project = db.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(f"unknown project {slug!r} (see 'vre project list')")
    return project


def get_dataset(db: Session, slug: str) -> Dataset:
    dataset = db.scalar(select(Dataset).where(Dataset.slug == slug))
    if dataset is None:
        raise NotFound(f"unknown dataset {slug!r} (see 'vre dataset list')")
    return dataset


def create_project(db: Session, slug: str, title: str, description: str = "", expires: str | None = None) -> Project:
    validate_slug(slug)
    if not title.strip():
        raise VREError("a project needs a --title")
    check_length(title.strip(), "the project's title")
    if db.scalar(select(Project).where(Project.slug == slug)) is not None:
        raise VREError(f"project slug {slug!r} is taken; choose another")
    project = Project(slug=slug, title=title.strip(), description=description,
                      expires_at=parse_expiry(expires) if expires else None)
    db.add(project)
    db.flush()
    return project


def check_length(text: str, what: str, most: int = MAX_TITLE) -> str:
    """Refuse a text longer than its column holds (PostgreSQL would refuse the write with an error)."""
    if len(text) > most:
        raise VREError(f"{what} is too long: at most {most} characters (you wrote {len(text)}); shorten it")
    return text


def validate_grant_mode(mode: str) -> str:
    if mode not in GRANT_MODES:
        raise VREError(f"unknown grant mode {mode!r}: use one of {', '.join(GRANT_MODES)} "
                       "(interactive: sessions and batch jobs; batch-only: held batch jobs only)")
    return mode


def parse_grant_expiry(text: str) -> dt.datetime | None:
    """Like a permit's expiry, but a moment already past is refused: it would grant nothing."""
    expires = parse_expiry(text)
    if expires is not None and expires <= utcnow():
        raise VREError(f"grant expiry {text!r} is in the past: give a later date or 'never' "
                       "(to end a grant now, revoke it with 'vre project revoke')")
    return expires


def _grant_of(project: Project, dataset: Dataset) -> Grant | None:
    return next((g for g in project.grants if g.dataset_id == dataset.id), None)


def grant(db: Session, project_slug: str, dataset_slug: str, *, mode: str = "interactive",
          expires: str | None = None) -> Grant:
    project, dataset = get_project(db, project_slug), get_dataset(db, dataset_slug)
    validate_grant_mode(mode)
    expires_at = parse_grant_expiry(expires) if expires else None
    if _grant_of(project, dataset) is not None:
        raise VREError(f"project {project.slug!r} already has dataset {dataset.slug!r}; change its mode or "
                       f"expiry with 'vre project update-grant {project.slug} {dataset.slug} --mode ... --expires ...'")
    g = Grant(project=project, dataset=dataset, mode=mode, expires_at=expires_at)
    db.add(g)
    db.flush()
    return g


def update_grant(db: Session, project_slug: str, dataset_slug: str, *, mode: str | None = None,
                 expires: str | None = None) -> Grant:
    """Change an existing grant's mode and/or expiry ('never' clears it); what is not given stays."""
    project, dataset = get_project(db, project_slug), get_dataset(db, dataset_slug)
    if mode is None and expires is None:
        raise VREError("nothing to change: give --mode and/or --expires")
    g = _grant_of(project, dataset)
    if g is None:
        raise VREError(f"project {project.slug!r} has no grant for dataset {dataset.slug!r}; "
                       f"grant it first with 'vre project grant {project.slug} {dataset.slug}'")
    if mode is not None:
        g.mode = validate_grant_mode(mode)
    if expires is not None:
        g.expires_at = parse_grant_expiry(expires)
    db.flush()
    return g


def revoke(db: Session, project_slug: str, dataset_slug: str) -> None:
    project, dataset = get_project(db, project_slug), get_dataset(db, dataset_slug)
    g = _grant_of(project, dataset)
    if g is None:
        raise VREError(f"project {project.slug!r} has no grant for dataset {dataset.slug!r}")
    project.grants.remove(g)


def datasets_for(project: Project, role: str, now: dt.datetime | None = None) -> tuple[list[Dataset], list[Dataset]]:
    """(mounted, catalogue_only), each in slug order: the datasets whose files a ``role`` sandbox
    (``session``, ``worker``) started ``now`` gets, and those of the project's other live grants,
    which it sees only as catalogue records. The one place grant modes and expiry decide access."""
    now = now or utcnow()
    live = sorted((g for g in project.grants if not g.is_expired(now)), key=lambda g: g.dataset.slug)
    return ([g.dataset for g in live if g.mounts_in(role, now)],
            [g.dataset for g in live if not g.mounts_in(role, now)])


def grant_summary(g: Grant) -> dict:
    """A grant as the CLI and the audit trail show it."""
    return {"dataset": g.dataset.slug, "mode": g.mode,
            "expires_at": g.expires_at.isoformat() if g.expires_at else None, "expired": g.is_expired()}


def describe_grant(g: Grant) -> str:
    """'lung-ct', 'lung-ct (batch-only)', 'lung-ct (until 2027-06-30 00:00)', 'lung-ct (expired)'."""
    notes = [] if g.mode == "interactive" else [g.mode]
    if g.is_expired():
        notes.append("expired")
    elif g.expires_at is not None:
        notes.append(f"until {g.expires_at:%Y-%m-%d %H:%M} UTC")
    return f"{g.dataset.slug} ({', '.join(notes)})" if notes else g.dataset.slug


def add_member(db: Session, project_slug: str, user: str) -> Membership:
    project, account = get_project(db, project_slug), get_account(db, user)
    if account.role == "auditor":
        raise VREError(f"{user!r} is an auditor: auditors review projects, they do not work in them")
    if any(m.account_id == account.id for m in project.members):
        raise VREError(f"{user!r} is already a member of {project.slug!r}")
    membership = Membership(project=project, account=account)
    db.add(membership)
    db.flush()
    return membership


def remove_member(db: Session, project_slug: str, user: str) -> None:
    project, account = get_project(db, project_slug), get_account(db, user)
    match = [m for m in project.members if m.account_id == account.id]
    if not match:
        raise VREError(f"{user!r} is not a member of {project.slug!r}")
    project.members.remove(match[0])


def parse_node_selector(items) -> dict[str, str]:
    """``["label=value", ...]`` (the CLI's ``--node-selector``) -> a checked nodeSelector."""
    pairs = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep:
            raise VREError(f"node selector {item!r}: write LABEL=VALUE, e.g. nvidia.com/gpu.product=NVIDIA-H200")
        pairs[key.strip()] = value.strip()
    for key, value in pairs.items():
        if problem := node_label_problem(key, value):
            raise VREError(f"node selector: {problem}")
    return pairs


def set_profile(db: Session, project_slug: str, name: str, *, cpu: float, memory: str | int,
                gpus: int = 0, description: str = "", node_selector=None) -> Profile:
    """Create or update a resource profile of a project (``node_selector``: see
    :func:`parse_node_selector`; none: its sessions land anywhere)."""
    project = get_project(db, project_slug)
    if not PROFILE_RE.match(name or ""):
        raise VREError(f"invalid profile name {name!r}: use lowercase letters, digits and '-'")
    if not 0 < cpu <= 256:
        raise VREError(f"invalid cpu {cpu!r}: give a number of cores between 0.1 and 256 (e.g. 0.5, 2)")
    if not 0 <= gpus <= 16:
        raise VREError(f"invalid gpus {gpus!r}: give 0-16")
    mem_mb = parse_memory(memory)
    check_length(description, "the profile's description")
    selector = parse_node_selector(node_selector)
    profile = next((p for p in project.profiles if p.name == name), None)
    if profile is None:
        profile = Profile(project=project, name=name)
        db.add(profile)
    profile.cpu, profile.mem_mb, profile.gpus = float(cpu), mem_mb, int(gpus)
    profile.description = description
    profile.node_selector = selector or None
    db.flush()
    return profile


def remove_profile(db: Session, project_slug: str, name: str) -> None:
    project = get_project(db, project_slug)
    match = [p for p in project.profiles if p.name == name]
    if not match:
        raise NotFound(f"project {project.slug!r} has no profile {name!r}")
    project.profiles.remove(match[0])


def set_expiry(db: Session, project_slug: str, expires: str) -> Project:
    project = get_project(db, project_slug)
    project.expires_at = parse_expiry(expires)
    return project


def set_job_quota(db: Session, project_slug: str, *, slots: int | None = None, cpu: float | None = None,
                  memory: str | int | None = None, gpus: int | None = None) -> Project:
    """Change a project's batch-queue quota (what is not given stays)."""
    project = get_project(db, project_slug)
    if slots is not None:
        if not 0 <= slots <= 1000:
            raise VREError("--jobs must be between 0 (queue only) and 1000")
        project.job_slots = slots
    if cpu is not None:
        if not 0 < cpu <= 4096:
            raise VREError("--cpu must be a positive number of CPUs")
        project.job_cpu = float(cpu)
    if memory is not None:
        project.job_mem_mb = parse_memory(memory)
    if gpus is not None:
        if not 0 <= gpus <= 64:
            raise VREError("--gpus must be between 0 and 64")
        project.job_gpus = gpus
    return project


def job_quota(project: Project) -> dict:
    return {"slots": project.job_slots, "cpu": project.job_cpu, "mem_mb": project.job_mem_mb,
            "gpus": project.job_gpus}


def set_cell_audit(db: Session, project_slug: str, on: bool) -> Project:
    project = get_project(db, project_slug)
    project.audit_cells = bool(on)
    return project


def set_downloads(db: Session, project_slug: str, mode: str) -> Project:
    from .access.policy import DOWNLOAD_MODES

    if mode not in DOWNLOAD_MODES:
        raise VREError(f"downloads must be one of {', '.join(DOWNLOAD_MODES)}, not {mode!r}")
    project = get_project(db, project_slug)
    project.downloads = mode
    return project


_BYTE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'500M', '2G', '1.5GiB' or a number of bytes -> bytes; 'none' or 0 -> 0 (no cap)."""
    value = str(text).strip().lower()
    if value in ("none", "off", "0"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if not m or m.group(2) not in _BYTE_UNITS:
        raise VREError(f"invalid size {shown(text)}: write e.g. 500M, 2G or none")
    size = float(m.group(1)) * _BYTE_UNITS[m.group(2)]  # a 400-digit number is inf: too large, never int()
    if size > MAX_BYTES:
        raise VREError(f"size {shown(text)} is too large: at most {MAX_BYTES // 1024**4}T (1 PiB), or none")
    return int(size)


def set_egress_cap(db: Session, project_slug: str, cap: str) -> Project:
    project = get_project(db, project_slug)
    project.egress_cap = parse_bytes(cap)
    return project


def projects_of(db: Session, user: str) -> list[Project]:
    """The projects a user is a member of, in slug order."""
    account = get_account(db, user)
    return sorted((m.project for m in account.memberships), key=lambda p: p.slug)


def is_active(project: Project) -> bool:
    return not project.is_expired(utcnow())
