"""A worker process whose other thread holds SQLAlchemy's mapper mutex for its first
``HOLD_SECONDS``, as the housekeeping thread did when RQ forked a work-horse
(tests/test_worker.py runs it). A child forked meanwhile inherits the mutex locked by a thread
it does not have: it waits for ever, long after the parent let go.

    python -m tests.fork_probe fork|spawn

``fork`` works the queue with RQ's forking ``Worker`` (what the portal ran before), ``spawn``
with ``exporter.jobs.worker.PortalWorker``. Burst mode: exits when the queue is empty.
"""

from __future__ import annotations

import sys
import threading
import time

from redis import Redis
from rq import Worker
from sqlalchemy.orm.mapper import _CONFIGURE_MUTEX

from exporter.config import Settings
from exporter.jobs.queue import export_queue
from exporter.jobs.worker import PortalWorker

HOLD_SECONDS = 8


def _hold(held: threading.Event) -> None:
    with _CONFIGURE_MUTEX:  # what configuring the mappers takes, e.g. in housekeeping
        held.set()
        time.sleep(HOLD_SECONDS)


def main(kind: str) -> int:
    settings = Settings.load()
    connection = Redis.from_url(settings.redis_url)
    held = threading.Event()
    threading.Thread(target=_hold, args=(held,), daemon=True).start()
    held.wait()
    worker_class = Worker if kind == "fork" else PortalWorker
    worker_class([export_queue(settings, connection)], connection=connection).work(burst=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
