"""Tamper-evident audit trail: one event schema, a hash-chained append-only store with signed
checkpoints, verification, SIEM export and the ``vre audit`` commands.

    from vre.audit.events import emit
    emit(settings, "dataset.register", actor="alice", actor_role="admin", dataset="lung1")

:mod:`vre.audit.events` is the one way to write events. See :mod:`vre.audit.schema` (events), :mod:`vre.audit.store` (storage, concurrency, durability) and
:mod:`vre.audit.verify` (what verification proves, and its limits).
"""

from __future__ import annotations

import threading

from .schema import ACTIONS, ACTOR_ROLES, OUTCOMES, SCHEMA_VERSION, SOURCES, AuditError, Event
from .store import AuditStore
from .verify import VerifyReport

__all__ = ["ACTIONS", "ACTOR_ROLES", "OUTCOMES", "SCHEMA_VERSION", "SOURCES", "AuditError", "AuditStore", "Event",
           "VerifyReport", "open_store", "checkpoint_file"]

_stores: dict[str, AuditStore] = {}
_lock = threading.Lock()


def checkpoint_file(settings):
    """Where the copy of the signed checkpoints lives: ``state_dir/audit/checkpoints.jsonl``."""
    return settings.state_dir / "audit" / "checkpoints.jsonl"


def open_store(settings) -> AuditStore:
    """The process's store for ``settings.vre_db_url`` (one per URL), signing with the key in
    ``settings.secrets_dir``. The database must be migrated (``vre.db.upgrade``)."""
    url = settings.vre_db_url
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = AuditStore(url, settings.secrets_dir, checkpoint_file=checkpoint_file(settings))
        return store
