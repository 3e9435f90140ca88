"""The RQ worker process on the exports queue, with the portal's settings.

Run one per core and per machine (``python worker.py``), or ``rq worker-pool -n N -w
exporter.jobs.worker.PortalWorker exports`` with the same ``REDIS_URL``; every worker shares the
same database and storage. Each worker reconciles at start and every ``MAINTENANCE_SECONDS``:
exports whose worker died are failed and cleaned up, lost queue entries are re-enqueued, and
expired exports' files are removed.

Each job runs in a work-horse that is a fresh interpreter (``posix_spawn``), not a fork of the
worker: a fork copies the locks other threads hold at that moment (RQ's own pub/sub thread,
housekeeping, SQLAlchemy's mapper mutex, the import lock), and a work-horse that needs one of
them waits for ever. A spawned work-horse costs about 0.7 s of start-up per job and keeps the
isolation a fork gave: its own process and process group, killed on timeout or cancel.

A Redis or database outage does not end the worker: the job in flight runs on (it needs only
the database) and ends completed or failed; the worker waits for Redis with a bounded backoff
and goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time
from typing import Any

import redis
from redis import Redis
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.worker import SpawnWorker, WorkerStatus

from exporter.config import Settings
from exporter.jobs import upkeep
from exporter.jobs.queue import QUEUE_NAME, connect, export_queue

MAINTENANCE_SECONDS = 30
LOCK = "exporter:housekeeping"
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
MAX_BACKOFF_SECONDS = 30.0
LOG_FORMAT = "%(asctime)s worker %(levelname)s %(message)s"
log = logging.getLogger(__name__)


class PortalWorker(SpawnWorker):
    """An RQ worker with spawned work-horses that rides out Redis outages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        # The idle wait for a job is worker_ttl - 15 s.
        kwargs.setdefault("worker_ttl", MAINTENANCE_SECONDS + 15)
        super().__init__(*args, **kwargs)
        self._redis_lost_at: float | None = None

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # A spawned work-horse starts with no logging set up: the job's log lines would go.
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        # The work-horse died (killed, out of memory, timed out): say so on the export now,
        # not when the reconciler finds its heartbeat stale a minute and a half later.
        try:
            upkeep.horse_died(Settings.load(), job.func_name or "", tuple(job.args))
        except Exception as exc:  # the reconciler still fails it later
            # The class, not the text: a database error's text may quote stored values.
            log.error(
                "could not record that the work-horse of job %s died: %s",
                job.id,
                type(exc).__name__,
            )

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_ERRORS as exc:
            # The work-horse needs only the database: let it finish (it enforces its own
            # timeout), then wait for Redis rather than quit.
            self._lost_redis(exc)
            if self._horse_pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self._horse_pid, 0)
                self._horse_pid = 0
            self.wait_for_redis()

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_ERRORS as exc:
            self._lost_redis(exc)  # the job runs on; RQ's registries catch up later

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # only queued here; the pipeline's execute() may raise
            super().heartbeat(timeout, pipeline)
            return
        try:
            super().heartbeat(timeout)
        except REDIS_ERRORS as exc:
            self._lost_redis(exc)

    def set_state(self, state: Any, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
            return
        try:
            super().set_state(state)
        except REDIS_ERRORS as exc:
            self._lost_redis(exc)
        if state == WorkerStatus.IDLE and self._stop_requested:
            # A stop asked for after RQ's last check but while it still called the worker
            # busy (between two jobs) would wait out the whole idle wait for a job (30 s)
            # before it is seen: stop before that wait begins.
            raise StopRequested()

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_ERRORS as exc:
            self._lost_redis(exc)
            self.wait_for_redis()

    def run_maintenance_tasks(self) -> None:
        first = self.last_cleaned_at is None  # read before RQ sets it
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            self._lost_redis(exc)
        # Between jobs, also under `rq worker-pool` (which never calls main()); a worker that
        # just started reconciles whoever else holds the lock.
        housekeep(self.connection, force=first)

    def _lost_redis(self, exc: Exception) -> None:
        if self._redis_lost_at is None:
            self._redis_lost_at = time.monotonic()
            log.warning("Redis unreachable (%s): the job in flight goes on; waiting", exc)

    def wait_for_redis(self) -> None:
        """Block until Redis answers again (backoff 1 s, doubling, at most 30 s between
        tries), then register this worker again if Redis lost it (a restart empties it)."""
        wait = 1.0
        while not self._stop_requested:
            try:
                self.connection.ping()
                if not self.connection.exists(self.key):
                    self.register_birth()  # type: ignore[no-untyped-call]
                break
            except REDIS_ERRORS:
                time.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF_SECONDS)
        if self._redis_lost_at is not None and not self._stop_requested:
            log.warning("Redis is back after %.0f s", time.monotonic() - self._redis_lost_at)
            self._redis_lost_at = None


def housekeep(connection: Redis, force: bool = False) -> None:
    """Reconcile and expire, by one worker at a time across all machines (a Redis lock);
    ``force`` runs it regardless (a worker that just started)."""
    try:
        if not force and not connection.set(LOCK, "1", nx=True, ex=MAINTENANCE_SECONDS - 5):
            return
        settings = Settings.load()
        counts = upkeep.reconcile(settings, connection)
        counts["expired"] = upkeep.expire(settings)
        counts["moved_out_files_deleted"] = upkeep.finish_moves(settings)
        if any(counts.values()):
            log.info("housekeeping: %s", counts)
    except Exception as exc:  # housekeeping must never stop the worker (Redis or DB down)
        log.warning("housekeeping skipped: %s: %s", type(exc).__name__, exc)


def _housekeeping_thread(connection: Redis, stop: threading.Event) -> None:
    # RQ runs maintenance only between jobs; a worker busy with a 40-minute export must
    # still notice, within a minute, that another machine died mid-export. (A thread is safe
    # here only because work-horses are spawned, not forked.)
    while not stop.wait(MAINTENANCE_SECONDS):
        housekeep(connection)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and work the exports queue until stopped (or empty, with --burst)."""
    parser = argparse.ArgumentParser(prog="worker.py", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: host and pid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
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
