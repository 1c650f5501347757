"""The release record: what left the environment, signed with the audit key (SATRE 3.3.09).

A record is canonical JSON (the audit trail's canonical form: sorted keys, no whitespace, UTF-8)
of the released request: its files (released and withheld) with sizes and SHA-256 (a held job's
files that were not released without their names, sizes and hashes), every decision
with reviewer, phase and time, the state history, and the rules the submission was checked
against. It is signed with the audit trail's Ed25519 key (``vre.audit.keys``), so anyone with the
public key (``secrets_dir/audit_ed25519.pub``, kept off the host by the auditors) can check it:
``verify(text, signature, public_key)``, ``vre airlock verify ID``.
"""

from __future__ import annotations

import hashlib
import json

from ..audit.keys import PUBLIC_NAME, key_id, load_or_create, load_public, sign, signature_ok
from ..audit.schema import canonical_json, format_time
from ..db import AirlockRequest
from . import held
from .review import file_status, index

RECORD_VERSION = 1


def _t(value):
    return format_time(value) if value is not None else None


def build(req: AirlockRequest, *, released_by: str, released_at) -> dict:
    """The record of ``req`` as released now (files whose status is approved are the ones released)."""
    names = {r.reviewer_id: r.reviewer.name for r in req.reviews}
    by = index(req)
    files = []
    for f in req.files:
        status = file_status(req, f, by)
        row = {"id": f.id, "name": f.name, "path": f.path, "description": f.description, "size": f.size,
               "sha256": f.sha256, "version": f.version, "frozen_at": _t(f.frozen_at),
               "status": status, "released": status == "approved"}
        if held.is_held(f.path):
            # the author reads the record: a held file that stays inside stays withheld (the audit
            # trail's review events name it, with its hash)
            row = {**row, "held": True} if row["released"] else held.redact(row)
        files.append(row)
    return {
        "record_version": RECORD_VERSION,
        "request": req.id,
        "project": req.project.slug,
        "author": req.author.name,
        "title": req.title,
        "justification": req.justification,
        "created_at": _t(req.created_at),
        "submitted_at": _t(req.submitted_at),
        "released_at": _t(released_at),
        "released_by": released_by,
        "reviews_required": req.reviews_required,
        "rules": req.rules,
        "files": files,
        "decisions": [{"file": r.file_id, "file_version": r.file_version, "reviewer": names[r.reviewer_id],
                       "decision": r.decision, "comment": r.comment, "phase": r.phase, "time": _t(r.created_at)}
                      for r in req.reviews],
        "history": [{"from": h.from_state, "to": h.to_state, "actor": h.actor, "comment": h.comment,
                     "time": _t(h.at)} for h in req.history],
    }


def sign_record(key_dir, record: dict) -> tuple[str, str]:
    """(canonical text, base64 signature) of ``record``, signed with the audit key in ``key_dir``."""
    key = load_or_create(key_dir)
    record = {**record, "key_id": key_id(key.public_key())}
    text = canonical_json(record)
    return text, sign(key, text)


def verify(text: str, signature: str, public_key) -> bool:
    """Whether ``signature`` is the audit key's over ``text`` (``public_key``: a key or a PEM path)."""
    if not hasattr(public_key, "verify"):
        public_key = load_public(public_key)
    return bool(text) and bool(signature) and signature_ok(public_key, text, signature)


def public_key_path(key_dir):
    from pathlib import Path

    return Path(key_dir) / PUBLIC_NAME


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def loads(text: str) -> dict:
    return json.loads(text)
