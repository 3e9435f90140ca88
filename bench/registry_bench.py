"""Registry benchmarks, each against a peer measured in the same run.

1. Registering N patients of demo data against `sha256sum` over the same files (warm cache:
   the files are read untimed first; rounds interleaved A B A B; medians of per-round ratios),
   at the small demo scale (34 KB slices: per-file overhead dominates) and the medium one.
2. Selection estimates on a synthetic registry of 10,000 patients and 1,000,000 file rows
   (inserted directly) on SQLite and PostgreSQL: the whole project and a 500-patient folder,
   against a plain COUNT/SUM scan of the file rows for the same selection.

Usage: .venv/bin/python bench/registry_bench.py [--patients 200] [--scales small,medium] [--rounds 3]
       [--skip-register] [--skip-estimate] [--pg URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, func, insert, select, text

from exporter import schemas, services
from exporter.config import Settings
from exporter.registry.query import refresh_summaries
from exporter.store import db
from exporter.store.models import Base, FileRegistry, Modality, Patient, PatientFolder

PG_ADMIN = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def settings_for(tmp: Path, url: str) -> Settings:
    return Settings.load(
        environ={
            "DATABASE_URL": url,
            "DATA_ROOT": str(tmp / "data"),
            "EXPORT_ROOT": str(tmp / "x"),
        },
        env_file=tmp / "none.env",
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_register(patients: int, scale: str, rounds: int) -> None:
    from exporter.dev import demo_data

    tmp = Path(tempfile.mkdtemp(prefix="bench-register-"))
    try:
        root = tmp / "data" / "demo"
        manifest = demo_data.write_demo_tree(root, patients=patients, seed=7, scale=scale)
        files = [str(p) for p in root.rglob("*") if p.is_file()]
        size_mb = manifest.bytes / 1e6
        print(f"\n== register {patients} patients ({scale}): {len(files)} files, {size_mb:.0f} MB")

        def sha256sum() -> None:
            subprocess.run(
                ["xargs", "-0", "sha256sum"],
                input="\0".join(files).encode(),
                stdout=subprocess.DEVNULL,
                check=True,
            )

        def register(round_no: int) -> float:
            url = f"sqlite:///{tmp / f'r{round_no}.db'}"
            settings = settings_for(tmp, url)
            services.migrate(settings)
            services.add_project(settings, "demo")
            seconds = timed(lambda: services.register(settings, "demo", root))
            db.engine_for(url).dispose()
            return seconds

        sha256sum()  # warm the cache; untimed
        ratios, ours, peers = [], [], []
        for r in range(rounds):
            peer = timed(sha256sum)
            mine = register(r)
            peers.append(peer)
            ours.append(mine)
            ratios.append(mine / peer)
        n = len(files)
        print(
            f"  sha256sum      median {statistics.median(peers):6.2f} s  {n / statistics.median(peers):8.0f} files/s"
        )
        print(
            f"  register       median {statistics.median(ours):6.2f} s  {n / statistics.median(ours):8.0f} files/s"
        )
        print(
            f"  ratio register/sha256sum (median of rounds): {statistics.median(ratios):.2f}x  (target <= 1.0)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Each patient's files: (modality, kind, files, bytes per file).
MODALITY_MIX = (
    ("cbct", "raw", 80, 524_800),
    ("cbct", "processed", 1, 40_000_000),
    ("ios", "raw", 2, 9_000_000),
    ("intraoral-photo", "raw", 10, 2_500_000),
    ("panoramic", "raw", 7, 6_000_000),
)


def populate(url: str, n_patients: int = 10_000, per_folder: int = 500) -> None:
    """10,000 patients in 20 folders of 500, 100 files each (1,000,000 rows)."""
    settings = settings_for(Path(tempfile.gettempdir()), url)
    services.migrate(settings)
    engine = db.engine_for(url)
    with db.session_scope(settings) as session:
        from exporter.access.accounts import ensure_project

        project = ensure_project(session, "big")
        mods = {m.key: m.id for m in session.scalars(select(Modality))}
        root = PatientFolder(project_id=project.id, name="site", path="site")
        session.add(root)
        session.flush()
        folders = []
        for i in range(n_patients // per_folder):
            f = PatientFolder(
                project_id=project.id, parent_id=root.id, name=f"c{i:02d}", path=f"site/c{i:02d}"
            )
            session.add(f)
            folders.append(f)
        session.flush()
        session.execute(
            insert(Patient),
            [
                {
                    "project_id": project.id,
                    "folder_id": folders[i // per_folder].id,
                    "label": f"P{i:05d}",
                }
                for i in range(n_patients)
            ],
        )
        pids = list(
            session.scalars(
                select(Patient.id).where(Patient.project_id == project.id).order_by(Patient.id)
            )
        )
    cols = [
        "patient_id",
        "modality_id",
        "kind",
        "file_type",
        "path",
        "size_bytes",
        "sha256",
        "mtime_ns",
        "media_type",
        "extra_metadata",
        "created_at",
        "updated_at",
    ]
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def rows() -> Iterator[tuple[object, ...]]:
        for pid in pids:
            for key, kind, count, size in MODALITY_MIX:
                for k in range(count):
                    yield (
                        pid,
                        mods[key],
                        kind,
                        f"{key}_{kind}",
                        f"big/P{pid}/{key}/{kind}/{k}",
                        size,
                        "0" * 64,
                        0,
                        "application/octet-stream",
                        {},
                        now,
                        now,
                    )

    start = time.perf_counter()
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY file_registry ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows():
                    copy.write_row((*row[:9], "{}", now, now))
            raw.commit()
        finally:
            raw.close()
    else:
        table = Base.metadata.tables[FileRegistry.__tablename__]
        with engine.begin() as conn:
            batch: list[dict[str, object]] = []
            for row in rows():
                batch.append(dict(zip(cols, row, strict=True)))
                if len(batch) == 100_000:
                    conn.execute(insert(table), batch)
                    batch = []
            if batch:
                conn.execute(insert(table), batch)
    with db.session_scope(settings) as session:
        refresh_summaries(session, pids)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    count = 0
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(FileRegistry)).scalar_one()
    print(f"  inserted {count:,} file rows in {time.perf_counter() - start:.1f} s")


def bench_estimate(url: str, label: str, rounds: int = 15) -> None:
    print(f"\n== estimate on {label}")
    populate(url)
    settings = settings_for(Path(tempfile.gettempdir()), url)
    services.add_user(settings, "bench@example.org", "big", "researcher")
    whole = schemas.parse_selection(folders=["/"], modalities=["cbct", "ios", "intraoral-photo"])
    folder = schemas.parse_selection(
        folders=["site/c07"], modalities=["cbct", "ios", "intraoral-photo"]
    )
    engine = db.engine_for(url)

    def scan(folder_path: str | None) -> None:
        # The peer: the same totals straight from the file rows.
        q = (
            select(func.count(), func.sum(FileRegistry.size_bytes))
            .join(Patient, Patient.id == FileRegistry.patient_id)
            .join(Modality, Modality.id == FileRegistry.modality_id)
            .where(Modality.key.in_(["cbct", "ios", "intraoral-photo"]))
        )
        if folder_path:
            q = q.join(PatientFolder, PatientFolder.id == Patient.folder_id).where(
                PatientFolder.path == folder_path
            )
        with engine.connect() as conn:
            conn.execute(q).one()

    for name, sel, peer_folder in (
        ("whole project (10,000 patients)", whole, None),
        ("folder of 500 patients", folder, "site/c07"),
    ):
        services.estimate(settings, "bench@example.org", "big", sel)  # warm
        ours = [
            timed(partial(services.estimate, settings, "bench@example.org", "big", sel))
            for _ in range(rounds)
        ]
        peers = [timed(partial(scan, peer_folder)) for _ in range(3)]
        est = services.estimate(settings, "bench@example.org", "big", sel)
        med = statistics.median(ours) * 1000
        peer = statistics.median(peers) * 1000
        verdict = "OK" if med < 150 else "OVER TARGET"
        print(
            f"  {name:<34} estimate median {med:7.1f} ms (max {max(ours) * 1000:6.1f})  "
            f"file-row scan {peer:8.1f} ms  ratio {med / peer:5.2f}  [{est.patient_count} patients, "
            f"{est.file_count:,} files]  target < 150 ms: {verdict}"
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument(
        "--scales", default="small,medium", help="demo scales to register, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-register", action="store_true")
    parser.add_argument("--skip-estimate", action="store_true")
    parser.add_argument(
        "--pg", default=PG_ADMIN, help="PostgreSQL admin URL (a bench database is made and dropped)"
    )
    args = parser.parse_args()
    if not args.skip_register:
        for scale in args.scales.split(","):
            bench_register(args.patients, scale, args.rounds)
    if args.skip_estimate:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-estimate-"))
    try:
        bench_estimate(f"sqlite:///{tmp / 'big.db'}", "SQLite")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = f"exporter_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        bench_estimate(args.pg.rsplit("/", 1)[0] + f"/{name}", "PostgreSQL")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
