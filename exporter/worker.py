"""The RQ worker process on the exports queue, with the portal's settings.

Run one per core and per machine (``python worker.py``), or ``rq worker-pool -n N -w
exporter.worker.PortalWorker exports`` with the same ``REDIS_URL``; every worker shares the
same database and storage. Each worker reconciles at start and every ``MAINTENANCE_SECONDS``:
exports whose worker died are failed and cleaned up, lost queue entries are re-enqueued, and
expired exports' files are removed.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from rq import Worker

from exporter import jobs
from exporter.config import Settings
from exporter.queue import QUEUE_NAME, connect, export_queue

MAINTENANCE_SECONDS = 30
log = logging.getLogger(__name__)


class PortalWorker(Worker):
    """An RQ worker that also runs the portal's housekeeping between jobs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        # The idle wait for a job is worker_ttl - 15 s; housekeeping runs between waits.
        kwargs.setdefault("worker_ttl", MAINTENANCE_SECONDS + 15)
        super().__init__(*args, **kwargs)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        try:
            settings = Settings.load()
            counts = jobs.reconcile(settings, self.connection)
            counts["expired"] = jobs.expire(settings)
            if any(counts.values()):
                log.info("housekeeping: %s", counts)
        except Exception:  # housekeeping must never stop the worker
            log.exception("housekeeping failed")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and work the exports queue until stopped (or empty, with --burst)."""
    parser = argparse.ArgumentParser(prog="worker.py", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: host and pid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    settings = Settings.load()
    connection = connect(settings)
    worker = PortalWorker(
        [export_queue(settings, connection)], connection=connection, name=args.name
    )
    log.info("listening on queue %r at %s", QUEUE_NAME, settings.redis_url)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0
