"""Settings: defaults, parsing, validation and documentation."""

from pathlib import Path

import pytest

from exporter.config import PROJECT_ROOT, Settings, parse_size
from exporter.errors import ConfigError


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(environ=env, env_file=tmp_path / "none.env")


def test_embedded_defaults_live_under_var(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.database_url == f"sqlite:///{PROJECT_ROOT / 'var' / 'portal.db'}"
    assert settings.data_root == PROJECT_ROOT / "var" / "data"
    assert settings.export_root == PROJECT_ROOT / "var" / "exports"
    assert settings.is_development


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EXPORT_RETENTION_DAYS=30\nMAX_EXPORT_SIZE=2GiB\n")
    settings = Settings.load(environ={"EXPORT_RETENTION_DAYS": "7"}, env_file=env_file)
    assert settings.retention_days == 7
    assert settings.max_export_bytes == 2 * 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("500MiB", 500 * 1024**2), ("2 GB", 2 * 10**9), ("1.5GiB", 3 * 1024**3 // 2)],
)
def test_sizes_parse_binary_and_decimal_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["INFINITY", "inf GiB", "nan", "1e999", "5e3MiB", "+5", "", "MiB"])
def test_what_is_not_a_plain_number_is_not_a_size(text: str) -> None:
    """Found by the API's schema run: part_size "INFINITY" was a server error."""
    with pytest.raises(ConfigError, match="is not a size: write a number"):
        parse_size(text)


def test_a_negative_size_says_so() -> None:
    with pytest.raises(ConfigError, match="is negative"):
        parse_size("-5 MiB")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_EXPORT_SIZE": "lots"}, "MAX_EXPORT_SIZE: 'lots' is not a size"),
        ({"EXPORT_RETENTION_DAYS": "two"}, "EXPORT_RETENTION_DAYS='two' is not a whole number"),
        ({"EXPORT_RETENTION_DAYS": "0"}, "EXPORT_RETENTION_DAYS must be at least 1"),
        ({"PORTAL_ENV": "staging"}, "set it to 'development' or 'production'"),
        ({"DATABASE_URL": "mysql://x"}, "must be a sqlite:/// or postgresql"),
    ],
)
def test_bad_settings_say_what_to_set(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, **env)


def test_every_setting_is_documented_in_the_settings_page_and_env_example() -> None:
    readme = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    example = (PROJECT_ROOT / ".env.example").read_text()
    for item in Settings.declared():
        assert f"`{item['env']}`" in readme, f"docs/settings.md does not document {item['env']}"
        assert f"{item['env']}=" in example, f".env.example does not list {item['env']}"
