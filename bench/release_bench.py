"""Release benchmark against ``cp -r`` of the same files, in the same run.

Generates the export benchmark's CBCT dataset (the demo generator at "large" scale: series of
512x512 slices), registers it, then per round, interleaved:
  cp -r        the patients' cbct directories copied (and ``sync``: a release fsyncs)
  release      the same files released into a fresh destination project: the header rewrite
               (pseudonymised: curated values, pseudonym, the PS3.15 profile), the residual-
               identifier check, a temporary name, fsync, read back and hashed, renamed, and
               registered in the destination (one transaction per 200 files)
  unchanged    the same release again into the same destination: every file skipped
Targets: release <= 1.5x cp -r; unchanged < 5 % of the first release. Each release runs in a
fresh process (``--child``), without a queue: the job's function is called directly. The
inputs are read untimed before each case (warm), or the page cache is dropped (``--cold``,
root only). Ratios are medians of per-round ratios.

Usage: .venv/bin/python bench/release_bench.py [--patients 8] [--rounds 3] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import schemas, services  # noqa: E402
from exporter.access.accounts import principal_for  # noqa: E402
from exporter.config import Settings  # noqa: E402
from exporter.jobs.releases import run_release  # noqa: E402
from exporter.records import releases  # noqa: E402
from exporter.store import db  # noqa: E402

MANAGER = "manager@bench.example"
COLD = False


def environ(base: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{base / 'bench.db'}",
        "DATA_ROOT": str(base / "data"),
        "EXPORT_ROOT": str(base / "exports"),
        "DISK_RESERVE": "1MiB",
    }


def settings_for(base: Path) -> Settings:
    return Settings.load(environ=environ(base), env_file=base / "none.env")


def prepare(base: Path, patients: int) -> tuple[int, list[str]]:
    """Write and register the dataset; its CBCT bytes and the patients' cbct directories."""
    from exporter.dev import demo_data  # numpy and Pillow stay out of the release's process

    settings = settings_for(base)
    demo_data.write_demo_tree(
        settings.data_root / "bench", patients=patients, seed=11, scale="large"
    )
    services.migrate(settings)
    services.add_project(settings, "bench")
    services.register(settings, "bench", settings.data_root / "bench")
    services.add_user(settings, MANAGER, "bench", "data_manager")
    dirs = sorted(str(p) for p in (settings.data_root / "bench").rglob("cbct") if p.is_dir())
    size = sum(f.stat().st_size for d in dirs for f in Path(d).rglob("*") if f.is_file())
    return size, dirs


def child(base: Path, destination: str) -> None:
    """One release of every patient's CBCT into ``destination``, run in this process."""
    settings = settings_for(base)
    os.environ.update(environ(base))
    selection = schemas.parse_selection(folders=["/"], modalities=["cbct"])
    with db.session_scope(settings) as session:
        row = releases.create(
            session,
            principal_for(session, MANAGER),
            "bench",
            schemas.ReleaseRequest(selection, destination),
            settings.data_root,
        )
        release_id = row.id
    start = time.perf_counter()
    outcome = run_release(release_id)
    seconds = time.perf_counter() - start
    view = services.get_release(settings, MANAGER, release_id)
    assert outcome == "completed", view.error_message
    print(json.dumps({"seconds": seconds, "counts": view.counts, "files": view.file_count}))


def run_child(base: Path, destination: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(base), destination],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def warm(base: Path) -> None:
    if COLD:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    source = base / "data" / "bench"
    subprocess.run(
        f"find {source} -path '*/cbct/*' -type f -print0 | xargs -0 cat > /dev/null",
        shell=True,
        check=True,
    )


def bench(base: Path, dirs: list[str], rounds: int) -> None:
    settings = settings_for(base)
    results: dict[str, list[float]] = {"cp": [], "release": [], "unchanged": []}
    files = 0
    for n in range(1, rounds + 1):
        destination = f"dest-{n}"
        services.add_project(settings, destination)
        services.add_user(settings, MANAGER, destination, "data_manager")
        scratch = base / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        warm(base)
        start = time.perf_counter()
        subprocess.run(["cp", "-r", "--parents", *dirs, str(scratch)], check=True)
        subprocess.run(["sync"], check=True)
        results["cp"].append(time.perf_counter() - start)
        shutil.rmtree(scratch)
        warm(base)
        first = run_child(base, destination)
        results["release"].append(float(first["seconds"]))  # type: ignore[arg-type]
        files = int(first["files"])  # type: ignore[call-overload]
        warm(base)
        again = run_child(base, destination)
        assert again["counts"] == {"skipped": files}, again
        results["unchanged"].append(float(again["seconds"]))  # type: ignore[arg-type]
        shutil.rmtree(base / "data" / destination, ignore_errors=True)
    state = "cold" if COLD else "warm"
    print(f"\n== release of {files} CBCT files, medians of {rounds} rounds ({state})")
    for case, times in results.items():
        print(f"  {case:<10} {statistics.median(times):7.2f} s")
    ratio = statistics.median(r / c for r, c in zip(results["release"], results["cp"], strict=True))
    share = statistics.median(
        u / r for u, r in zip(results["unchanged"], results["release"], strict=True)
    )
    print(f"  release / cp -r (+sync)      {ratio:.2f}x   (target <= 1.5)")
    print(f"  unchanged / first release    {share:.1%}   (target < 5 %)")


def main() -> None:
    global COLD
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each case")
    args = parser.parse_args()
    COLD = args.cold
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp)
        size, dirs = prepare(base, args.patients)
        print(
            f"dataset: {args.patients} patients, {size / 1e9:.2f} GB of CBCT in {len(dirs)} series folders"
        )
        bench(base, dirs, args.rounds)


if __name__ == "__main__":
    main()
