"""The audit event: one versioned schema for everything the VRE records.

An :class:`Event` is what a caller hands to the store: who (``actor``, ``actor_role``) did what
(``action``, from the documented :data:`ACTIONS` catalogue) to what (``target``), in which
``project``, on which ``dataset``, in which ``session``, from where (``client``), with what
``outcome`` and free-form ``details``, and who reported it (``source``, see :data:`SOURCES`).
``id`` is the idempotency key (a replayed event with the same id is stored once) and ``time`` is
when it happened; the store adds ``seq`` and ``received_at`` when it seals the event into the chain.

Canonical form. The hash chain is computed over the *canonical JSON* of a stored record: keys
sorted, no whitespace, UTF-8 (``ensure_ascii=False``), no NaN/Infinity, times as
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always UTC, always microseconds, so one instant has exactly one
spelling, and the spelling sorts chronologically). :func:`canonical_record` builds that text from
fixed parts so that the verifier can rebuild everything except ``details`` from the indexed
columns at a few microseconds per record and compare it with the stored text; it is byte for byte
what ``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` gives
(a unit test holds the two together).

Schema changes: add fields only with a new :data:`SCHEMA_VERSION`; the stored ``v`` says which
version a record was written with, and old records keep verifying because their text is hashed
as stored. v2 added ``source``; v1 records have none (their store column is NULL, and queries show
``"source": null``: "recorded before provenance", never guessed). An :class:`Event` is something
to write now, so it always has a source.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _q  # the C encoder json.dumps(ensure_ascii=False) uses

SCHEMA_VERSION = 2
#: The layout of signed checkpoint payloads, apart from the event schema: every signature already
#: made covers this number, so changing it would make all of them fail to verify.
CHECKPOINT_VERSION = 1
OUTCOMES = ("ok", "denied", "error")
#: Who can act. "anonymous" is for requests without a known account (e.g. a failed login).
ACTOR_ROLES = ("researcher", "admin", "auditor", "service", "system", "anonymous")
#: Who reported an event (schema v2). The first three run outside the researcher's reach;
#: "session" events come from the researcher's own session (which runs their code), so an auditor
#: weighs them as claims: a session could forge or suppress them.
SOURCES = ("hub", "access-layer", "host", "session")

#: The catalogue of actions: name -> what it records. Prefixes ("session.") group them for queries.
ACTIONS: dict[str, str] = {
    # authentication and tokens
    "auth.login": "a user logged in to the hub",
    "auth.login_failed": "a login attempt was refused (bad password, unknown or disabled account)",
    "auth.lockout": "an account was locked after repeated failed logins",
    "auth.logout": "a user logged out",
    "auth.mfa_enrol": "a user set up their second factor (TOTP) and got recovery codes",
    "auth.mfa_reset": "an admin reset a user's second factor (the user sets one up again at the next login)",
    "token.create": "an API token was created for a user",
    "token.revoke": "an API token was revoked",
    # sessions (single-user servers)
    "session.request": "a user asked for a session (project, profile); denied if not allowed",
    "session.start": "a session sandbox started (with its mounts and resources in details)",
    "session.fail": "a session failed to start or died unexpectedly",
    "session.stop": "a session was stopped by its user or an admin",
    "session.cull": "an idle or no-longer-permitted session was stopped by a service",
    "admin.server_access": "an admin accessed another user's session",
    "access.refused": "the access layer refused a request to a session (no login, or not the session's user)",
    "egress.cap_reached": "a session reached its project's daily cap on data sent to the browser, or the ceiling over it",
    "terminal.input": "a line typed in a terminal of a session with code audit on",
    "api.request": "any state-changing hub REST API call (method and path in target)",
    # accounts
    "user.create": "an account was created",
    "user.update": "an account was changed (role, password, lock, enabled)",
    "user.delete": "an account was deleted",
    # projects
    "project.create": "a project was created",
    "project.update": "a project's title or description changed",
    "project.grant": "a dataset was granted to a project",
    "project.grant_update": "a dataset grant's mode or expiry changed",
    "project.revoke": "a dataset grant was revoked from a project",
    "project.member_add": "a user was added to a project",
    "project.member_remove": "a user was removed from a project",
    "project.profile_set": "a resource profile was added to or changed in a project",
    "project.profile_remove": "a resource profile was removed from a project",
    "project.expiry_set": "a project's permit expiry was set or cleared",
    # datasets and data access
    "dataset.register": "a dataset was registered and indexed",
    "dataset.reindex": "a dataset was re-indexed",
    "dataset.update": "a dataset's catalogue record was edited (the fields changed in details)",
    "dataset.remove": "a dataset was removed from the catalogue",
    "dataset.steward_add": "an account was made a steward of a dataset (decides its access requests)",
    "dataset.steward_remove": "an account stopped being a steward of a dataset",
    # access requests (researchers ask for a dataset grant; admins and stewards decide)
    "access_request.create": "a researcher asked for a dataset for one of their projects (mode asked in details)",
    "access_request.withdraw": "the requester withdrew their open access request",
    "access_request.approve": "an access request was approved: the grant was made (mode, expiry in details; "
                              "denied: not allowed, e.g. one's own request)",
    "access_request.deny": "an access request was denied (reason in details; denied: not allowed)",
    "dicom.series_view": "a DICOM series was opened in a viewer",
    "dicom.instance_view": "a single DICOM instance was read",
    "download.refused": "a download out of the environment was refused",
    "dataset.read": "a session or batch worker first opened a file of a series directory (seen from the host)",
    "dataset.list": "a session or batch worker first listed a folder of a dataset (seen from the host)",
    "dataset.read_summary": "dataset files opened by a session or worker in one minute, per series, and folders "
                            "listed (seen from the host)",
    "dataset.read_pause": "a session or worker opened dataset files faster than they could be recorded: it was "
                          "frozen until they were (from, to, opens; seen from the host)",
    # work inside sessions
    "kernel.start": "a notebook kernel started",
    "kernel.stop": "a notebook kernel stopped",
    "kernel.restart": "a notebook kernel restarted",
    "contents.get": "a file or notebook was opened through the contents API",
    "contents.save": "a file or notebook was saved",
    "contents.rename": "a file or notebook was renamed or moved",
    "contents.delete": "a file or notebook was deleted",
    "contents.create": "a file, notebook or directory was created",
    "cell.execute": "a notebook cell was executed (code hash in details)",
    # batch jobs
    "job.submit": "a batch job was submitted",
    "job.start": "a batch job started running",
    "job.finish": "a batch job finished",
    "job.cancel": "a batch job was cancelled",
    "job.fail": "a batch job failed, ran out of time or memory (reason in details)",
    "job.requeue": "a running batch job went back to the queue (its scheduler was lost)",
    # airlock (data egress review)
    "airlock.request": "a researcher asked to take results out of the environment (older records)",
    "airlock.create": "an airlock request was created (a draft, with the files named)",
    "airlock.update": "a draft airlock request changed (files added or removed, title, justification)",
    "airlock.check": "the author checked a request against the project's rules before submitting",
    "airlock.submit": "an airlock request was submitted: its files frozen with their hashes (denied: why)",
    "airlock.file_update": "a file of a submitted request was frozen again (new hash; its reviews start afresh)",
    "airlock.withdraw": "the author withdrew an airlock request",
    "airlock.review_start": "the first review of a submitted request began (submitted -> in review)",
    "airlock.review": "an output checker decided on one file: approve, changes or reject (denied: not allowed)",
    "airlock.consolidate": "the independent (blinded) reviews were complete; all decisions became visible",
    "airlock.file_view": "an output checker viewed a frozen file of a request (file and hash in details)",
    "airlock.return": "an output checker returned a request to its author with changes requested",
    "airlock.reject": "an output checker rejected a request",
    "airlock.approve": "an output checker approved a request for release",
    "airlock.release": "a request was released: its approved files and signed record (hash in details)",
    "airlock.download": "released files were downloaded (files and hashes in details; denied: not allowed)",
    "airlock.rules": "a project's airlock rules were changed",
    "airlock.checker": "an account was made an output checker or stopped being one",
    # the audit trail itself
    "audit.export": "audit records were exported (filters and row count in details)",
    "audit.verify": "the audit chain was verified (result in details)",
    "audit.checkpoint": "the audit chain head was signed on request",
    "audit.gap": "a recorder was down: what went unrecorded, for which session, from when to when",
}

#: Column sizes of the store (PostgreSQL enforces them; validation here gives the clear message).
LIMITS = {"id": 64, "actor": 255, "project": 255, "dataset": 255, "session": 255, "client": 255,
          "target": 4000}
MAX_DETAILS_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AuditError(ValueError):
    """A bad event or a bad filter; the message says what to fix."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_time(value: dt.datetime) -> str:
    """The one canonical spelling of an instant: ``2026-11-22T10:04:05.123456Z``."""
    if value.tzinfo is None:
        raise AuditError(f"time {value.isoformat()} has no timezone; use an aware UTC datetime")
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(value, what: str = "time") -> dt.datetime:
    """An aware datetime from a datetime or an ISO 8601 string (``Z`` allowed)."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise AuditError(f"{what} {value!r} is not an ISO 8601 time") from None
    else:
        raise AuditError(f"{what} must be an ISO 8601 string or a datetime, not {type(value).__name__}")
    if when.tzinfo is None:
        raise AuditError(f"{what} {value!s} has no timezone (add 'Z' for UTC)")
    return when.astimezone(dt.timezone.utc)


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _n(value: str | None) -> str:
    return "null" if value is None else _q(value)


def record_head(action, actor, actor_role, client, dataset) -> str:
    """Canonical record text up to (and including) the ``"details":`` key."""
    return (f'{{"action":{_q(action)},"actor":{_q(actor)},"actor_role":{_q(actor_role)},'
            f'"client":{_n(client)},"dataset":{_n(dataset)},"details":')


def record_tail(event_id, outcome, project, received_at, seq, session, source, target, time, v) -> str:
    """Canonical record text after the details value; ``source`` None gives the v1 layout (no key)."""
    src = "" if source is None else f',"source":{_q(source)}'
    return (f',"id":{_q(event_id)},"outcome":{_q(outcome)},"project":{_n(project)},'
            f'"received_at":{_q(received_at)},"seq":{seq},"session":{_n(session)}{src},'
            f'"target":{_q(target)},"time":{_q(time)},"v":{v}}}')


def canonical_record(event: "Event", seq: int, received_at: str) -> str:
    """The text that is stored and hashed for ``event`` sealed at ``seq``."""
    return (record_head(event.action, event.actor, event.actor_role, event.client, event.dataset)
            + event.details_json
            + record_tail(event.id, event.outcome, event.project, received_at, seq, event.session,
                          event.source, event.target, event.time_text, SCHEMA_VERSION))


def encodes(value: str) -> bool:
    """Whether ``value`` can be stored as text: UTF-8 has no form for half of a surrogate pair,
    which a JSON string (``"\\ud800"``) or a file name decoded with surrogateescape may hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(name: str, value, *, optional: bool, allow_empty: bool = False) -> None:
    if value is None:
        if optional:
            return
        raise AuditError(f"{name} is required")
    if not isinstance(value, str):
        raise AuditError(f"{name} must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise AuditError(f"{name} must not be empty" + (" (use None)" if optional else ""))
    limit = LIMITS.get(name, 255)
    if len(value) > limit:
        raise AuditError(f"{name} is {len(value)} characters long; at most {limit} are stored")
    if name != "target" and _CONTROL.search(value):
        raise AuditError(f"{name} {value!r} contains control characters")
    if "\x00" in value:
        raise AuditError(f"{name} contains a NUL character")
    if not encodes(value):
        raise AuditError(f"{name} contains invalid Unicode (a lone surrogate)")


def storable(name: str, value) -> bool:
    """Whether ``value`` could be an event's ``name`` field (project, dataset, session, client):
    for recording a refused request's own words only where they are fit to be kept."""
    try:
        _check_text(name, value, optional=False)
    except AuditError:
        return False
    return True


@dataclass(frozen=True)
class Event:
    """One audit event (schema version :data:`SCHEMA_VERSION`). Validated on construction."""

    action: str
    actor: str
    actor_role: str
    outcome: str = "ok"
    target: str = ""
    project: str | None = None
    dataset: str | None = None
    session: str | None = None
    client: str | None = None
    details: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: dt.datetime = field(default_factory=utcnow)
    source: str = "hub"

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise AuditError(f"unknown action {self.action!r}; see vre.audit.ACTIONS "
                             f"(e.g. {', '.join(list(ACTIONS)[:4])}, ...)")
        _check_text("actor", self.actor, optional=False)
        if self.actor_role not in ACTOR_ROLES:
            raise AuditError(f"actor_role {self.actor_role!r} must be one of {', '.join(ACTOR_ROLES)}")
        if self.outcome not in OUTCOMES:
            raise AuditError(f"outcome {self.outcome!r} must be one of {', '.join(OUTCOMES)}")
        if self.source not in SOURCES:
            raise AuditError(f"source {self.source!r} must be one of {', '.join(SOURCES)}")
        _check_text("target", self.target, optional=False, allow_empty=True)
        for name in ("project", "dataset", "session", "client"):
            _check_text(name, getattr(self, name), optional=True)
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise AuditError(f"id {self.id!r} must be 1-64 characters of letters, digits and ._:@+-")
        if not isinstance(self.time, dt.datetime):
            raise AuditError(f"time must be a datetime, not {type(self.time).__name__}")
        if self.time.tzinfo is None:
            raise AuditError("time must be timezone-aware (UTC)")
        if self.time.tzinfo is not dt.timezone.utc:
            object.__setattr__(self, "time", self.time.astimezone(dt.timezone.utc))
        if not isinstance(self.details, dict):
            raise AuditError(f"details must be a dict, not {type(self.details).__name__}")
        try:
            details_json = canonical_json(self.details)
        except (TypeError, ValueError) as e:
            raise AuditError(f"details are not JSON-serialisable: {e}") from None
        try:
            size = len(details_json.encode("utf-8"))
        except UnicodeEncodeError:
            raise AuditError("details contain invalid Unicode (a lone surrogate)") from None
        if size > MAX_DETAILS_BYTES:
            raise AuditError(f"details are {size} bytes as JSON; at most {MAX_DETAILS_BYTES} are stored")
        # Cached derived values (not fields): what the store writes.
        object.__setattr__(self, "details_json", details_json)
        object.__setattr__(self, "time_text", format_time(self.time))

    def to_dict(self) -> dict:
        """JSON-ready: the time as ISO 8601 with ``Z``, details as JSON values, ``v`` the schema version."""
        return {
            "v": SCHEMA_VERSION, "id": self.id, "time": self.time_text, "actor": self.actor,
            "actor_role": self.actor_role, "action": self.action, "outcome": self.outcome,
            "target": self.target, "project": self.project, "dataset": self.dataset,
            "session": self.session, "client": self.client, "source": self.source,
            "details": json.loads(self.details_json),
        }

    #: Keys a stored record carries besides the event's own (accepted and ignored by from_dict).
    _STORE_KEYS = frozenset({"seq", "received_at", "hash", "prev_hash"})

    @classmethod
    def from_dict(cls, data: dict) -> "Event":
        """An Event from ``to_dict()`` output (or a stored record); AuditError says what is wrong.

        ``source`` is taken as given (default "hub", as for any new Event; v1 data has none), so
        never build events from untrusted input with this: the session ingest sets its own."""
        if not isinstance(data, dict):
            raise AuditError(f"an event must be a JSON object, not {type(data).__name__}")
        known = {"v", "id", "time", "actor", "actor_role", "action", "outcome", "target", "project",
                 "dataset", "session", "client", "details", "source"}
        unknown = sorted(set(data) - known - cls._STORE_KEYS)
        if unknown:
            raise AuditError(f"unknown event field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        v = data.get("v", SCHEMA_VERSION)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= SCHEMA_VERSION:
            raise AuditError(f"schema version v={v!r} is not supported (this VRE writes v={SCHEMA_VERSION})")
        if v < 2 and data.get("source") is not None:
            raise AuditError(f"schema version v={v} has no source (added in v=2)")
        for required in ("action", "actor", "actor_role"):
            if required not in data:
                raise AuditError(f"event field {required!r} is required")
        kwargs = {k: data[k] for k in ("action", "actor", "actor_role", "outcome", "target", "project",
                                       "dataset", "session", "client", "details", "id", "source") if k in data}
        for k in ("details", "target", "source"):  # null: the default (a v1 record's missing source too)
            if kwargs.get(k) is None:
                kwargs.pop(k, None)
        if "time" in data and data["time"] is not None:
            kwargs["time"] = parse_time(data["time"])
        return cls(**kwargs)
