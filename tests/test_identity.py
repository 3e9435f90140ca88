"""Identity fails closed: who may reach the portal, and whose X-Forwarded-User counts.

In process over the API behind the portal's middleware (``api.application()``, the peer address
set per client), and against the real ``streamlit run app.py`` for what only the real server
shows: the middleware in front of the pages' websocket, uvicorn's X-Forwarded-For rewriting,
and the refusal to start.
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from exporter import schemas, services
from exporter.api import routes as api
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import free_port
from exporter.errors import ConfigError
from exporter.schemas import ExportRequest
from exporter.store import db
from exporter.store.models import DatasetExport

ME = "researcher@demo.example"
PROXY = "10.0.0.2"
PORTAL = "https://portal.example.org"
BODY = {"folders": ["/"], "modalities": ["ios"], "name": "identity"}
CREATE = "/api/demo/exports/create/"


def exports(settings: Settings) -> int:
    """How many export rows the database holds."""
    with db.session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(DatasetExport)) or 0)


@pytest.fixture
def production(portal_env: Callable[..., Settings]) -> Settings:
    """Production behind a proxy at PROXY, users opening PORTAL; demo data."""
    settings = portal_env(PORTAL_ENV="production", TRUSTED_PROXIES=PROXY, PORTAL_URL=PORTAL)
    services.load_demo(settings, patients=3, seed=2)
    return settings


def client(peer: str, base_url: str = PORTAL) -> TestClient:
    """The API as app.py serves it, called from ``peer`` (the TCP address the portal sees)."""
    return TestClient(api.application(), base_url=base_url, client=(peer, 43210))


def test_a_spoofed_header_from_a_non_proxy_address_creates_nothing(production: Settings) -> None:
    as_me = {"X-Forwarded-User": ME}
    spoofed = client("203.0.113.5").post(CREATE, json=BODY, headers=as_me)
    assert spoofed.status_code == 403
    error = spoofed.json()["error"]
    assert error["type"] == "PermissionDenied"
    assert "203.0.113.5, which is not a trusted proxy" in error["message"]
    assert exports(production) == 0
    # reading is refused the same way: the header alone names nobody
    listed = client("203.0.113.5").get("/api/demo/exports/", headers=as_me)
    assert listed.status_code == 403
    # the same request through the proxy is the user's
    through_proxy = client(PROXY).post(CREATE, json=BODY, headers=as_me)
    assert through_proxy.status_code == 202, through_proxy.text
    assert exports(production) == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Forwarded-User", ME), ("X-Forwarded-User", "manager@demo.example")],
        [("X-Forwarded-User", f"{ME}, manager@demo.example")],  # how proxies join two
    ],
)
def test_two_identity_headers_are_refused(
    production: Settings, headers: list[tuple[str, str]]
) -> None:
    response = client(PROXY).post(CREATE, json=BODY, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "AmbiguousIdentity"
    assert "more than once" in response.json()["error"]["message"]
    assert exports(production) == 0


def test_x_forwarded_for_next_to_the_identity_header_is_refused(production: Settings) -> None:
    """The real server replaces the peer address with X-Forwarded-For's (see the server test
    below), so with it the proxy's address cannot be checked."""
    response = client(PROXY).post(
        CREATE, json=BODY, headers={"X-Forwarded-User": ME, "X-Forwarded-For": "198.51.100.9"}
    )
    assert response.status_code == 403
    assert 'proxy_set_header X-Forwarded-For ""' in response.json()["error"]["message"]
    assert exports(production) == 0


def test_a_cross_origin_post_neither_creates_nor_cancels(production: Settings) -> None:
    """The form a page on another site can send without asking: text/plain, JSON inside."""
    http = client(PROXY)
    evil = {"X-Forwarded-User": ME, "Origin": "https://evil.example", "Content-Type": "text/plain"}
    created = http.post(CREATE, content=b'{"folders": ["/"], "modalities": ["ios"]}', headers=evil)
    assert created.status_code == 403
    assert "https://evil.example may not change exports" in created.json()["error"]["message"]
    assert exports(production) == 0
    selection = schemas.parse_selection(folders=["/"], modalities=["ios"])
    view = services.create_export(production, ME, "demo", ExportRequest(selection=selection))
    cancel = f"/api/demo/exports/{view.id}/cancel/"
    assert http.post(cancel, headers=evil).status_code == 403
    assert http.delete(f"/api/demo/exports/{view.id}/", headers=evil).status_code == 403
    assert services.get_export(production, ME, view.id).status == "pending"
    # an Origin that only looks like the portal's is another origin too
    lookalike = {**evil, "Origin": PORTAL + ".evil.example", "Content-Type": "application/json"}
    assert http.post(cancel, headers=lookalike).status_code == 403
    assert services.get_export(production, ME, view.id).status == "pending"


def test_a_cross_origin_post_is_refused_under_a_root_path_too(production: Settings) -> None:
    """Served under a prefix (``uvicorn --root-path /portal``, a proxy's sub-path) the path the
    server sees starts with the prefix: the checks still apply (an adversarial run found the
    export made)."""
    http = TestClient(
        api.application(), base_url=PORTAL, client=(PROXY, 43210), root_path="/portal"
    )
    evil = {"X-Forwarded-User": ME, "Origin": "https://evil.example", "Content-Type": "text/plain"}
    body = b'{"folders": ["/"], "modalities": ["ios"]}'
    created = http.post("/portal" + CREATE, content=body, headers=evil)
    assert created.status_code == 403, created.text[:200]
    plain = http.post("/portal" + CREATE, content=body, headers={"X-Forwarded-User": ME})
    assert plain.status_code == 415, plain.text[:200]
    assert exports(production) == 0


def test_an_identity_header_that_is_not_ascii_is_refused(production: Settings) -> None:
    """Header bytes are read as Latin-1: a UTF-8 address would sign in as another string."""
    http = client(PROXY)
    answer = http.get(
        "/api/demo/exports/", headers=[(b"X-Forwarded-User", "résearcher@demo.example".encode())]
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "InvalidIdentity"
    assert "ASCII" in answer.json()["error"]["message"]


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_browser_request_from_another_site_is_refused(production: Settings, site: str) -> None:
    response = client(PROXY).post(
        CREATE, json=BODY, headers={"X-Forwarded-User": ME, "Sec-Fetch-Site": site}
    )
    assert response.status_code == 403
    assert f"A {site} browser request may not change exports" in response.json()["error"]["message"]
    assert exports(production) == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_declared_json_is_refused(
    production: Settings, content_type: str
) -> None:
    response = client(PROXY).post(
        CREATE,
        content=b'{"folders": ["/"], "modalities": ["ios"]}',
        headers={"X-Forwarded-User": ME, "Content-Type": content_type},
    )
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["type"] == "UnsupportedMediaType"
    assert "Content-Type: application/json" in error["message"]
    assert exports(production) == 0


def test_the_portals_own_pages_and_scripts_still_get_through(production: Settings) -> None:
    http = client(PROXY)
    same_origin = http.post(
        CREATE,
        json=BODY,
        headers={
            "X-Forwarded-User": ME,
            "Origin": PORTAL,
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/json; charset=utf-8",
        },
    )
    assert same_origin.status_code == 202, same_origin.text
    # a notebook anywhere: a token, a JSON body, no Origin; an empty POST needs no type
    secret, _ = services.create_token(production, ME, "notebook")
    notebook = client("198.51.100.20")
    token = {"Authorization": f"Bearer {secret}"}
    created = notebook.post(CREATE, json={**BODY, "name": "notebook"}, headers=token)
    assert created.status_code == 202, created.text
    cancelled = notebook.post(f"/api/demo/exports/{created.json()['id']}/cancel/", headers=token)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert exports(production) == 2


def test_production_without_trusted_proxies_refuses_to_serve(
    portal_env: Callable[..., Settings],
) -> None:
    settings = portal_env(PORTAL_ENV="production")  # workers and the CLI need no proxy
    assert not settings.is_development
    with pytest.raises(
        ConfigError, match="PORTAL_ENV=production needs TRUSTED_PROXIES: the address"
    ):
        api.application()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("proxy.internal", "'proxy.internal' is not an IP address or CIDR range"),
        ("10.0.0.2, 0.0.0.0/0", "'0.0.0.0/0' trusts every address"),
        ("::/0", "'::/0' trusts every address"),
        ("0.0.0.0/1, 128.0.0.0/1", "trusts 4,294,967,296 IPv4 addresses, more than a /8"),
        ("10.0.0.0/7", "more than a /8"),
        ("2001:db8::/31", "more than a /32"),
    ],
)
def test_trusted_proxies_must_be_addresses_of_proxies(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(environ={"TRUSTED_PROXIES": value}, env_file=tmp_path / "none.env")


@pytest.fixture
def development(portal_env: Callable[..., Settings]) -> Settings:
    settings = portal_env(PORTAL_DEV_USER=ME)
    services.load_demo(settings, patients=3, seed=2)
    return settings


def test_development_answers_only_loopback_with_a_loopback_host(
    development: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="exporter.api.guard"):
        rebound = client("127.0.0.1", "http://evil.example:8501")  # DNS rebinding: our address
    assert f"signed in as {ME}" in caplog.text and "real patient data" in caplog.text
    refused = rebound.get("/api/demo/exports/")
    assert refused.status_code == 403
    assert "Host evil.example:8501 is not this machine" in refused.json()["error"]["message"]
    assert rebound.post(CREATE, json=BODY).status_code == 403
    assert exports(development) == 0
    for base in ("http://127.0.0.1:8501", "http://localhost:8501", "http://[::1]:8501"):
        assert client("127.0.0.1", base).get("/api/demo/exports/").status_code == 200, base
    assert client("::1", "http://[::1]:8501").post(CREATE, json=BODY).status_code == 202
    assert exports(development) == 1
    # another machine, even naming localhost, is not answered
    remote = client("192.0.2.7", "http://127.0.0.1:8501").get("/api/demo/exports/")
    assert remote.status_code == 403
    assert "answers only on this machine" in remote.json()["error"]["message"]


# --- the real server ------------------------------------------------------------------

UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def ask(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """One GET to the server on loopback: its status and body (an upgrade: its status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = "" if response.status == 101 else response.read().decode()
        return response.status, body
    finally:
        conn.close()


def streamlit(tmp: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """``streamlit run app.py`` as an operator starts it (no launcher), output in a log."""
    full = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'portal.db'}",
        "DATA_ROOT": str(tmp / "data"),
        "EXPORT_ROOT": str(tmp / "exports"),
        **env,
    }
    with open(tmp / f"streamlit-{port}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
            cwd=PROJECT_ROOT,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_up(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if ask(port, "/_stcore/health", {})[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, Path]]]:
    """A development and a production server (proxy at 10.9.9.9), started side by side."""
    tmp = tmp_path_factory.mktemp("servers")
    started = {
        "development": (free_port(), {"PORTAL_ENV": "development", "TRUSTED_PROXIES": ""}),
        "production": (free_port(), {"PORTAL_ENV": "production", "TRUSTED_PROXIES": "10.9.9.9"}),
    }
    procs = {name: streamlit(tmp, port, **env) for name, (port, env) in started.items()}
    try:
        for name, (port, _) in started.items():
            wait_up(procs[name], port, tmp / f"streamlit-{port}.log")
        yield {name: (port, tmp / f"streamlit-{port}.log") for name, (port, _) in started.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


@pytest.mark.slow
def test_real_development_server_refuses_a_foreign_host_on_pages_and_api(
    servers: dict[str, tuple[int, Path]],
) -> None:
    port, log = servers["development"]
    assert "DEVELOPMENT MODE (PORTAL_ENV=development)" in log.read_text()
    status, body = ask(port, "/api/demo/exports/", {"Host": "evil.example"})
    assert status == 403 and "Host evil.example is not this machine" in body
    assert ask(port, "/", {"Host": "evil.example"})[0] == 403
    assert ask(port, "/_stcore/stream", {"Host": "evil.example", **UPGRADE})[0] == 403
    assert ask(port, "/_stcore/stream", {"Host": f"127.0.0.1:{port}", **UPGRADE})[0] == 101


@pytest.mark.slow
def test_real_production_server_refuses_the_header_from_a_non_proxy(
    servers: dict[str, tuple[int, Path]],
) -> None:
    port, _ = servers["production"]
    as_me = {"X-Forwarded-User": ME}
    status, body = ask(port, "/api/demo/exports/", as_me)
    assert status == 403 and "127.0.0.1, which is not a trusted proxy" in body
    # the pages: their identity is read from the websocket upgrade, refused the same way
    assert ask(port, "/_stcore/stream", {**as_me, **UPGRADE})[0] == 403
    assert ask(port, "/_stcore/stream", UPGRADE)[0] == 101  # no claim: "Not signed in"
    # uvicorn believes X-Forwarded-For from loopback and reports the proxy's address as the
    # peer: with it the header is refused too
    status, body = ask(port, "/api/demo/exports/", {**as_me, "X-Forwarded-For": "10.9.9.9"})
    assert status == 403 and "X-Forwarded-For came with X-Forwarded-User" in body


@pytest.mark.slow
def test_real_production_server_without_trusted_proxies_does_not_start(tmp_path: Path) -> None:
    port = free_port()
    proc = streamlit(tmp_path, port, PORTAL_ENV="production", TRUSTED_PROXIES="")
    assert proc.wait(90) == 1
    output = (tmp_path / f"streamlit-{port}.log").read_text()
    assert "error: PORTAL_ENV=production needs TRUSTED_PROXIES" in output
    assert "docs/production.md" in output and "Traceback" not in output


@pytest.mark.parametrize(("env", "shown"), [("production", "none"), ("development", "full")])
def test_pages_in_production_show_no_traceback(
    portal_env: Callable[..., Settings], env: str, shown: str
) -> None:
    """What Streamlit shows of an exception on a page: in production a generic message that
    points to the log (no type, message or stack, which may quote stored values)."""
    portal_env(PORTAL_ENV=env, TRUSTED_PROXIES="127.0.0.1")
    probe = (  # also after the reload a changed config.toml makes Streamlit do
        "import app\n"
        "from streamlit import config\n"
        "from streamlit.web import bootstrap\n"
        "print(config.get_option('client.showErrorDetails'))\n"
        "bootstrap.load_config_options({})\n"
        "print(config.get_option('client.showErrorDetails'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[-2:] == [shown, shown]
