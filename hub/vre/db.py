"""The VRE database: accounts, datasets, projects, members, grants and resource profiles.

SQLite is the embedded default; PostgreSQL is the production database. The schema is owned by
Alembic migrations in ``vre/migrations``; ``upgrade()`` brings any database to the current head.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    text,
    update,
)
from sqlalchemy import false as sa_false
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .hostfiles import make_private

ROLES = ("researcher", "admin", "auditor")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return as_utc(value).astimezone(dt.timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        return as_utc(value) if value is not None else None


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A person who can log in. Its id fixes the host uid its sessions run as."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="researcher")
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: An output checker reviews airlock requests (never their own); set by admins (``vre user set-checker``).
    output_checker: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    #: ``<issuer> <sub>`` of the OpenID Connect identity this account belongs to (made at its first
    #: OIDC login); None for local accounts. A provider name reused by another person is refused.
    oidc_subject: Mapped[str | None] = mapped_column(String(512), nullable=True, unique=True)
    #: The second factor of a local login (vre.totp): the authenticator app's secret (None: not
    #: enrolled), the last time step accepted (no replay), the unused recovery codes' digests.
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    recovery_codes: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="account", cascade="all, delete-orphan")


class Dataset(Base):
    """A registered directory of imaging data and its catalogue record."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    #: Catalogue record: admin-supplied descriptive fields merged with the index summary.
    catalog: Mapped[dict] = mapped_column(JSON, default=dict)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    indexed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    grants: Mapped[list[Grant]] = relationship(back_populates="dataset", cascade="all, delete-orphan")
    #: The data holder's people who may decide access requests for it (besides admins).
    stewards: Mapped[list[DatasetSteward]] = relationship(back_populates="dataset", cascade="all, delete-orphan")


class Project(Base):
    """A research project: an island with its members, granted datasets and profiles."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(48), unique=True)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Permit expiry: from this moment no session may run.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Record the code of every executed cell (off by default; researchers are told when on).
    audit_cells: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Batch-queue quota: jobs running at once, and their total CPUs, memory and GPUs.
    #: Jobs beyond it wait in the queue; they are never dropped.
    job_slots: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    job_cpu: Mapped[float] = mapped_column(Float, default=2.0, server_default="2")
    job_mem_mb: Mapped[int] = mapped_column(Integer, default=8192, server_default="8192")
    job_gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: What may leave through the browser as raw files (``vre.access.policy.DOWNLOAD_MODES``):
    #: ``none`` (the default: results leave through the airlock), ``results``, ``all``.
    downloads: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    #: Bytes a member's sessions may send to the browser per day (0: no cap; always counted).
    egress_cap: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    members: Mapped[list[Membership]] = relationship(back_populates="project", cascade="all, delete-orphan")
    grants: Mapped[list[Grant]] = relationship(back_populates="project", cascade="all, delete-orphan")
    profiles: Mapped[list[Profile]] = relationship(
        back_populates="project", cascade="all, delete-orphan",
        order_by="[Profile.cpu, Profile.mem_mb, Profile.name]"
    )

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and as_utc(self.expires_at) <= (now or utcnow())


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    project: Mapped[Project] = relationship(back_populates="members")
    account: Mapped[Account] = relationship(back_populates="memberships")


#: How a granted dataset may be used (EUCAIM's access models), and the plan roles
#: (``vre.plan.ROLES``) whose sandboxes mount its files: ``batch-only`` data is processed only by
#: held batch jobs (``held`` workers: their own island, the workspace read-only, outputs held for
#: the airlock), and sessions and the project's shared workers see just its catalogue record.
GRANT_MODES = {"interactive": ("session", "worker", "held"), "batch-only": ("held",)}


class Grant(Base):
    """A dataset a project was approved to use, how (``mode``: ``GRANT_MODES``) and until when."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("project_id", "dataset_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    mode: Mapped[str] = mapped_column(String(16), default="interactive", server_default="interactive")
    #: From this moment the grant mounts nowhere (None: no expiry of its own).
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    project: Mapped[Project] = relationship(back_populates="grants")
    dataset: Mapped[Dataset] = relationship(back_populates="grants")

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and as_utc(self.expires_at) <= (now or utcnow())

    def mounts_in(self, role: str, now: dt.datetime | None = None) -> bool:
        """Whether a ``role`` sandbox (session, worker) started ``now`` gets the dataset's files."""
        return role in GRANT_MODES.get(self.mode, ()) and not self.is_expired(now)


class DatasetSteward(Base):
    """An account that decides access requests for one dataset (the data holder's steward)."""

    __tablename__ = "dataset_stewards"
    __table_args__ = (UniqueConstraint("dataset_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="stewards")
    account: Mapped[Account] = relationship()


#: Where an access request stands: ``open`` until its requester withdraws it or a decider
#: approves (the grant is made) or denies it; the last three are final.
ACCESS_REQUEST_STATES = ("open", "approved", "denied", "withdrawn")


class AccessRequest(Base):
    """A researcher's request that one of their projects be granted a dataset (``vre.access_requests``).
    At most one per (project, dataset) is open: a partial unique index holds that on both backends.
    The request outlives its dataset's retirement (``catalog.registry.remove_dataset``, refused while
    a request is open): ``dataset_id`` becomes NULL and ``dataset_slug`` still names it, so the
    requester's and the decider's history stays listed. Projects are never deleted (they expire)."""

    __tablename__ = "access_requests"
    __table_args__ = (
        Index("uq_access_requests_open", "project_id", "dataset_id", unique=True,
              sqlite_where=text("state = 'open'"), postgresql_where=text("state = 'open'")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    #: None once the dataset was retired (``dataset_slug`` names it).
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True,
                                                   index=True)
    #: The dataset's slug when the request was made, kept as text so the record outlives the dataset.
    dataset_slug: Mapped[str] = mapped_column(String(64))
    requester_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(String(16))               # the mode asked for
    justification: Mapped[str] = mapped_column(Text)
    intended_use: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Who decided or withdrew (an account name, or the CLI operator's login): kept as text so the
    #: record outlives the account.
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")       # the decider's reason (required to deny)
    #: What an approval granted (it may differ from what was asked).
    granted_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    granted_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Optimistic lock: of two decisions made at once, one fails instead of both applying.
    rev: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    __mapper_args__ = {"version_id_col": rev}

    project: Mapped[Project] = relationship()
    dataset: Mapped[Dataset | None] = relationship()
    requester: Mapped[Account] = relationship()


class Profile(Base):
    """A resource profile a project's sessions may choose: CPU, memory, GPUs."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(255), default="")
    cpu: Mapped[float] = mapped_column(Float)
    mem_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    #: Its GPUs may be shared with other sharing sessions (small inference, teaching); by default
    #: a GPU belongs to one session or job at a time.
    gpu_shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    #: Node labels its sessions must land on (Kubernetes ``nodeSelector``, e.g. a GPU model); None:
    #: anywhere (GPU profiles: ``k8s_gpu_node_selector``). One host (sandbox, docker) has no choice.
    node_selector: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    project: Mapped[Project] = relationship(back_populates="profiles")

    def describe(self) -> str:
        gpu = f", {self.gpus} GPU" if self.gpus else ""
        mem = f"{self.mem_mb / 1024:g} GiB" if self.mem_mb >= 1024 else f"{self.mem_mb} MiB"
        where = ", on " + ",".join(f"{k}={v}" for k, v in sorted(self.node_selector.items())) \
            if self.node_selector else ""
        return f"{self.cpu:g} CPU, {mem} RAM{gpu}{where}"


class PlanGeneration(Base):
    """One row (id 1) whose ``n`` moves on with every change to what a plan is built from
    (accounts, datasets, projects, memberships, grants, profiles): see ``_bump_plan_generation``.
    Caches of plans (the job engine's ``PlanCache``) are valid while it stands still."""

    __tablename__ = "plan_generation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger)


class GpuLease(Base):
    """A GPU held by a session or batch worker (``holder``); see ``vre.gpus``."""

    __tablename__ = "gpu_leases"
    __table_args__ = (UniqueConstraint("device", "holder"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200), index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ObservedAssignment(Base):
    """What the observer on a batch worker pod's node last took note of (Kubernetes): the job
    whose reads that pod's are from then on (``vre.jobs.observed``). The job engine hands a job
    to a worker only once its observer has it, so no read of the job is counted as another's."""

    __tablename__ = "observed_assignments"
    node: Mapped[str] = mapped_column(String(253), primary_key=True)   # whose observer said it
    pod_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer)
    serial: Mapped[str] = mapped_column(String(32))   # of the hand-out (``podgate.AUDIT_JOB_SERIAL``)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
JOB_FINAL = ("succeeded", "failed", "cancelled", "timed_out")


#: Where a batch job runs and where its results go: ``open``: the project's shared workers, with
#: the datasets sessions get, outputs in the workspace; ``held``: workers of their own (their own
#: island, which sessions cannot reach), with the batch-only datasets too, the workspace read-only,
#: log and outputs kept outside it, leaving only through the airlock.
JOB_LANES = ("open", "held")


class Job(Base):
    """A batch job: what was asked (kind, target, parameters, resources), where it stands, and
    how it ended. The queue is this table: nothing lives only in a scheduler's memory."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(16))              # notebook | script | function
    target: Mapped[str] = mapped_column(Text)                  # path in the session's view, or function name
    params: Mapped[dict] = mapped_column(JSON, default=dict)   # notebook parameters / script arguments
    profile: Mapped[str] = mapped_column(String(32))
    cpu: Mapped[float] = mapped_column(Float)
    mem_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    max_runtime_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")      # why it ended as it did, in words
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)              # starts (a Job's name counts them)
    lost_starts: Mapped[int] = mapped_column(Integer, default=0)           # of them, lost (not the job's doing)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str] = mapped_column(String(128), default="")
    devices: Mapped[str] = mapped_column(String(64), default="")  # granted GPU indices, comma-separated
    usage: Mapped[dict] = mapped_column(JSON, default=dict)       # cpu_s, max_rss_mb, wall_s
    rerun_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: ``open`` (the project's shared workers; outputs in the workspace) or ``held`` (``JOB_LANES``).
    lane: Mapped[str] = mapped_column(String(8), default="open", server_default="open")
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    project: Mapped[Project] = relationship()
    account: Mapped[Account] = relationship()


class EgressDaily(Base):
    """Bytes the access layer sent to the browser for one session on one (UTC) day."""

    __tablename__ = "egress_daily"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)       # YYYY-MM-DD
    session: Mapped[str] = mapped_column(String(128), primary_key=True)  # the session's audit id
    user: Mapped[str] = mapped_column(String(128), index=True)
    project: Mapped[str] = mapped_column(String(48), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Bytes per class of route (contents, files, viewer, kernel, terminal, static, other).
    classes: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- the airlock (vre.airlock) ------------------------------------------------------------------
AIRLOCK_STATES = ("draft", "submitted", "in_review", "changes_requested", "approved", "released", "rejected",
                  "withdrawn")
AIRLOCK_FINAL = ("released", "rejected", "withdrawn")


class AirlockRules(Base):
    """A project's airlock rules; a project without a row has ``vre.airlock.rules.DEFAULTS``."""

    __tablename__ = "airlock_rules"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    extensions: Mapped[list] = mapped_column(JSON, default=list)   # lowercase, without the dot
    max_file_bytes: Mapped[int] = mapped_column(BigInteger)
    max_request_bytes: Mapped[int] = mapped_column(BigInteger)
    max_files: Mapped[int] = mapped_column(Integer)
    max_csv_rows: Mapped[int] = mapped_column(Integer)
    reviews_required: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AirlockRequest(Base):
    """A request to take files out of the environment, and where it stands (``AIRLOCK_STATES``)."""

    __tablename__ = "airlock_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(255))
    justification: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(24), default="draft", index=True)
    #: Independent reviews needed, fixed from the project's rules at (each) submission.
    reviews_required: Mapped[int] = mapped_column(Integer, default=2)
    #: The rules the last submission was checked against (they go into the release record).
    rules: Mapped[dict] = mapped_column(JSON, default=dict)
    round: Mapped[int] = mapped_column(Integer, default=0)   # submissions so far
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The signed release record (canonical JSON) and its Ed25519 signature (base64).
    record: Mapped[str | None] = mapped_column(Text, nullable=True)
    record_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Optimistic lock: every UPDATE of the row says ``WHERE rev = <the rev it read>``, so of two
    #: changes made at once (two submissions, two reviews) one fails instead of both applying.
    rev: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    __mapper_args__ = {"version_id_col": rev}

    project: Mapped[Project] = relationship()
    author: Mapped[Account] = relationship()
    files: Mapped[list[AirlockFile]] = relationship(back_populates="request", cascade="all, delete-orphan",
                                                    order_by="AirlockFile.id")
    reviews: Mapped[list[AirlockReview]] = relationship(back_populates="request", cascade="all, delete-orphan",
                                                        order_by="AirlockReview.id")
    history: Mapped[list[AirlockTransition]] = relationship(back_populates="request", cascade="all, delete-orphan",
                                                            order_by="AirlockTransition.id")


class AirlockFile(Base):
    """One file of a request: the session path the researcher named and, once frozen, the copy in
    hub-owned storage (``stored``) with its size and SHA-256. ``version`` counts freezes."""

    __tablename__ = "airlock_files"
    __table_args__ = (UniqueConstraint("request_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)                     # as named: /home/jovyan/project/out/table.csv
    name: Mapped[str] = mapped_column(String(1024))             # its name in the release (zip entry)
    description: Mapped[str] = mapped_column(Text, default="")
    stored: Mapped[str | None] = mapped_column(String(255), nullable=True)  # file name under the request's storage
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|approved|changes|rejected|conflict
    frozen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    request: Mapped[AirlockRequest] = relationship(back_populates="files")


class AirlockReview(Base):
    """One reviewer's decision on one version of one file (``phase``: independent | consolidation)."""

    __tablename__ = "airlock_reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("airlock_files.id", ondelete="CASCADE"), index=True)
    file_version: Mapped[int] = mapped_column(Integer)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))            # approve | changes | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    phase: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    request: Mapped[AirlockRequest] = relationship(back_populates="reviews")
    reviewer: Mapped[Account] = relationship()


class AirlockTransition(Base):
    """The history of a request: every change of state, by whom, when, with an optional comment."""

    __tablename__ = "airlock_transitions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_state: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    request: Mapped[AirlockRequest] = relationship(back_populates="history")


def as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


#: The largest id a row can have: the id columns are ``Integer``, 32-bit signed on PostgreSQL.
MAX_ID = 2**31 - 1


def get_by_id(db: Session, model: type, ident) -> object | None:
    """``db.get(model, ident)`` for an id a person typed (a URL, the CLI): a number no id column can
    hold names no row (None), instead of the driver's OverflowError (SQLite's binds stop at 2**63)."""
    try:
        n = int(ident)
    except (TypeError, ValueError):
        return None
    return db.get(model, n) if 0 < n <= MAX_ID else None


@contextmanager
def concurrent_change_is(conflict):
    """Around a transaction that checks, then writes (a slug not taken, a member not yet added):
    when another transaction committed the same thing in between, the unique (or foreign key)
    constraint refuses the write; ``conflict()``, an error telling the user to reload and try again,
    is raised instead of the ``IntegrityError``. Other integrity errors (NOT NULL, CHECK) are bugs
    and pass through."""
    try:
        yield
    except IntegrityError as e:
        said = str(e.orig).lower()
        if "unique" in said or "duplicate key" in said or "foreign key" in said:
            raise conflict() from None
        raise


# --- engine and sessions ----------------------------------------------------------------

_engines: dict[str, Engine] = {}


_PLAN_INPUTS: tuple = ()


@event.listens_for(Session, "before_flush")
def _bump_plan_generation(session: Session, _flush_context, _instances) -> None:
    """A flush that adds, changes or deletes anything a plan is built from moves the plan
    generation on, in the same transaction (every such change goes through the ORM)."""
    global _PLAN_INPUTS
    if not _PLAN_INPUTS:
        _PLAN_INPUTS = (Account, Dataset, Project, Membership, Grant, Profile)
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, _PLAN_INPUTS):
            session.execute(update(PlanGeneration).where(PlanGeneration.id == 1).values(n=PlanGeneration.n + 1))
            return


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    """A SQLite engine in WAL mode with foreign keys and the given ``synchronous`` level."""
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
    return engine


def engine_for(url: str, *, durable: bool = False) -> Engine:
    """One engine per URL per process. SQLite gets WAL and a busy timeout so the CLI and the
    hub can write at the same time. ``durable``: on SQLite a second engine whose commits are
    fsynced (``synchronous=FULL``, as the audit store's), for transactions that carry audit
    records with them (the job engine's); PostgreSQL commits durably either way."""
    if durable and url.startswith("sqlite"):
        key = f"durable:{url}"
        if key not in _engines:
            engine_for(url)  # the file's privacy, as for the plain engine
            _engines[key] = _sqlite_engine(url, "FULL")
        return _engines[key]
    if url in _engines:
        return _engines[url]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            make_private(Path(path))  # accounts, grants and the audit trail: the hub's alone
        # WAL + NORMAL: a commit survives any process crash and the file never corrupts; an OS
        # crash may lose the last commits. The audit store writes with FULL (vre.audit.store).
        engine = _sqlite_engine(url, "NORMAL")
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _engines[url] = engine
    return engine


@contextmanager
def session_scope(url: str, *, durable: bool = False):
    """A transaction: committed on success, rolled back on any error (``durable``: see
    ``engine_for``)."""
    session: Session = sessionmaker(engine_for(url, durable=durable), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def versioned_scope(url: str, conflict):
    """A transaction over rows with a version counter: when another transaction changed one of them
    meanwhile (SQLAlchemy's ``StaleDataError``), ``conflict()`` is raised instead, an error that
    tells the user to look again."""
    from sqlalchemy.orm.exc import StaleDataError

    try:
        with session_scope(url) as db:
            yield db
    except StaleDataError:
        raise conflict() from None


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to the newest schema, or to ``revision`` (tests of a
    migration start from the one before), creating it if needed."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection_url"] = url
    with engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
