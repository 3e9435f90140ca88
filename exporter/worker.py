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
import threading
from typing import Any

from redis import Redis
from rq import Worker

from exporter import jobs
from exporter.config import Settings
from exporter.queue import QUEUE_NAME, connect, export_queue

MAINTENANCE_SECONDS = 30
LOCK = "exporter:housekeeping"
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
        housekeep(self.connection, force=self.last_cleaned_at is None)


def housekeep(connection: Redis, force: bool = False) -> None:
    """Reconcile and expire, by one worker at a time across all machines (a Redis lock);
    ``force`` runs it regardless (a worker that just started)."""
    if not force and not connection.set(LOCK, "1", nx=True, ex=MAINTENANCE_SECONDS - 5):
        return
    try:
        settings = Settings.load()
        counts = jobs.reconcile(settings, connection)
        counts["expired"] = jobs.expire(settings)
        if any(counts.values()):
            log.info("housekeeping: %s", counts)
    except Exception:  # housekeeping must never stop the worker
        log.exception("housekeeping failed")


def _housekeeping_thread(connection: Redis, stop: threading.Event) -> None:
    # RQ runs maintenance only between jobs; a worker busy with a 40-minute export must
    # still notice, within a minute, that another machine died mid-export.
    while not stop.wait(MAINTENANCE_SECONDS):
        housekeep(connection)


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
    stop = threading.Event()
    threading.Thread(
        target=_housekeeping_thread, args=(connection, stop), name="housekeeping", daemon=True
    ).start()
    try:
        worker.work(burst=args.burst, with_scheduler=False)
    finally:
        stop.set()
    return 0
