"""Shared fixtures: settings on SQLite and PostgreSQL, a private Redis, demo users.

Nothing here skips for a missing service: ``make test`` (scripts/test-deps) installs and starts
what the suite needs, and a test that cannot reach it fails with a message saying so.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from redis import Redis
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from exporter import services
from exporter.config import Settings
from exporter.dev.redis_server import PrivateRedis, free_port
from exporter.store import db
from exporter.store.models import Base

PG_ADMIN_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]


def make_settings(
    tmp: Path, database_url: str, redis_url: str = "redis://127.0.0.1:1/0"
) -> Settings:
    """Settings for a test: everything under ``tmp``; no .env file, no process environment."""
    return Settings.load(
        environ={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_ROOT": str(tmp / "data"),
            "EXPORT_ROOT": str(tmp / "exports"),
        },
        env_file=tmp / "no.env",
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy (migrations take ~0.3 s)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    services.migrate(make_settings(path.parent, f"sqlite:///{path}"))
    db.engine_for(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this run, migrated once, dropped at the end."""
    name = f"exporter_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the message must say what to do, not skip
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.__class__.__name__}): run "
            "'make test' (it starts PostgreSQL) or set TEST_DATABASE_URL",
            pytrace=False,
        )
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    services.migrate(make_settings(Path("/nonexistent"), url))
    yield url
    db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "portal.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        db.engine_for(url).dispose()
        return
    url = request.getfixturevalue("pg_database")
    engine = db.engine_for(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables if t.name != "modality")
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedis]:
    """The suite's own Redis on a free port: never the shared one on 6379."""
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB filesystem (tmpfs) that fills up; mounting it needs root (CI is root)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)])
    assert mounted.returncode == 0, (
        "this test mounts a 3 MiB tmpfs: run the suite as root (CI does)"
    )
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def demo(settings: Settings) -> Settings:
    """Settings with the small demo dataset (12 + 3 patients) registered and demo users."""
    services.load_demo(settings, patients=12, seed=1)
    return settings


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: CI installs and starts everything the suite needs."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"CI=true: {skipped} skipped test(s) count as failures", red=True)


@pytest.fixture
def portal_env(
    tmp_path: Path, database_url: str, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    """Make the process environment a test portal's (jobs and the API read it), with a
    flushed Redis; call it with extra settings, e.g. ``portal_env(PORTAL_ENV="production")``."""
    from exporter.api import routes as api

    def make(**extra: str) -> Settings:
        Redis.from_url(redis_server.url).flushall()
        env = {
            "DATABASE_URL": database_url,
            "DATA_ROOT": str(tmp_path / "data"),
            "EXPORT_ROOT": str(tmp_path / "exports"),
            "REDIS_URL": redis_server.url,
            "DISK_RESERVE": "1MiB",
            **extra,
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        api.settings.cache_clear()
        return Settings.load(env_file=tmp_path / "none.env")

    yield make
    api.settings.cache_clear()


SIGN_IN_PROXY = ("192.0.2.10", 50000)  # the sign-in proxy API tests stand in for (TRUSTED_PROXIES)


@pytest.fixture
def api_portal(portal_env) -> Callable[..., tuple[TestClient, Settings]]:  # type: ignore[no-untyped-def]
    """A production portal on three demo patients, reached through the whole API stack (the
    identity guard included) from the trusted sign-in proxy; call it with extra settings."""
    from exporter.api import routes as api

    def make(**extra: str) -> tuple[TestClient, Settings]:
        settings = portal_env(PORTAL_ENV="production", TRUSTED_PROXIES=SIGN_IN_PROXY[0], **extra)
        services.load_demo(settings, patients=3, seed=2)
        return TestClient(api.application(), client=SIGN_IN_PROXY), settings

    return make


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Inbox]]:
    """A real SMTP server on loopback that keeps what it receives."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


@pytest.fixture
def portal(
    tmp_path: Path,
    database_url: str,
    redis_server: PrivateRedis,
    smtp: tuple[int, Inbox],
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Demo data, a flushed Redis, and the environment the jobs (and worker processes) read."""
    Redis.from_url(redis_server.url).flushall()
    smtp[1].messages.clear()
    env = {
        "DATABASE_URL": database_url,
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": redis_server.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp[0]),
        "PORTAL_URL": "https://portal.example.org",
        "DISK_RESERVE": "1MiB",
        "STALE_AFTER": "10",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load(env_file=tmp_path / "none.env")
    services.load_demo(settings, patients=4, seed=3)
    return settings


@pytest.fixture
def ui_portal(
    tmp_path: Path, database_url: str, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Demo data (4 patients) for the pages, the researcher as development user, and fresh
    Streamlit caches."""
    import streamlit as st

    Redis.from_url(redis_server.url).flushall()
    for key, value in {
        "DATABASE_URL": database_url,
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": redis_server.url,
        "DISK_RESERVE": "1MiB",
        "PORTAL_DEV_USER": "researcher@demo.example",
    }.items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    st.cache_data.clear()
    settings = Settings.load(env_file=tmp_path / "none.env")
    services.load_demo(settings, patients=4, seed=6)
    yield settings
    st.cache_resource.clear()
    st.cache_data.clear()
