"""`make run`'s launcher as a real process: private Redis, worker, UI, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from exporter.config import PROJECT_ROOT
from exporter.dev.redis_server import free_port, redis_answers


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def launch(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m exporter run` as `make run` starts it, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_run_starts_private_redis_worker_and_ui_and_stops_them(tmp_path: Path) -> None:
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.db'}",
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": dead_redis,
    }
    log = tmp_path / "launcher.log"
    proc = launch(port, env, log)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/_stcore/health"), 90, "the UI")
        text = log.read_text()
        assert "Demo data loaded: 15 patients in 2 projects" in text
        # the /api routes are served by the same process as the pages
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/demo/exports/nope/download/")
            raise AssertionError("an unknown export must not download")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            assert json.loads(exc.read())["error"]["type"] == "NotFound"
        match = re.search(r"started a private one at (redis://\S+)", text)
        assert match, text
        private = match.group(1)
        connection = Redis.from_url(private)
        wait_for(lambda: len(Worker.all(connection=connection)) == 1, 30, "the worker")
        worker = Worker.all(connection=connection)[0]
        assert worker.queue_names() == ["exports"]
        # a worker that dies is started again, and the UI stays up meanwhile
        os.kill(worker.pid, signal.SIGKILL)
        wait_for(
            lambda: {w.pid for w in Worker.all(connection=connection)} - {worker.pid},
            30,
            "a new worker after the first was killed",
        )
        assert "The worker exited (status -9): starting it again" in log.read_text()
        assert http_ok(f"http://127.0.0.1:{port}/_stcore/health")
        worker = next(w for w in Worker.all(connection=connection) if w.pid != worker.pid)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not cut clean-up short
        assert proc.wait(30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(worker.pid, 0)
        assert "Stopped." in log.read_text()
        assert not redis_answers(private), "the private Redis outlived the launcher"
        assert not http_ok(f"http://127.0.0.1:{port}/_stcore/health")
        # a second start finds the demo data and does not load it again
        proc = launch(port, env, log)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/_stcore/health"), 90, "the UI again")
        assert "Demo data already loaded (12 patients)" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
