"""Seal the audit trail at intervals, even when nothing is being written.

Checkpoints are also made as events are appended; this keeps the unsealed tail short during quiet
periods, which is what makes truncating the tail detectable. Run by the hub as a managed service
(``python -m vre.audit.sealer``): it starts, stops and restarts with the hub, dies with it, and
is the only sealer of its instance (``vre.services``).
"""

from __future__ import annotations

import logging
import signal

from ..services import die_with_hub, hub_gone, take_over
from ..settings import load
from . import open_store

INTERVAL = 60.0
#: How long the last seal on the way out may take. A hub that stops its services escalates to
#: SIGKILL; an orphan (its hub killed) has no one to do that, so it sets an alarm.
LAST_SEAL_SECONDS = 30
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}  # the hub stops its services with SIGINT


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-sealer] %(message)s")
    log = logging.getLogger("vre.audit.sealer")
    # The stop signals stay pending until the loop asks for them (no handler runs between two
    # bytecodes of a lock's wait: a handler that sets an Event can deadlock the process).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    die_with_hub()
    settings = load()
    lock = take_over(settings.run_dir / "audit-sealer.lock", "audit sealer", log)  # noqa: F841 (held)
    store = open_store(settings)
    while signal.sigtimedwait(STOP_SIGNALS, INTERVAL) is None and not hub_gone():
        try:
            checkpoint = store.checkpoint()
            if checkpoint:
                log.info("sealed the audit trail at seq %s", checkpoint["seq"])
        except Exception:  # the database may be briefly unavailable; try again next time
            log.exception("could not seal the audit trail")
    signal.alarm(LAST_SEAL_SECONDS)
    store.checkpoint()


if __name__ == "__main__":
    main()
