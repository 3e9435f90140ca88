"""The RQ worker process on the exports queue, with the portal's settings.

Run one per core and per machine (``python worker.py``), or ``rq worker-pool -n N exports``
with the same ``REDIS_URL``; every worker shares the same database and storage.
"""

from __future__ import annotations

import argparse
import logging

from rq import Worker

from exporter.config import Settings
from exporter.queue import QUEUE_NAME, connect, export_queue


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and work the exports queue until stopped (or empty, with --burst)."""
    parser = argparse.ArgumentParser(prog="worker.py", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: host and pid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    settings = Settings.load()
    connection = connect(settings)
    worker = Worker([export_queue(settings, connection)], connection=connection, name=args.name)
    logging.getLogger(__name__).info("listening on queue %r at %s", QUEUE_NAME, settings.redis_url)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0
