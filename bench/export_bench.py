"""Export engine benchmark against cp and Info-ZIP on the same files, in the same run.

Generates CBCT series of 512x512 slices, STL scans and JPEG photos (the demo generator at
"large" scale), registers them, then times, per round and interleaved:
  cp -r            copy of the source tree (the disk's own pace)
  zip -r -0 / -1   Info-ZIP stored / fastest deflate on the same files
  export store     the portal's export, stored, SHA-256 of every file checked and recorded
  export fast      the portal's export, deflate level 1 on DICOM/STL, both cores
Every figure is warm (the sources are read untimed right before each case); ratios are
medians of per-round ratios. The export fsyncs its archive before it calls it complete, so
each peer is timed up to a `sync` of what it wrote (cp -r without it is shown for
reference). Peak RSS of the export process is shown at two dataset sizes, with the RSS of
the same process before the export began (Python, SQLAlchemy, the file list).

Usage: .venv/bin/python bench/export_bench.py [--patients 25] [--small-patients 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import db, services  # noqa: E402
from exporter.accounts import principal_for  # noqa: E402
from exporter.archive import ExportInfo, ExportOptions, build_export  # noqa: E402
from exporter.config import Settings  # noqa: E402
from exporter.registry import select_files  # noqa: E402

USER = "bench@example.org"


def settings_for(base: Path) -> Settings:
    return Settings.load(
        environ={
            "DATABASE_URL": f"sqlite:///{base / 'bench.db'}",
            "DATA_ROOT": str(base / "data"),
            "EXPORT_ROOT": str(base / "exports"),
        },
        env_file=base / "none.env",
    )


def prepare(base: Path, patients: int) -> int:
    """Write and register the dataset; returns its size in bytes."""
    from exporter import demo_data  # numpy and Pillow stay out of the export's process

    settings = settings_for(base)
    manifest = demo_data.write_demo_tree(
        settings.data_root / "bench", patients=patients, seed=11, scale="large"
    )
    services.migrate(settings)
    services.add_project(settings, "bench")
    services.register(settings, "bench", settings.data_root / "bench")
    services.add_user(settings, USER, "bench", "researcher")
    return manifest.bytes


def child(base: Path, compression: str, out: Path) -> None:
    """Run one export in this (fresh) process and print its time, size and peak RSS."""
    settings = settings_for(base)
    sel = services.parse_selection(folders=["/"], modalities=["cbct", "ios", "intraoral-photo"])
    with db.session_scope(settings) as session:
        files = select_files(session, principal_for(session, USER), "bench", sel)
    info = ExportInfo("bench", "export_bench", "bench", USER, datetime.now(UTC))
    before_kib = peak_rss_kib()
    start = time.perf_counter()
    result = build_export(
        files, out, info, ExportOptions(compression=compression), settings.data_root
    )
    seconds = time.perf_counter() - start
    rss_kib = peak_rss_kib()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "size": result.parts[0].size,
                "rss_mib": rss_kib / 1024,
                "rss_before_mib": before_kib / 1024,
            }
        )
    )


def peak_rss_kib() -> int:
    """This process's peak RSS. Not ru_maxrss: Linux carries the parent's high-water mark
    across fork and exec into it, so a child started by a big parent reports the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def warm(source: Path) -> None:
    subprocess.run(
        f"find {source} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
    )


def timed_cmd(cmd: list[str], cwd: Path | None = None, sync: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    if sync:
        subprocess.run(["sync"], check=True)
    return time.perf_counter() - start


def run_export(base: Path, compression: str, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(base), compression, str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def bench(base: Path, rounds: int) -> dict[str, float]:
    source = base / "data" / "bench"
    scratch = base / "scratch"
    results: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    rss: list[float] = []
    rss_before: list[float] = []

    def record(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(seconds)

    for _ in range(rounds):
        for case in ("cp-nosync", "cp", "zip0", "store", "zip1", "fast"):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            subprocess.run(["sync"], check=True)
            warm(source)
            if case.startswith("cp"):
                cmd = ["cp", "-r", str(source), str(scratch / "copy")]
                record(case, timed_cmd(cmd, sync=case == "cp"))
            elif case.startswith("zip"):
                target = scratch / "out.zip"
                record(
                    case, timed_cmd(["zip", "-r", "-q", f"-{case[-1]}", str(target), "."], source)
                )
                sizes[case] = target.stat().st_size
            else:
                figures = run_export(base, case, scratch / "export")
                record(case, figures["seconds"])
                sizes[case] = int(figures["size"])
                rss.append(figures["rss_mib"])
                rss_before.append(figures["rss_before_mib"])
    shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = {
        "store/cp": statistics.median(
            s / c for s, c in zip(results["store"], results["cp"], strict=True)
        ),
        "store/zip0": statistics.median(
            s / z for s, z in zip(results["store"], results["zip0"], strict=True)
        ),
        "zip1/fast": statistics.median(
            z / f for z, f in zip(results["zip1"], results["fast"], strict=True)
        ),
    }
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    print(
        f"  dataset {total / 1e9:.2f} GB, {sum(1 for p in source.rglob('*') if p.is_file())} files; medians of {rounds} rounds (warm)"
    )
    for case in ("cp-nosync", "cp", "zip0", "store", "zip1", "fast"):
        size = f"  archive {sizes[case] / 1e9:.3f} GB" if case in sizes else ""
        print(f"  {case:<9} {med[case]:7.2f} s  {total / med[case] / 1e6:7.0f} MB/s{size}")
    print(f"  stored export / cp -r (+sync) {ratio['store/cp']:.2f}x   (target <= 1.25)")
    print(f"  stored export / zip -r -0    {ratio['store/zip0']:.2f}x   (target < 1.0)")
    print(f"  fast export speed-up vs zip -r -1: {ratio['zip1/fast']:.2f}x   (target >= 1.7)")
    print(
        f"  fast export size / zip -1 size: {sizes['fast'] / sizes['zip1']:.4f}   (target within 1.02)"
    )
    print(
        f"  peak RSS of the export process: max {max(rss):.0f} MiB, of which "
        f"{max(rss_before):.0f} MiB before the export began   (target < 200)"
    )
    return {"rss": max(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--patients", type=int, default=25, help="patients in the large dataset (~108 MB each)"
    )
    parser.add_argument(
        "--small-patients", type=int, default=8, help="patients in the smaller dataset"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("BASE", "COMPRESSION", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return
    rss = {}
    for patients in (args.small_patients, args.patients):
        base = Path(tempfile.mkdtemp(prefix="bench-export-", dir=os.environ.get("BENCH_DIR")))
        try:
            size = prepare(base, patients)
            print(f"\n== {patients} patients ({size / 1e9:.2f} GB)")
            rss[patients] = bench(base, args.rounds)["rss"]
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\npeak RSS by dataset: {', '.join(f'{p} patients {r:.0f} MiB' for p, r in rss.items())}"
    )


if __name__ == "__main__":
    main()
