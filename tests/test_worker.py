"""The worker under faults: a lock held at fork time, a Redis outage, a PostgreSQL restart.

Real processes throughout: ``python worker.py`` (or tests/fork_probe.py), a private Redis
that is stopped and started again on the same port, and a throwaway PostgreSQL cluster
that is stopped mid-export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from exporter import services
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import PrivateRedis, free_port
from exporter.jobs import tasks as jobs
from exporter.jobs import upkeep
from exporter.schemas import ExportView
from tests import fork_probe
from tests.test_jobs import ME, request, row_of, wait_for

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": redis_url,
        "DISK_RESERVE": "1MiB",
        "STALE_AFTER": "60",
    }


def _settings(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings.load(environ=env, env_file=tmp_path / "none.env")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The process and its work-horses (each in a process group of its own)."""
    for pid in _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _descendants(k)]


@pytest.fixture
def queue_redis() -> Iterator[PrivateRedis]:
    """A Redis for this test alone: the outage test stops it."""
    server = PrivateRedis().start()
    yield server
    server.stop()


def test_a_forked_work_horse_hangs_on_a_lock_held_at_fork_a_spawned_one_runs(
    tmp_path: Path, sqlite_template: Path, queue_redis: PrivateRedis
) -> None:
    db_path = tmp_path / "portal.db"
    shutil.copy(sqlite_template, db_path)
    env = _env(tmp_path, f"sqlite:///{db_path}", queue_redis.url)
    settings = _settings(env, tmp_path)
    services.load_demo(settings, patients=2, seed=5)
    first = services.create_export(settings, ME, "demo", request(modalities=["ios"]))

    # Before: RQ's forking worker, another thread holding the mapper mutex at the fork.
    probe = _start(["-m", "tests.fork_probe", "fork"], env, tmp_path / "fork.log")
    try:
        # The parent lets go of the lock after 8 s; a small export takes about a second.
        time.sleep(fork_probe.HOLD_SECONDS + 10)
        assert probe.poll() is None, "the forking worker finished: the deadlock did not happen"
        horses = _descendants(probe.pid)
        assert horses, "no work-horse: the job was not even started"
        # Stuck: long after the lock was let go, the export has not moved on (where the child
        # hangs, before or after its first write, depends on what the parent had configured).
        assert row_of(settings, first.id).status in ("pending", "processing")
    finally:
        _stop(probe)

    # After: the portal's worker, the same thread holding the same lock.
    Redis.from_url(queue_redis.url).flushall()
    second = services.create_export(
        settings, ME, "demo", request(modalities=["ios"], name="after the fix")
    )
    probe = _start(["-m", "tests.fork_probe", "spawn"], env, tmp_path / "spawn.log")
    try:
        assert probe.wait(60) == 0, (tmp_path / "spawn.log").read_text()[-2000:]
    finally:
        if probe.poll() is None:
            _stop(probe)
    assert row_of(settings, second.id).status == "completed"


def _big_export_under_way(
    tmp_path: Path, sqlite_template: Path, queue_redis: PrivateRedis, **extra: str
) -> tuple[Settings, ExportView, subprocess.Popen[bytes], Path]:
    """A medium demo portal on SQLite, a deflated export of it, and ``python worker.py``
    building it (the export is processing when this returns)."""
    db_path = tmp_path / "portal.db"
    shutil.copy(sqlite_template, db_path)
    env = {**_env(tmp_path, f"sqlite:///{db_path}", queue_redis.url), **extra}
    settings = _settings(env, tmp_path)
    services.load_demo(settings, patients=6, seed=4, scale="medium")
    big = services.create_export(settings, ME, "demo", request(compression="small"))
    log = tmp_path / "worker.log"
    worker = _start([str(PROJECT_ROOT / "worker.py")], env, log)
    try:
        wait_for(lambda: row_of(settings, big.id).status == "processing", 60, "the export to start")
    except BaseException:
        _stop(worker)
        raise
    return settings, big, worker, log


def test_worker_survives_a_redis_outage_during_a_job(
    tmp_path: Path, sqlite_template: Path, queue_redis: PrivateRedis
) -> None:
    settings, big, worker, log = _big_export_under_way(tmp_path, sqlite_template, queue_redis)
    try:
        queue_redis.stop()  # Redis goes away mid-job, for 15 s
        time.sleep(15)
        assert worker.poll() is None, "the worker quit when Redis went away:\n" + log.read_text()
        back = PrivateRedis(workdir=queue_redis.workdir, port=queue_redis.port).start()
        wait_for(
            lambda: row_of(settings, big.id).status in ("completed", "failed"),
            120,
            "the export in flight to end",
        )
        row = row_of(settings, big.id)
        assert row.status == "completed", row.error_message
        assert worker.poll() is None, "the worker quit after the outage:\n" + log.read_text()
        assert "Redis unreachable" in log.read_text()
        # and it goes on working: the next export runs on the same worker
        after = services.create_export(
            settings, ME, "demo", request(modalities=["ios"], name="after the outage")
        )
        wait_for(lambda: row_of(settings, after.id).status == "completed", 90, "the next export")
        assert worker.poll() is None
    finally:
        _stop(worker)
        if "back" in locals():
            back.stop()


def test_a_killed_work_horse_fails_its_export_at_once_and_the_worker_goes_on(
    tmp_path: Path, sqlite_template: Path, queue_redis: PrivateRedis
) -> None:
    settings, big, worker, log = _big_export_under_way(
        tmp_path, sqlite_template, queue_redis, STALE_AFTER="600"
    )
    try:
        (horse, *_) = _descendants(worker.pid)
        os.kill(horse, signal.SIGKILL)  # out of memory, say: the worker itself lives on
        killed = time.monotonic()
        wait_for(lambda: row_of(settings, big.id).status == "failed", 30, "the export to fail")
        assert time.monotonic() - killed < 30, "failed by the worker, not by a stale heartbeat"
        assert row_of(settings, big.id).error_message == upkeep.WORKER_DIED
        assert not list((settings.export_root / big.id).glob("*")), "a partial file was left"
        after = services.create_export(settings, ME, "demo", request(modalities=["ios"]))
        wait_for(lambda: row_of(settings, after.id).status == "completed", 90, "the next export")
        assert worker.poll() is None, log.read_text()
    finally:
        _stop(worker)


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (initdb in a temporary directory, a free port), so that
    stopping it touches nothing else on the machine."""

    def __init__(self, root: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert found, "PostgreSQL's server binaries are missing: run 'make test' (it installs them)"
        self.bin = found[-1].parent
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            shutil.chown(root, "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_postgres, str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data.parent / "pg.log"),
            "-o",
            f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    # Not under pytest's tmp_path: the postgres user cannot enter root's private directory.
    root = Path(tempfile.mkdtemp(prefix="portal-pg-"))
    pg = ThrowawayPostgres(root)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        subprocess.run(
            [
                *pg.as_postgres,
                str(pg.bin / "pg_ctl"),
                "-D",
                str(pg.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_worker_survives_a_postgresql_restart_during_a_job(
    tmp_path: Path, throwaway_pg: ThrowawayPostgres, queue_redis: PrivateRedis
) -> None:
    env = _env(tmp_path, throwaway_pg.url, queue_redis.url)
    settings = _settings(env, tmp_path)
    services.migrate(settings)
    services.load_demo(settings, patients=6, seed=4, scale="medium")
    big = services.create_export(settings, ME, "demo", request(compression="small"))
    log = tmp_path / "worker.log"
    worker = _start([str(PROJECT_ROOT / "worker.py")], env, log)
    try:
        wait_for(lambda: row_of(settings, big.id).files_done > 0, 60, "the export to make progress")
        throwaway_pg.stop()  # every connection is cut; down for 8 s
        time.sleep(8)
        assert worker.poll() is None, "the worker quit when PostgreSQL went away"
        throwaway_pg.start()
        wait_for(
            lambda: row_of(settings, big.id).status in ("completed", "failed"),
            120,
            "the export in flight to end",
        )
        row = row_of(settings, big.id)
        print(f"after the PostgreSQL restart the export ended {row.status}: {row.error_message}")
        # Completed, since every write the job makes waits out an outage of up to a minute;
        # a failure must say what happened, not that the worker stopped.
        assert row.status == "completed" or row.error_message == jobs.DB_LOST, row.error_message
        assert row.error_message != upkeep.WORKER_DIED
        assert "database unreachable" in log.read_text()
        assert worker.poll() is None
        after = services.create_export(
            settings, ME, "demo", request(modalities=["ios"], name="after the restart")
        )
        wait_for(lambda: row_of(settings, after.id).status == "completed", 90, "the next export")
    finally:
        _stop(worker)


def test_a_stop_asked_for_between_two_jobs_does_not_wait_for_the_next_job(
    portal: Settings,
) -> None:
    """SIGTERM just after a job ended (RQ still calls the worker busy, past its last check
    of the stop flag) must stop the worker before it waits for the next job (30 s here):
    seen as a worker that took over 30 s to stop."""
    from rq.exceptions import StopRequested

    from exporter.jobs.queue import connect, export_queue
    from exporter.jobs.worker import PortalWorker

    connection = connect(portal)
    worker = PortalWorker([export_queue(portal, connection)], connection=connection)
    worker.register_birth()  # type: ignore[no-untyped-call]
    try:
        worker._stop_requested = True  # what request_stop sets while the worker is busy
        started = time.monotonic()
        with pytest.raises(StopRequested):
            worker.dequeue_job_and_maintain_ttl(timeout=30, max_idle_time=35)
        assert time.monotonic() - started < 25, "it waited for a job first"
    finally:
        worker.register_death()  # type: ignore[no-untyped-call]
