"""The command line, run in-process on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import Settings
from tests.builders import small_tree


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "DATA_ROOT": str(settings.data_root),
        "EXPORT_ROOT": str(settings.export_root),
    }.items():
        monkeypatch.setenv(name, value)
    return settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "migrate", "project", "register", "demo", "user", "estimate", "verify"):
        assert f"    {command} " in out


def test_register_user_and_estimate(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    tree = small_tree(cli_env.data_root / "study")
    code, _, err = run(capsys, "register", "proj", str(tree))
    assert code == 1
    assert err.strip() == (
        "error: No project 'proj': create it first with "
        """'python -m exporter project add proj --name "..."'"""
    )
    code, out, _ = run(capsys, "project", "add", "proj", "--name", "Proj study")
    assert (code, out.strip()) == (0, "Project proj (Proj study): 0 patients")
    code, out, _ = run(capsys, "register", "proj", str(tree))
    assert code == 0
    assert out.strip().endswith("0 skipped, 0 refused, 0 missing")
    assert "3 patients (3 new), 20 files (20 added, 0 updated)" in out
    code, out, _ = run(
        capsys, "user", "add", "Rita@Lab.example", "--project", "proj", "--role", "researcher"
    )
    assert (code, out.strip()) == (0, "Added rita@lab.example: researcher of proj")
    code, out, _ = run(
        capsys,
        "estimate",
        "proj",
        "--user",
        "rita@lab.example",
        "--folder",
        "site-a",
        "--modality",
        "ios",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert (data["patient_count"], data["file_count"], data["total_bytes"]) == (2, 4, 4 * 884)
    code, out, _ = run(
        capsys,
        "estimate",
        "proj",
        "--user",
        "rita@lab.example",
        "--folder",
        "/",
        "--modality",
        "cbct",
    )
    assert out.splitlines()[0].startswith("3 patients with files (3 selected), 12 files, ")
    assert out.splitlines()[0].endswith(" KiB")


def test_register_exits_non_zero_when_anything_was_refused(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tree = small_tree(cli_env.data_root / "study")
    run(capsys, "project", "add", "proj")
    (tree / "site-b/P003/ios/extra.stl").symlink_to(tmp_path)
    code, out, err = run(capsys, "register", "proj", str(tree))
    assert code == 1
    assert "refused: study/site-b/P003/ios/extra.stl: symbolic link refused" in err
    assert "1 refused" in out


def test_errors_are_one_clear_line(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "project", "add", "proj")
    code, _, err = run(capsys, "register", "proj", str(tmp_path))
    assert code == 1
    assert err.startswith("error: ") and "outside the data root" in err
    code, _, err = run(
        capsys, "user", "add", "not-an-email", "--project", "proj", "--role", "researcher"
    )
    assert (code, err.strip()) == (1, "error: 'not-an-email' is not an e-mail address")
    code, _, err = run(
        capsys, "user", "add", "a@b.example", "--project", "nope", "--role", "researcher"
    )
    assert code == 1 and "No project 'nope'" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["user", "add", "a@b.example", "--project", "p", "--role", "boss"])
    assert exit_info.value.code == 2


def test_demo_loads_once(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--patients", "4")
    assert code == 0
    assert "Demo data loaded: 7 patients in 2 projects" in out
    code, out, _ = run(capsys, "demo", "--if-empty")
    assert (code, out.strip()) == (0, "Demo data already loaded (4 patients)")
    code, out, _ = run(capsys, "projects")
    assert out.splitlines() == [
        "demo\t4 patients\tDemo cohort",
        "demo-archive\t0 patients\tVault of originals (restricted)",
        "demo-released\t0 patients\tReleased for data science",
        "other\t3 patients\tOther study",
    ], "with an empty destination and archive to release into"


def test_curate_then_dry_run_shows_the_change_and_creates_nothing(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import services

    services.load_demo(cli_env, patients=2, seed=5)
    manager, researcher = "manager@demo.example", "researcher@demo.example"
    code, out, _ = run(
        capsys,
        "curate",
        "set",
        "demo",
        "--user",
        manager,
        "--patient",
        "P0001",
        "--patient",
        "P0002",
        "--field",
        "InstitutionName",
        "--value",
        "Research Site",
    )
    assert code == 0 and out.count("-> 'Research Site'") == 2
    code, _, err = run(
        capsys,
        "curate",
        "set",
        "demo",
        "--user",
        researcher,
        "--patient",
        "P0001",
        "--field",
        "InstitutionName",
        "--value",
        "x",
    )
    assert code != 0 and "Only data managers" in err
    code, out, _ = run(capsys, "curate", "history", "demo", "--user", manager, "--patient", "P0001")
    assert code == 0 and "InstitutionName" in out and "'Research Site'" in out
    code, out, _ = run(
        capsys,
        "export",
        "create",
        "demo",
        "--user",
        researcher,
        "--folder",
        "/",
        "--modality",
        "cbct",
        "--privacy",
        "deidentified",
        "--dry-run",
    )
    assert code == 0, out
    assert "InstitutionName" in out and "Nothing was created" in out
    assert "[curated]" in out and "[deidentified]" in out
    code, out, _ = run(capsys, "export", "list", "--user", researcher)
    assert code == 0 and out.strip() == "", "a dry run creates no export"


def test_project_privacy_and_the_re_identification_key(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from exporter import services

    services.load_demo(cli_env, patients=2, seed=4)
    manager, researcher = "manager@demo.example", "researcher@demo.example"
    code, out, _ = run(capsys, "project", "privacy", "demo", "--user", researcher)
    assert code == 0 and "retain-full-dates                on" in out
    assert "Only data managers change this (manager@demo.example)" in out
    code, _, err = run(
        capsys, "project", "privacy", "demo", "--user", researcher, "--retain-uids", "on"
    )
    assert code == 1 and "Only data managers" in err
    code, out, _ = run(
        capsys,
        "project",
        "privacy",
        "demo",
        "--user",
        manager,
        "--retain-uids",
        "on",
        "--keep-private",
        "0009,DEMO VENDOR,10",
    )
    assert code == 0 and "retain-uids                      on" in out
    assert "0009,DEMO VENDOR,10" in out
    code, _, err = run(
        capsys, "project", "privacy", "demo", "--user", manager, "--keep-private", "nonsense"
    )
    assert code == 1 and "GROUP,CREATOR,ELEMENT" in err
    code, out, _ = run(
        capsys,
        "export",
        "create",
        "demo",
        "--user",
        researcher,
        "--folder",
        "/",
        "--modality",
        "ios",
        "--json",
    )
    export_id = json.loads(out)["id"]
    assert json.loads(out)["privacy"] == "pseudonymised"
    code, _, err = run(capsys, "export", "key", export_id, "--user", researcher)
    assert code == 1 and "Only data managers" in err
    code, _, err = run(
        capsys,
        "export",
        "create",
        "demo",
        "--user",
        researcher,
        "--folder",
        "/",
        "--modality",
        "ios",
        "--privacy",
        "identified",
    )
    assert code == 1 and "for its data managers" in err


def test_settings_hides_every_password(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:redis-secret@127.0.0.1:6379/0")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://portal:db-secret@127.0.0.1/portal")
    code, out, _ = run(capsys, "settings")
    assert code == 0
    assert "secret" not in out, "a password was printed"
    assert "REDIS_URL=redis://:***@127.0.0.1:6379/0" in out
    assert "DATABASE_URL=postgresql+psycopg://portal:***@127.0.0.1/portal" in out
    assert "SMTP_PASSWORD=***" in out


def test_curate_import_applies_a_csv_or_names_its_wrong_lines(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import services

    services.load_demo(cli_env, patients=2, seed=5)
    manager = "manager@demo.example"
    good = tmp_path / "good.csv"
    good.write_text("patient,series,field,value\nP0001,,InstitutionName,Research Site\n")
    code, out, _ = run(capsys, "curate", "import", "demo", str(good), "--user", manager)
    assert (code, out.strip()) == (0, "1 row(s) applied: 1 curated value(s)")
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,series,field,value\nP0002,,StudyDate,yesterday\n")
    code, _, err = run(capsys, "curate", "import", "demo", str(bad), "--user", manager)
    assert code != 0 and "Nothing was applied" in err and "line 2" in err
    code, _, err = run(
        capsys, "curate", "import", "demo", str(tmp_path / "no.csv"), "--user", manager
    )
    assert code != 0 and "No file" in err and "Traceback" not in err
