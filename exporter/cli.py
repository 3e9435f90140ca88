"""Command line: parses arguments, calls ``exporter.services``, prints the result."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from humanize import naturalsize

from exporter import schemas, services
from exporter.archive.verify import verify
from exporter.config import Settings, parse_size
from exporter.dev.launcher import run
from exporter.errors import InvalidInput, PortalError
from exporter.records.exports import describe_privacy
from exporter.records.preview import Preview
from exporter.schemas import (
    LEVELS,
    POLICY_FLAGS,
    ExportRequest,
    ExportView,
    PolicyView,
    PrivacyLevel,
    Selection,
)


def _size(n: int) -> str:
    return naturalsize(n, binary=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m exporter``."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Export Portal: registry, demo data, users and the portal launcher.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="migrate, load demo data once (development only), start Redis if needed, worker "
        "and UI",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--no-demo", action="store_true", help="do not load demo data")

    sub.add_parser("migrate", help="create or upgrade the database schema")
    sub.add_parser("settings", help="list every setting with its value and help")
    sub.add_parser("projects", help="list projects and their patient counts")

    p = sub.add_parser("project", help="manage projects")
    project_sub = p.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    p = project_sub.add_parser("add", help="create a project (every modality enabled)")
    p.add_argument("slug", metavar="SLUG", help="lowercase letters, digits and '-'")
    p.add_argument("--name", default="", help="display name (default: the slug)")
    p = project_sub.add_parser(
        "privacy", help="show or change what the project allows (data managers change it)"
    )
    p.add_argument("slug", metavar="SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    for flag in POLICY_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", choices=["on", "off"], dest=flag)
    p.add_argument(
        "--keep-private",
        action="append",
        default=[],
        metavar="TAG",
        help="keep this reviewed private tag in pseudonymised exports: GROUP,CREATOR,ELEMENT "
        "in hex, e.g. '0009,DEMO VENDOR,10' (repeat for more)",
    )
    p.add_argument("--drop-private", action="append", default=[], metavar="TAG")

    p = sub.add_parser("register", help="register an imaging directory tree into a project")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("directory", metavar="DIR", type=Path)
    p.add_argument(
        "--tags-csv", type=Path, metavar="FILE", help="CSV 'patient,tags' (tags ';'-separated)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument(
        "--prune", action="store_true", help="delete rows of registered files no longer on disk"
    )
    p.add_argument(
        "--reread",
        action="store_true",
        help="read every file again, unchanged ones too (hashes and DICOM header subsets)",
    )

    p = sub.add_parser("demo", help="write synthetic demo data under the data root and register it")
    p.add_argument("--patients", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", default="small", choices=["small", "medium", "large"])
    p.add_argument("--if-empty", action="store_true", help="do nothing when demo data is loaded")

    p = sub.add_parser("user", help="manage users")
    user_sub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    p = user_sub.add_parser("add", help="add a user to a project with a role")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--project", required=True, metavar="SLUG")
    p.add_argument("--role", required=True, choices=["researcher", "data_manager"])
    p.add_argument("--name", default="")
    p.add_argument("--admin", action="store_true", help="data manager of every project")

    p = sub.add_parser("export", help="create, list, show, cancel and delete exports")
    ex = p.add_subparsers(dest="export_command", required=True, metavar="ACTION")
    p = ex.add_parser("create", help="create an export (runs on the queue)")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    _selection_args(p)
    p.add_argument("--name", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--compression", default="fast", choices=["store", "fast", "small"])
    p.add_argument("--part-size", metavar="SIZE", help="e.g. 4GiB: whole patients per part")
    p.add_argument(
        "--privacy",
        default=PrivacyLevel.PSEUDONYMISED.value,
        choices=LEVELS,
        help="pseudonymised (default): stable pseudonyms, identifiers removed (PS3.15 Basic "
        "profile with what the project allows); deidentified: dates shifted, UIDs replaced; "
        "identified: stored headers and labels (data managers, or researchers they allow)",
    )
    p.add_argument(
        "--fresh-pseudonyms",
        action="store_true",
        help="pseudonyms, date shifts and UIDs unlinkable to earlier exports",
    )
    p.add_argument("--skip-missing", action="store_true", help="skip (and list) missing files")
    p.add_argument(
        "--remove-dates", action="store_true", help="deidentified: dates removed, not shifted"
    )
    p.add_argument("--clean-descriptors", action="store_true", help="descriptions kept, cleaned")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show the DICOM header changes for one file per series; create nothing",
    )
    p.add_argument("--wait", action="store_true", help="wait, with progress; exit 1 unless done")
    p.add_argument("--json", action="store_true")
    for action, helptext in (
        ("show", "one export's status, progress and parts"),
        ("cancel", "cancel a pending or processing export"),
        ("delete", "delete an export's files (its record stays)"),
        ("retry", "re-run the failed parts of a failed multi-part export"),
        ("key", "which patient each folder is (data managers; the reading is audited)"),
        ("privacy-report", "the residual-identifier check's report (data managers)"),
    ):
        p = ex.add_parser(action, help=helptext)
        p.add_argument("export_id", metavar="EXPORT_ID")
        p.add_argument("--user", required=True, metavar="EMAIL")
        p.add_argument("--json", action="store_true")
    p = ex.add_parser("list", help="exports you may see, newest first")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p.add_argument("--project", metavar="SLUG")
    p.add_argument("--status")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "release",
        help="release curated patients into a destination project (data managers), the "
        "originals optionally into an archive project",
    )
    rel = p.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    p = rel.add_parser("create", help="create a release (runs on the queue)")
    p.add_argument("project", metavar="SOURCE_SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p.add_argument("--to", required=True, metavar="DESTINATION_SLUG", dest="destination")
    p.add_argument("--archive", metavar="ARCHIVE_SLUG", help="copy the originals there too")
    _selection_args(p)
    p.add_argument(
        "--not-released",
        action="store_true",
        help="only patients not yet released to the destination",
    )
    p.add_argument("--name", default="")
    p.add_argument("--notes", default="")
    p.add_argument(
        "--privacy",
        default=PrivacyLevel.PSEUDONYMISED.value,
        choices=schemas.RELEASE_LEVELS,
        help="pseudonymised (default, with what the source project allows) or deidentified",
    )
    p.add_argument(
        "--remove-dates", action="store_true", help="deidentified: dates removed, not shifted"
    )
    p.add_argument("--clean-descriptors", action="store_true", help="descriptions kept, cleaned")
    p.add_argument(
        "--skip-changed",
        action="store_true",
        help="a source file changed since registration fails alone (listed in the log), "
        "not the whole release",
    )
    p.add_argument(
        "--move-out",
        action="store_true",
        help="with --archive: released patients whose every file is archived leave the project "
        "(their files here are deleted once the archive's copies check out)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the end; exit 1 unless done")
    p.add_argument("--json", action="store_true")
    for action, helptext in (
        ("show", "one release's status, progress and counts"),
        ("cancel", "cancel a pending or processing release (what it registered stays)"),
        ("retry", "run a failed or cancelled release again (registered files are skipped)"),
        ("log", "print release_log.csv: per patient, series and file, what was done"),
        ("changes", "print the release's DICOM changes (dicom_changes.csv)"),
    ):
        p = rel.add_parser(action, help=helptext)
        p.add_argument("release_id", metavar="RELEASE_ID")
        p.add_argument("--user", required=True, metavar="EMAIL")
        p.add_argument("--json", action="store_true")
    p = rel.add_parser("list", help="releases out of the projects you manage, newest first")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p.add_argument("--project", metavar="SLUG")
    p.add_argument("--json", action="store_true")
    p = rel.add_parser("links", help="which source patient each destination patient is")
    p.add_argument("project", metavar="SOURCE_SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p = rel.add_parser("history", help="the versions releases wrote of one destination file")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("path", metavar="PATH", help="the file's registered path")
    p.add_argument("--user", required=True, metavar="EMAIL")

    sub.add_parser(
        "cleanup", help="fail exports whose worker died, re-enqueue lost ones, expire old files"
    )

    p = sub.add_parser("token", help="personal API tokens (Authorization: Bearer ...)")
    tok = p.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    p = tok.add_parser("create", help="create a token; it is printed once")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p.add_argument("--name", required=True, help="what the token is for")
    p = tok.add_parser("list", help="your tokens (never the secrets)")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p = tok.add_parser("revoke", help="revoke a token by its id")
    p.add_argument("token_id", type=int, metavar="ID")
    p.add_argument("--user", required=True, metavar="EMAIL")

    p = sub.add_parser("curate", help="curated DICOM header values (data managers)")
    cur = p.add_subparsers(dest="curate_action", required=True, metavar="ACTION")
    for action, helptext in (
        ("set", "set a field on patients' DICOM files, a series, or one file"),
        ("clear", "take a curation off (the files' own value applies again)"),
    ):
        p = cur.add_parser(action, help=helptext)
        p.add_argument("project", metavar="PROJECT_SLUG")
        p.add_argument("--user", required=True, metavar="EMAIL")
        p.add_argument("--patient", action="append", required=True, metavar="LABEL")
        p.add_argument(
            "--series", metavar="KEY", help="one series of each patient, e.g. cbct/raw/series_001"
        )
        p.add_argument("--file-id", type=int, metavar="ID", help="one file (one patient only)")
        p.add_argument("--field", required=True, help="keyword or tag, e.g. StudyDescription")
        if action == "set":
            p.add_argument("--value", required=True)
    p = cur.add_parser(
        "import",
        help="apply a CSV of patient,series,field,value (all or nothing; wrong lines named)",
    )
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("csv_file", metavar="FILE.csv", help="'-' reads standard input")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p = cur.add_parser("history", help="every edit of a patient's fields, newest first")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    p.add_argument("--patient", required=True, metavar="LABEL")
    p = cur.add_parser("restore", help="put an earlier value (by its history id) back")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("value_id", type=int, metavar="ID")
    p.add_argument("--user", required=True, metavar="EMAIL")

    p = sub.add_parser("verify", help="re-hash an export (ZIP, export folder or extracted folder)")
    p.add_argument("target", metavar="ARCHIVE_OR_DIR", type=Path)

    p = sub.add_parser("estimate", help="patient/file count and size of a selection")
    p.add_argument("project", metavar="PROJECT_SLUG")
    p.add_argument("--user", required=True, metavar="EMAIL")
    _selection_args(p)
    p.add_argument("--json", action="store_true")
    return parser


def _selection_from(args: argparse.Namespace) -> Selection:
    """The Selection named by the options that _selection_args added."""
    return schemas.parse_selection(
        args.folder,
        args.patient,
        args.tag,
        args.tag_mode,
        args.modality,
        args.kind,
        args.not_exported,
        study={
            "date_from": args.date_from,
            "date_to": args.date_to,
            "series_description": args.series_description,
            "body_part": args.body_part,
            "manufacturer": args.manufacturer,
            "model": args.model,
        },
    )


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", action="append", metavar="PATH", help="folder path; '/' = all")
    p.add_argument("--patient", action="append", metavar="LABEL")
    p.add_argument("--tag", action="append", metavar="TAG")
    p.add_argument("--tag-mode", default="any", choices=["any", "all"])
    p.add_argument("--modality", action="append", metavar="KEY")
    p.add_argument("--kind", action="append", choices=["raw", "processed"])
    p.add_argument(
        "--not-exported", action="store_true", help="only patients no export has carried yet"
    )
    study = p.add_argument_group(
        "study filters", "what must be in a file's study for it to be selected (any case)"
    )
    study.add_argument("--date-from", metavar="YYYY-MM-DD", help="acquired on or after")
    study.add_argument("--date-to", metavar="YYYY-MM-DD", help="acquired on or before")
    study.add_argument("--series-description", metavar="TEXT", help="DICOM: contains TEXT")
    study.add_argument("--body-part", metavar="TEXT", help="DICOM BodyPartExamined: is TEXT")
    study.add_argument("--manufacturer", metavar="TEXT", help="DICOM: contains TEXT")
    study.add_argument("--model", metavar="TEXT", help="DICOM ManufacturerModelName: contains")


def main(argv: list[str] | None = None) -> int:
    """Run one command; portal errors become one line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load()
        return int(_dispatch(settings, args) or 0)
    except PortalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(settings: Settings, args: argparse.Namespace) -> int | None:
    command = args.command
    if command == "run":
        settings.validate_serving()  # before migrating or starting anything
        # Demo patients never go into a production database by default.
        return run(
            settings, args.host, args.port, demo=settings.is_development and not args.no_demo
        )
    if command == "settings":
        for item in Settings.declared():
            value = _shown(item["env"], getattr(settings, item["name"]))
            print(f"{item['env']}={value}\n    {item['help']} (default: {item['default']})")
        return 0
    if command == "verify":
        checked = verify(args.target)
        for problem in checked.problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(checked.summary())
        return 0 if checked.ok else 1
    services.migrate(settings)
    if command == "migrate":
        print(f"Database is at the newest schema: {_redact(settings.database_url)}")
    elif command == "project" and args.project_command == "privacy":
        flags = {f: getattr(args, f) == "on" for f in POLICY_FLAGS if getattr(args, f)}
        if flags or args.keep_private or args.drop_private:
            view = services.set_project_privacy(
                settings, args.user, args.slug, flags, args.keep_private, args.drop_private
            )
        else:
            view = services.project_privacy(settings, args.user, args.slug)
        _print_policy(view)
    elif command == "project":
        project = services.add_project(settings, args.slug, args.name)
        print(f"Project {project.slug} ({project.name}): {project.patients} patients")
    elif command == "projects":
        for project in services.list_projects(settings):
            print(f"{project.slug}\t{project.patients} patients\t{project.name}")
    elif command == "register":
        report = services.register(
            settings,
            args.project,
            args.directory,
            args.tags_csv,
            prune=args.prune,
            reread=args.reread,
        )
        if not args.quiet:
            for path in report.files_updated:
                print(f"updated: {path} (content changed)")
            for issue in report.skipped:
                print(f"skipped: {issue.path}: {issue.reason}", file=sys.stderr)
            for path in report.missing:
                what = "pruned" if args.prune else "registered but no longer on disk"
                print(f"missing: {path}: {what}", file=sys.stderr)
        for issue in report.refused:
            print(f"refused: {issue.path}: {issue.reason}", file=sys.stderr)
        print(report.summary())
        return 0 if report.ok else 1
    elif command == "demo":
        result = services.load_demo(
            settings,
            args.patients,
            args.seed,
            args.scale,
            only_if_empty=args.if_empty,
            release_projects=True,
        )
        for report in result.reports:
            print(report.summary())
        print(result.message)
    elif command == "user":
        user = services.add_user(
            settings, args.email, args.project, args.role, args.name, is_admin=args.admin
        )
        verb = "Added" if user.created else "Updated"
        print(f"{verb} {user.email}: {user.role} of {user.project}")
    elif command == "export":
        return _export_command(settings, args)
    elif command == "token":
        if args.key_action == "create":
            secret, token = services.create_token(settings, args.user, args.name)
            print(secret)
            print(f"token {token.id} ({token.name}): shown once, keep it secret", file=sys.stderr)
        elif args.key_action == "list":
            for t in services.list_tokens(settings, args.user):
                state = "revoked" if t.revoked else "active"
                print(f"{t.id}\t{t.prefix}…\t{state}\t{t.name}")
        else:
            token = services.revoke_token(settings, args.user, args.token_id)
            print(f"token {token.id} ({token.name}) revoked")
    elif command == "curate":
        _curate_command(settings, args)
    elif command == "release":
        return _release_command(settings, args)
    elif command == "cleanup":
        counts = services.housekeeping(settings)
        print(", ".join(f"{v} {k}" for k, v in counts.items()))
    elif command == "estimate":
        selection = _selection_from(args)
        est = services.estimate(settings, args.user, args.project, selection)
        if args.json:
            print(json.dumps(dataclasses.asdict(est), indent=2, default=str))
        else:
            _print_estimate(est)
    return 0


def _print_estimate(est: Any) -> None:
    print(
        f"{est.patient_count} patients with files ({est.patients_selected} selected), "
        f"{est.file_count} files, {_size(est.total_bytes)}"
    )
    for m in est.by_modality:
        mark = "x" if m.selected else " "
        counts = f"{m.patients:>6} patients {m.files:>8} files {_size(m.bytes):>10}"
        print(f"  [{mark}] {m.key:<16} {counts}")


def _curate_command(settings: Settings, args: argparse.Namespace) -> None:
    action = args.curate_action
    if action == "history":
        for h in services.curation_history(settings, args.user, args.project, args.patient):
            mark = "*" if h.in_force else " "
            value = "(cleared)" if h.value is None else repr(h.value)
            where = h.file_path or h.series_label or "patient"
            print(
                f"{h.id:>6} {mark} {h.at:%Y-%m-%d %H:%M} {h.by:<28} {h.keyword:<28} "
                f"{h.scope:<7} {where}: {h.old_value!r} -> {value}"
            )
        return
    if action == "import":
        data = sys.stdin.buffer.read() if args.csv_file == "-" else _read_bytes(args.csv_file)
        count, done = services.import_curation_csv(settings, args.user, args.project, data)
        print(f"{count} row(s) applied: {len(done)} curated value(s)")
        return
    if action == "restore":
        done = [services.restore_curation(settings, args.user, args.project, args.value_id)]
    else:
        targets = schemas.targets(args.patient, args.series, args.file_id)
        new = args.value if action == "set" else None
        done = services.curate(settings, args.user, args.project, targets, args.field, new)
    for d in done:
        shown = "(cleared)" if d.value is None else repr(d.value)
        print(f"{d.patient} {d.scope} {d.keyword}: {d.old_value!r} -> {shown} (edit {d.id})")


def _read_bytes(path: str) -> bytes:
    """A file the user named, or an error that says what to do."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"No file {path!r}: give the path of the CSV file") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise InvalidInput(f"{path!r} cannot be read: {exc.__class__.__name__}") from None


def _print_policy(view: PolicyView) -> None:
    policy = view.policy.to_json()
    print(f"Project {view.project}: what its data managers allow")
    for flag in POLICY_FLAGS:
        print(f"  {flag.replace('_', '-'):<32} {'on' if policy[flag] else 'off'}")
    kept = policy["kept_private"] or ["(none: every private tag is removed)"]
    print("  kept private tags (pseudonymised exports):")
    for tag in kept:
        print(f"    {tag}")
    if not view.may_change:
        print(f"Only data managers change this ({', '.join(view.data_managers) or 'none yet'}).")


def _print_preview(preview: Preview, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(preview), indent=2))
        return
    print(
        f"DICOM header changes, one file per series ({preview.series_shown} of "
        f"{preview.series_total} series); patients never exported before get their pseudonym "
        "when the export runs. Nothing was created."
    )
    current = None
    for row in preview.rows:
        if row.path != current:
            current = row.path
            print(f"\n{row.patient} {row.series}  ->  {row.path}")
        old = "(absent)" if row.old_value is None else row.old_value
        new = "(removed)" if row.new_value is None else row.new_value
        print(f"  {row.tag:<13} {row.keyword:<34} {old[:40]!r} -> {new[:40]!r}  [{row.reason}]")
    if preview.other_files:
        print(f"\n{preview.other_files} other files will have their metadata stripped.")


SECRET_SETTINGS = frozenset({"SMTP_PASSWORD"})


def _shown(env: str, value: object) -> object:
    """A setting as ``settings`` prints it: secrets and URL passwords hidden."""
    if env in SECRET_SETTINGS:
        return "***" if value else ""
    if env in ("DATABASE_URL", "REDIS_URL"):
        return _redact(str(value))
    return value


def _redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def _export_command(settings: Settings, args: argparse.Namespace) -> int:
    action = args.export_command
    if action == "create":
        request = ExportRequest(
            selection=_selection_from(args),
            name=args.name,
            notes=args.notes,
            compression=args.compression,
            part_size=parse_size(args.part_size) if args.part_size else None,
            privacy=args.privacy,
            fresh_pseudonyms=args.fresh_pseudonyms,
            skip_missing=args.skip_missing,
            shift_dates=not args.remove_dates,
            clean_descriptors=args.clean_descriptors,
        )
        if args.dry_run:
            _print_preview(
                services.preview_export(settings, args.user, args.project, request), args.json
            )
            return 0
        view = services.create_export(settings, args.user, args.project, request)
        if args.wait:
            view = _wait(settings, args.user, view, quiet=args.json)
        _print_export(view, args.json)
        return 0 if not args.wait or view.status == "completed" else 1
    if action == "list":
        views = services.list_exports(settings, args.user, args.project, args.status)
        if args.json:
            print(json.dumps([_jsonable(v) for v in views], indent=2))
        for v in [] if args.json else views:
            size = _size(v.archive_bytes or v.estimated_bytes)
            print(f"{v.id}  {v.status:<10} {v.created_at:%Y-%m-%d %H:%M}  {size:>10}  {v.name}")
        return 0
    if action == "key":
        for row in services.export_key(settings, args.user, args.export_id):
            shift = f"  dates {row.date_shift_days:+d} days" if row.date_shift_days else ""
            kind = "stable" if row.stable else "fresh"
            print(f"{row.pseudonym:<16} {row.label}  ({kind}){shift}")
        return 0
    if action == "privacy-report":
        report = services.export_privacy_report(settings, args.user, args.export_id)
        print(json.dumps(report, indent=2) if report else "The check has not run yet.")
        return 0
    handler = {
        "show": services.get_export,
        "cancel": services.cancel_export,
        "delete": services.delete_export,
        "retry": services.retry_export,
    }[action]
    _print_export(handler(settings, args.user, args.export_id), args.json)
    return 0


def _release_command(settings: Settings, args: argparse.Namespace) -> int:
    action = args.release_command
    if action == "create":
        selection = dataclasses.replace(
            _selection_from(args), not_released_to=args.destination if args.not_released else ""
        )
        request = schemas.ReleaseRequest(
            selection,
            destination=args.destination,
            archive=args.archive,
            name=args.name,
            notes=args.notes,
            privacy=args.privacy,
            shift_dates=not args.remove_dates,
            clean_descriptors=args.clean_descriptors,
            skip_changed=args.skip_changed,
            move_out=args.move_out,
        )
        view = services.create_release(settings, args.user, args.project, request)
        while args.wait and view.status in ("pending", "processing"):
            time.sleep(1)
            view = services.get_release(settings, args.user, view.id)
        _print_release(view, args.json)
        return 0 if not args.wait or view.status == "completed" else 1
    if action == "list":
        views = services.list_releases(settings, args.user, args.project)
        if args.json:
            print(json.dumps([_jsonable(v) for v in views], indent=2))
        for v in [] if args.json else views:
            print(
                f"{v.id}  {v.status:<10} {v.created_at:%Y-%m-%d %H:%M}  "
                f"{v.project} -> {v.destination}  {v.name}"
            )
        return 0
    if action == "links":
        for link in services.patient_links(settings, args.user, args.project):
            print(f"{link.source_label}\t{link.destination}\t{link.destination_label}")
        return 0
    if action == "history":
        for version in services.file_history(settings, args.user, args.project, args.path):
            print(
                f"v{version.version}\t{version.created_at:%Y-%m-%d %H:%M}\t{version.release_name}"
                f"\t{version.sha256[:12]}\t{version.stored_path}"
            )
        return 0
    if action in ("log", "changes"):
        fetch = services.release_log if action == "log" else services.release_changes
        sys.stdout.write(fetch(settings, args.user, args.release_id).decode())
        return 0
    handler = {
        "show": services.get_release,
        "cancel": services.cancel_release,
        "retry": services.retry_release,
    }[action]
    _print_release(handler(settings, args.user, args.release_id), args.json)
    return 0


def _print_release(view: schemas.ReleaseView, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(view), indent=2))
        return
    print(f"{view.id}  {view.name}  [{view.status}]")
    archive = f", originals to {view.archive}" if view.archive else ""
    print(f"  {view.project} -> {view.destination}{archive}, {view.privacy}, by {view.creator}")
    print(
        f"  {view.patient_count} patients, {view.file_count} files, {_size(view.estimated_bytes)}"
    )
    if view.status == "processing":
        print(f"  progress {view.progress:.1%} ({view.files_done} files)")
    if view.counts:
        print(
            "  " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(view.counts.items()))
        )
    if view.error_message:
        print(f"  error: {view.error_message}")


def _wait(settings: Settings, user: str, view: ExportView, quiet: bool) -> ExportView:
    """Poll until the export ends, drawing a progress bar on a terminal."""
    tty = sys.stderr.isatty() and not quiet
    while view.status in ("pending", "processing"):
        if tty:
            width = 30
            done = int(view.progress * width)
            bar = "#" * done + "-" * (width - done)
            eta = f" ETA {view.eta_seconds:.0f} s" if view.eta_seconds is not None else ""
            print(
                f"\r[{bar}] {view.progress:5.1%} {view.files_done}/{view.file_count} files{eta} ",
                end="",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(1)
        view = services.get_export(settings, user, view.id)
    if tty:
        print(file=sys.stderr)
    return view


def _jsonable(view: ExportView | schemas.ReleaseView) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(view), default=str))  # type: ignore[no-any-return]


def _print_export(view: ExportView, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(view), indent=2))
        return
    print(f"{view.id}  {view.name}  [{view.status}]")
    print(
        f"  project {view.project}, by {view.creator}, created {view.created_at:%Y-%m-%d %H:%M} UTC"
    )
    estimated = _size(view.estimated_bytes)
    print(f"  {view.patient_count} patients, {view.file_count} files, {estimated} estimated")
    print(f"  {describe_privacy(view)}")
    if view.status == "processing":
        print(f"  progress {view.progress:.1%} ({view.files_done} files), now: {view.current_item}")
    if view.archive_bytes is not None:
        print(f"  archive {_size(view.archive_bytes)} sha256 {view.archive_sha256 or '(per part)'}")
    for part in view.parts:
        print(f"  part {part.number}: {part.status} {part.file or ''}")
    if view.error_message:
        print(f"  error: {view.error_message}")
