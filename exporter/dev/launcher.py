"""``make run``: one command that brings up the whole portal on the embedded defaults.

Migrates the database, loads demo data once, uses the Redis at ``REDIS_URL`` if it answers or
else starts a private one it owns, then starts a worker and the Streamlit UI. A worker that
exits is started again (after a pause that grows to 30 s while it keeps exiting at once); the
UI exiting ends the launcher. Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from exporter import services
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import PrivateRedis, redis_answers

MAX_RESTART_PAUSE = 30.0


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8501, demo: bool = True) -> int:
    """Start Redis (if needed), a worker and the UI; block until one exits or Ctrl-C."""
    services.migrate(settings)
    if demo:
        print(
            services.load_demo(settings, only_if_empty=True, release_projects=True).message,
            flush=True,
        )
    private: PrivateRedis | None = None
    env = settings.child_environ()
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a launcher started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if redis_answers(settings.redis_url):
            print(f"Using the Redis at {settings.redis_url}", flush=True)
        else:
            private = PrivateRedis().start()
            env["REDIS_URL"] = private.url
            print(
                f"No Redis at {settings.redis_url}: started a private one at {private.url}",
                flush=True,
            )
        # Children get their own sessions: a terminal's Ctrl-C reaches only this launcher,
        # which then stops them in order (UI, worker, Redis) and waits for each.
        children.append(_start_worker(env))
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamlit",
                    "run",
                    str(PROJECT_ROOT / "app.py"),
                    "--server.address",
                    host,
                    "--server.port",
                    str(port),
                    "--server.headless",
                    "true",
                    "--browser.gatherUsageStats",
                    "false",
                ],
                env=env,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )
        )
        print(
            f"Portal: http://{host}:{port}  (Ctrl-C stops the portal, worker and Redis)", flush=True
        )
        ui = children[1]
        started, pause, restart_at = time.monotonic(), 1.0, 0.0
        while ui.poll() is None:
            time.sleep(0.5)
            worker = children[0]
            if worker.poll() is None:
                continue
            now = time.monotonic()
            if not restart_at:
                # One that ran a while is restarted at once; one that keeps dying, slower.
                pause = 1.0 if now - started > 60 else min(pause * 2, MAX_RESTART_PAUSE)
                restart_at = now + pause
                print(
                    f"The worker exited (status {worker.returncode}): starting it again in "
                    f"{pause:.0f} s",
                    flush=True,
                )
            elif now >= restart_at:
                children[0], started, restart_at = _start_worker(env), now, 0.0
        return 1 if ui.returncode not in (None, 0) else 0
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            _stop_child(child)
        if private is not None:
            private.stop()
        print("Stopped.", flush=True)


def _start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "worker.py")], env=env, start_new_session=True
    )


def _stop_child(child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM (an RQ worker then finishes its current job), then after ``grace`` seconds
    SIGKILL to the child's process group. An RQ work-horse has a group of its own and can
    outlive that; the job reconciler marks such an export failed."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
