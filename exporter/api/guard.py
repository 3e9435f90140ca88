"""Who may reach the portal at all: one check in front of the pages and the API.

A pure-ASGI middleware for every HTTP request and websocket upgrade: the pages read identity
from the upgrade's headers (``server.trustedUserHeaders`` in .streamlit/config.toml), so the
upgrade passes here too. Pure ASGI, not ``BaseHTTPMiddleware``, which buffers streamed
downloads. Before Streamlit or a route sees a request, it refuses:

- in development, any peer but loopback and any Host but a loopback name (else a page on
  another site can reach the development user's data by DNS rebinding);
- ``X-Forwarded-User`` from an address outside ``TRUSTED_PROXIES``, more than once, or next to
  ``X-Forwarded-For`` (the server, uvicorn, then puts that header's address in place of the
  peer's, so whether the proxy sent the request can no longer be told);
- on the API's state-changing methods, a body that is not ``application/json`` and a browser
  request from another origin (``Origin``, ``Sec-Fetch-Site``).

A refusal answers in the API's error shape and is logged with its reason and the peer's
address, never the user it claimed.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.config import Settings
from exporter.store import db

log = logging.getLogger(__name__)

USER_HEADER = "x-forwarded-user"  # the proxy's (ASGI header names are lower case)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# "none" is a request the user typed or bookmarked; "same-site" is a sibling origin (another
# subdomain) and is refused like "cross-site".
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Refusal:
    """Why a request does not pass: its status code, error type and message."""

    status: int
    type: str
    message: str


def middleware(settings: Settings) -> list[Middleware]:
    """The portal's middleware, for ``st.App`` and the in-process test app.

    Raises ConfigError in production without an identity source; in development it logs, once
    per server process, who is signed in without asking.
    """
    settings.validate_serving()
    if settings.is_development:
        who = (
            f"signed in as {settings.dev_user} (PORTAL_DEV_USER) without a password"
            if settings.dev_user
            else "not signed in (PORTAL_DEV_USER is empty)"
        )
        log.warning(
            "DEVELOPMENT MODE (PORTAL_ENV=development): every request without "
            "X-Forwarded-User is %s. Only this machine is answered (loopback, with a loopback "
            "Host). Do not use it with real patient data; to serve others, see "
            "docs/production.md",
            who,
        )
    return [Middleware(Guard, settings=settings)]


UNAVAILABLE = JSONResponse(
    {
        "error": {
            "type": "Unavailable",
            "message": "The portal's database cannot be reached right now: try again in a "
            "minute (asking for the same export again is safe: it is made once)",
        }
    },
    status_code=503,
    headers={"Retry-After": "30"},
)


class Guard:
    """The ASGI middleware: passes a request on, or answers the refusal ``check`` gives."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.development = settings.is_development
        self.proxies = settings.proxy_networks
        self.portal_origin = _origin(settings.portal_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.check(scope)
            if refusal is not None:
                log.warning(
                    "Refused %s %s from %s: %s",
                    scope.get("method", "websocket"),
                    scope.get("path", ""),
                    _peer_text(scope),
                    refusal.message,
                )
                await _refuse(scope, receive, send, refusal)
                return
        if scope["type"] != "http" or not _app_path(scope).startswith("/api/"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started or not db.is_outage(exc):
                raise
            # An API client is told the database is away (and to come back), not a bare 500.
            log.error(
                "API %s %s: the database is unreachable: %s",
                scope["method"],
                _app_path(scope),
                type(exc).__name__,
            )
            await UNAVAILABLE(scope, receive, send)

    def check(self, scope: Scope) -> Refusal | None:
        """Why this request (or websocket upgrade) may not pass, or None when it may."""
        headers = _headers(scope)
        peer = _peer(scope)
        if self.development:
            refusal = _loopback_only(peer, headers.get("host", []))
            if refusal is not None:
                return refusal
        users = headers.get(USER_HEADER)
        if users is not None:
            refusal = self._from_proxy(peer, users, headers)
            if refusal is not None:
                return refusal
        path = _app_path(scope)
        if (
            scope["type"] == "http"
            and scope["method"] in STATE_CHANGING
            and (path == "/api" or path.startswith("/api/"))
        ):
            return self._same_origin_json(scope, headers)
        return None

    def _from_proxy(
        self, peer: Address | None, users: list[str], headers: dict[str, list[str]]
    ) -> Refusal | None:
        if peer is None or not any(peer in network for network in self.proxies):
            return Refusal(
                403,
                "PermissionDenied",
                f"X-Forwarded-User came from {peer or 'an unknown address'}, which is not a "
                "trusted proxy: only the institution's sign-in proxy may say who you are. "
                "Open the portal through it (operators: TRUSTED_PROXIES, docs/production.md)",
            )
        if not users[0].isascii():
            # Servers read header bytes as Latin-1: a UTF-8 address would reach the pages and
            # the API as another string. Refused, not guessed.
            return Refusal(
                400,
                "InvalidIdentity",
                "X-Forwarded-User holds characters other than ASCII: the portal signs in "
                "ASCII e-mail addresses only (ask the administrator to map the account)",
            )
        if len(users) > 1 or "," in users[0]:
            # Streamlit would take the first, the API the joined value: refuse both.
            return Refusal(
                400,
                "AmbiguousIdentity",
                "X-Forwarded-User came more than once: the proxy must replace the client's "
                "header with exactly one (nginx: proxy_set_header X-Forwarded-User ...; "
                "docs/production.md)",
            )
        if "x-forwarded-for" in headers:
            return Refusal(
                403,
                "PermissionDenied",
                "X-Forwarded-For came with X-Forwarded-User: the server then takes the client "
                "address from it, so the proxy's own address cannot be checked. Make the proxy "
                'drop it (nginx: proxy_set_header X-Forwarded-For "";), see docs/production.md',
            )
        return None

    def _same_origin_json(self, scope: Scope, headers: dict[str, list[str]]) -> Refusal | None:
        site = ", ".join(headers.get("sec-fetch-site", []))
        if site and site.lower() not in OWN_FETCH_SITES:
            return Refusal(
                403,
                "PermissionDenied",
                f"A {site} browser request may not change exports: use the portal's own pages, "
                "or a script or notebook with an API token",
            )
        origins = headers.get("origin")
        if origins is not None:
            own = {self.portal_origin, _origin(f"{scope['scheme']}://{_one(headers, 'host')}")}
            if len(origins) > 1 or _origin(origins[0]) not in own - {None}:
                return Refusal(
                    403,
                    "PermissionDenied",
                    f"A request from {', '.join(origins)} may not change exports: only the "
                    f"portal's own pages ({self.portal_origin}) may (operators: PORTAL_URL is "
                    "the address users open)",
                )
        types = headers.get("content-type")
        has_body = "transfer-encoding" in headers or any(
            length.strip() != "0" for length in headers.get("content-length", [])
        )
        media = types[0].split(";")[0].strip().lower() if types else None
        if (types is None and has_body) or (
            types is not None and (len(types) > 1 or media != "application/json")
        ):
            return Refusal(
                415,
                "UnsupportedMediaType",
                f"The body must be JSON, sent with Content-Type: application/json (got "
                f"{', '.join(types) if types else 'none'}; curl: --json or -H "
                "'Content-Type: application/json')",
            )
        return None


def _loopback_only(peer: Address | None, hosts: list[str]) -> Refusal | None:
    if peer is None or not peer.is_loopback:
        return Refusal(
            403,
            "PermissionDenied",
            f"This is a development portal: it answers only on this machine, not to "
            f"{peer or 'an unknown address'}. To serve others, run it in production "
            "(docs/production.md)",
        )
    name = _host_name(hosts[0]) if len(hosts) == 1 else None
    if name not in LOOPBACK_NAMES:
        return Refusal(
            403,
            "PermissionDenied",
            f"Host {', '.join(hosts) or '(none)'} is not this machine: a development portal "
            "answers only to localhost, 127.0.0.1 or [::1] (another site's page may be trying "
            "to reach it). Open http://127.0.0.1 with the portal's port",
        )
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    response = JSONResponse(
        {"error": {"type": refusal.type, "message": refusal.message}},
        status_code=refusal.status,
    )
    if scope["type"] == "http":
        await response(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        # The upgrade is answered with the same JSON, as a plain HTTP refusal.
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # policy violation


def _app_path(scope: Scope) -> str:
    """The path as the portal's routes see it: under an ASGI root path (``--root-path``, a
    proxy's prefix) the server's ``path`` starts with the prefix, which routing strips."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "")).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


def _headers(scope: Scope) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return found


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values and len(values) == 1 else None


def _peer(scope: Scope) -> Address | None:
    client = scope.get("client")
    if not client:
        return None
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return None  # not an address (a test client's name, a socket path): never trusted
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def _peer_text(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "an unknown address"


def _host_name(host: str) -> str | None:
    """The name in a Host header (brackets and port taken off), or None if it is not one."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, the default port left out, or None if it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"
