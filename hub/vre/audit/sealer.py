"""Seal the audit trail at intervals, even when nothing is being written.

Checkpoints are also made as events are appended; this keeps the unsealed tail short during quiet
periods, which is what makes truncating the tail detectable. Run by the hub as a managed service
(``python -m vre.audit.sealer``): it starts, stops and restarts with the hub, dies with it, and
is the only sealer of its instance (``vre.services``).
"""

from __future__ import annotations

import logging
import signal
import threading

from ..services import die_with_hub, take_over
from ..settings import load
from . import open_store

INTERVAL = 60.0


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-sealer] %(message)s")
    log = logging.getLogger("vre.audit.sealer")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the hub stops its services with SIGINT
        signal.signal(sig, lambda *_: stop.set())
    die_with_hub()
    settings = load()
    lock = take_over(settings.run_dir / "audit-sealer.lock", "audit sealer", log)  # noqa: F841 (held)
    store = open_store(settings)
    while not stop.wait(INTERVAL):
        try:
            checkpoint = store.checkpoint()
            if checkpoint:
                log.info("sealed the audit trail at seq %s", checkpoint["seq"])
        except Exception:  # the database may be briefly unavailable; try again next time
            log.exception("could not seal the audit trail")
    store.checkpoint()


if __name__ == "__main__":
    main()
