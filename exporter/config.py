"""Settings of the portal, declared as data.

This module is the only reader of ``os.environ``. Every setting has a name, a default and a
help text; ``Settings.load()`` reads them from the environment and an optional ``.env`` file
(environment wins), validates them, and returns an immutable object. The README lists every
setting (a test checks that it does).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from exporter.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1000,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1000**3,
    "GIB": 1024**3,
    "T": 1024**4,
    "TB": 1000**4,
    "TIB": 1024**4,
}


MAX_SIZE = 2**63 - 1  # the databases' BIGINT: a size beyond it cannot be stored or compared
_SIZE_TEXT = 40  # characters: "9223372036854775807 B" and any real size fit with room


def parse_size(text: str) -> int:
    """Parse ``"500 MiB"``, ``"2GB"``, ``"1024"`` into bytes (at most ``MAX_SIZE``).

    Raises ConfigError, and nothing else, for anything that is not such a size.
    """
    if len(text) > _SIZE_TEXT:
        raise ConfigError(
            f"{text[:_SIZE_TEXT]!r}... is too long to be a size: sizes go up to {MAX_SIZE} bytes"
        )
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    if number.startswith("-") and re.fullmatch(r"-[0-9]+(\.[0-9]+)?", number):
        raise ConfigError(f"{text!r} is negative: sizes must be zero or more")
    # ASCII digits only: float() would also take "inf", "nan" and "1e999" (and \d, digits of
    # other scripts).
    if unit not in _SIZE_UNITS or not re.fullmatch(r"[0-9]+(\.[0-9]+)?", number):
        raise ConfigError(
            f"{text!r} is not a size: write a number with an optional unit, e.g. 500MiB or 2GB"
        )
    # Decimal, not float: exact for every digit string (float overflowed on 10**400).
    size = int(Decimal(number) * _SIZE_UNITS[unit])
    if size > MAX_SIZE:
        raise ConfigError(f"{text!r} is too large: sizes go up to {MAX_SIZE} bytes (8 EiB)")
    return size


def _setting(env: str, default: str, help: str, kind: str = "str") -> Any:
    return field(metadata={"env": env, "default": default, "help": help, "kind": kind})


@dataclass(frozen=True)
class Settings:
    """The portal's configuration. Build it with :meth:`Settings.load`."""

    environment: str = _setting(
        "PORTAL_ENV",
        "development",
        "`development` (embedded defaults, a development user) or `production` "
        "(no development user: identity only from the proxy header or OIDC).",
    )
    database_url: str = _setting(
        "DATABASE_URL",
        "sqlite:///var/portal.db",
        "SQLAlchemy URL of the database. Default: a SQLite file under `var/`. "
        "PostgreSQL: `postgresql+psycopg://user@host:5432/dbname`.",
    )
    redis_url: str = _setting(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis for the job queue. `make run` starts a private Redis when none answers here.",
    )
    data_root: Path = _setting(
        "DATA_ROOT",
        "var/data",
        "Directory under which all registered imaging files live; "
        "registry paths are relative to it.",
        "path",
    )
    export_root: Path = _setting(
        "EXPORT_ROOT", "var/exports", "Directory where export archives are written.", "path"
    )
    dev_user: str = _setting(
        "PORTAL_DEV_USER",
        "researcher@demo.example",
        "E-mail of the signed-in user in development when no proxy header is present. "
        "Ignored in production, where identity comes from the proxy or OIDC.",
    )
    trusted_proxies: str = _setting(
        "TRUSTED_PROXIES",
        "",
        "Comma-separated IP addresses or CIDR ranges of the reverse proxies whose "
        "`X-Forwarded-User` is believed; from any other address the header is refused. "
        "Required in production (see docs/production.md); empty in development: loopback.",
    )
    max_export_bytes: int = _setting(
        "MAX_EXPORT_SIZE", "500GiB", "Largest estimated size one export may have.", "size"
    )
    user_quota_bytes: int = _setting(
        "USER_QUOTA",
        "2TiB",
        "Bytes a user may hold in live (pending, processing, completed) exports.",
        "size",
    )
    disk_reserve_bytes: int = _setting(
        "DISK_RESERVE",
        "1GiB",
        "Free space kept at the export root: "
        "an export that would go below it is refused or stopped.",
        "size",
    )
    retention_days: int = _setting(
        "EXPORT_RETENTION_DAYS", "14", "Days a completed export's files are kept.", "int"
    )
    change_log_retention_days: int = _setting(
        "CHANGE_LOG_RETENTION_DAYS",
        "14",
        "Days the DICOM change log keeps old (identifying) header values; they also go when "
        "an export is deleted or expires. What changed and the new values stay.",
        "int",
    )
    portal_url: str = _setting(
        "PORTAL_URL",
        "http://127.0.0.1:8501",
        "Address of the portal as users reach it; used for links in e-mails.",
    )
    smtp_host: str = _setting(
        "SMTP_HOST", "", "SMTP server for notifications; empty: no e-mail is sent (logged only)."
    )
    smtp_port: int = _setting(
        "SMTP_PORT", "25", "SMTP port (587 for STARTTLS, 465 for TLS).", "int"
    )
    smtp_security: str = _setting(
        "SMTP_SECURITY", "none", "`none`, `starttls` or `tls` (implicit TLS, usually port 465)."
    )
    smtp_user: str = _setting("SMTP_USER", "", "SMTP user name, if the server wants one.")
    smtp_password: str = _setting(
        "SMTP_PASSWORD", "", "SMTP password (set it in the environment or .env, never in code)."
    )
    mail_from: str = _setting(
        "MAIL_FROM", "export-portal@localhost", "Sender address of notification e-mails."
    )
    stale_after_seconds: int = _setting(
        "STALE_AFTER",
        "60",
        "Seconds without a heartbeat after which a processing export's worker counts as dead.",
        "int",
    )
    ui_row_cap: int = _setting(
        "UI_ROW_CAP", "5000", "Most rows any single UI query returns.", "int"
    )
    max_body_bytes: int = _setting(
        "MAX_REQUEST_BODY",
        "4MiB",
        "Largest request body the API reads (counted while reading, whatever Content-Length "
        "says); a bigger one is answered 413. 4 MiB holds ~100,000 patient labels.",
        "size",
    )
    max_list_items: int = _setting(
        "MAX_LIST_ITEMS",
        "50000",
        "Most entries in one list of an export request (folders, patients, tags, modalities, "
        "kinds); more are answered 422 naming the list.",
        "int",
    )
    max_notes_length: int = _setting(
        "MAX_NOTES_LENGTH",
        "4000",
        "Most characters in an export's notes (they are stored on the export, written into "
        "its metadata.json and shown in every list).",
        "int",
    )
    max_name_length: int = _setting(
        "MAX_NAME_LENGTH",
        "100",
        "Most characters in an export's name (it becomes the archive's top folder, whose "
        "name has at most 100 characters); 1 to 100.",
        "int",
    )
    max_nesting: int = _setting(
        "MAX_NESTING",
        "16",
        "How deep lists and objects may nest in a request body (a request needs 2); deeper "
        "bodies are answered 422 before they are parsed.",
        "int",
    )

    @classmethod
    def declared(cls) -> list[dict[str, str]]:
        """Every setting as data: attribute, environment variable, default, help."""
        return [
            {"name": f.name, **{k: str(v) for k, v in f.metadata.items()}}
            for f in fields(cls)
            if f.metadata
        ]

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
        """Read settings from ``environ`` (default: the process environment) and ``.env``."""
        env_path = env_file if env_file is not None else PROJECT_ROOT / ".env"
        values: dict[str, str] = {}
        if env_path.is_file():
            values.update({k: v for k, v in dotenv_values(env_path).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if not f.metadata:
                continue
            env, kind = f.metadata["env"], f.metadata["kind"]
            raw = values.get(env, f.metadata["default"])
            kwargs[f.name] = _convert(env, raw, kind)
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, with a message that says what to set."""
        if self.environment not in ("development", "production"):
            raise ConfigError(
                f"PORTAL_ENV={self.environment!r}: set it to 'development' or 'production'"
            )
        if not self.database_url.startswith(("sqlite:", "postgresql")):
            raise ConfigError(
                "DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL, "
                f"got {self.database_url.split(':', 1)[0]!r}"
            )
        if self.retention_days < 1:
            raise ConfigError("EXPORT_RETENTION_DAYS must be at least 1")
        if self.change_log_retention_days < 0:
            raise ConfigError("CHANGE_LOG_RETENTION_DAYS must be 0 or more")
        if self.smtp_security not in ("none", "starttls", "tls"):
            raise ConfigError("SMTP_SECURITY must be 'none', 'starttls' or 'tls'")
        if self.stale_after_seconds < 10:
            raise ConfigError("STALE_AFTER must be at least 10 seconds")
        _networks(self.trusted_proxies)  # a bad entry stops the start, not a request later
        if self.max_body_bytes < 1024:
            raise ConfigError("MAX_REQUEST_BODY must be at least 1KiB (4MiB is the default)")
        if not 1 <= self.max_name_length <= 100:
            raise ConfigError(
                "MAX_NAME_LENGTH must be 1 to 100: the name becomes a folder name of at most 100"
            )
        for env, value, least in (
            ("MAX_LIST_ITEMS", self.max_list_items, 1),
            ("MAX_NOTES_LENGTH", self.max_notes_length, 0),
            ("MAX_NESTING", self.max_nesting, 2),
        ):
            if value < least:
                raise ConfigError(f"{env} must be at least {least}")

    def validate_serving(self) -> None:
        """Refuse to serve the pages and the API without an identity source.

        Only the web process needs one: workers and the command line never read identity
        headers, so this is not part of :meth:`validate`.
        """
        if not self.is_development and not self.trusted_proxies.strip():
            raise ConfigError(
                "PORTAL_ENV=production needs TRUSTED_PROXIES: the address(es) of the reverse "
                "proxy that signs users in and sets X-Forwarded-User (e.g. 127.0.0.1 when it "
                "runs on this machine). Without it nobody can sign in to the pages. "
                "See docs/production.md"
            )

    @property
    def proxy_networks(self) -> tuple[IPNetwork, ...]:
        """The addresses whose X-Forwarded-User is believed (development: loopback)."""
        if not self.trusted_proxies.strip() and self.is_development:
            return LOOPBACK
        return _networks(self.trusted_proxies)

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    def child_environ(self) -> dict[str, str]:
        """The environment a child process (worker, UI) needs to see these same settings."""
        env = dict(os.environ)
        for f in fields(self):
            if f.metadata:
                env[f.metadata["env"]] = str(getattr(self, f.name))
        return env


def _networks(text: str) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES parsed: addresses and CIDR ranges, never names or everyone."""
    networks = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"TRUSTED_PROXIES: {item!r} is not an IP address or CIDR range "
                "(write addresses such as 127.0.0.1 or 10.0.0.0/24, not host names)"
            ) from None
        if network.prefixlen == 0:
            # A /0 believes the header from every client: identity would be anyone's to claim.
            raise ConfigError(
                f"TRUSTED_PROXIES: {item!r} trusts every address; list only the proxy's"
            )
        networks.append(network)
    return tuple(networks)


def _convert(env: str, raw: str, kind: str) -> Any:
    if kind == "path":
        path = Path(raw).expanduser()
        return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a whole number") from None
    if kind == "size":
        try:
            return parse_size(raw)
        except ConfigError as exc:
            raise ConfigError(f"{env}: {exc}") from None
    if env == "DATABASE_URL" and raw.startswith("sqlite:///") and not raw.startswith("sqlite:////"):
        # A relative SQLite path is relative to the project, not to the current directory.
        rel = raw.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            return "sqlite:///" + str((PROJECT_ROOT / rel).resolve())
    return raw
