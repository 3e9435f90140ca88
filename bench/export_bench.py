"""Export engine benchmark against cp and Info-ZIP on the same files, in the same run.

Generates CBCT series of 512x512 slices, STL scans and JPEG photos (the demo generator at
"large" scale), registers them, then times, per round and interleaved:
  cp -r            copy of the source tree (the disk's own pace)
  zip -r -0 / -1   Info-ZIP stored / fastest deflate on the same files
  export store     the portal's default export (pseudonymised: PS3.15 profile on every
                   header, other files scrubbed, the residual-identifier check), stored,
                   SHA-256 of every file checked and recorded
  export fast      the same, deflate level 1 on DICOM/STL, both cores
Every figure is warm (the sources are read untimed right before each case); ratios are
medians of per-round ratios. The export fsyncs its archive before it calls it complete, so
each peer is timed up to a `sync` of what it wrote (cp -r without it is shown for
reference). Peak RSS of the export process is shown at two dataset sizes, with the RSS of
the same process before the export began (Python, SQLAlchemy, the file list).

Then, on the smaller dataset (``--privacy-only`` runs just this part): the default export
with and without the residual-identifier check (target: at most 10 % more time, the same
peak memory), stored and fast, and the DICOM change log's rows per 1,000 CBCT files, as the
log stored them before (one row per file and field) and as it stores them now (series rows).

Then, on the CBCT series of the smaller dataset (``--rewrite-only`` runs just this part):
  export no-rewrite   the export with DICOM files copied as they are
  export rewrite      curated values (2 fields) and the label written into every header
                      (an identified export: only those 4 fields change)
  export deid         the PS3.15 Basic profile on every header (a de-identified export)
  dcmodify            DCMTK changing the same 4 fields on copies of the same files, in place
  dcmodify deid       DCMTK making the de-identified export's changes (same tags) in place
  copy / copy-deid    the portal's rewrite alone, as dcmodify works: modified copies of the
                      files, no ZIP, no hashes, one thread
Targets: rewrite <= 1.5x no-rewrite; rewrite files/s >= dcmodify's. The export also checks
every source's SHA-256 and hashes every entry and the archive (dcmodify does neither), so
the copy cases show the rewrite itself against dcmodify.

Last, per dataset, the archive writer's two ways to the disk on the same bytes: buffered
(through the page cache) and O_DIRECT (what the export uses where the filesystem allows).

--cold drops the page cache before every case instead of reading the inputs first (root
only): the sources then come from the disk, as at 1000 patients in production.

BENCH_DIR sets where the datasets and every output go (default: the system's temporary
directory, on the disk). With BENCH_DIR=/dev/shm nothing waits for a disk and only CPU counts:
there the export's three SHA-256 passes over a rewritten file (source check, entry, archive)
cost more than all of dcmodify's work.

Usage: .venv/bin/python bench/export_bench.py [--patients 25] [--small-patients 8] [--rounds 3]
       .venv/bin/python bench/export_bench.py --rewrite-only [--small-patients 8] [--cold]
       .venv/bin/python bench/export_bench.py --privacy-only [--small-patients 8]
       .venv/bin/python bench/export_bench.py --writes-only [--patients 25]
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

from exporter import schemas, services  # noqa: E402
from exporter.access.accounts import principal_for  # noqa: E402
from exporter.archive.build import ExportInfo, build_export, export_transform, part_paths  # noqa: E402
from exporter.archive.layout import PlannedFile, PlannedPart, plan_files, pseudonyms  # noqa: E402
from exporter.archive.residual import Needles, PatientFacts, part_needles  # noqa: E402
from exporter.archive.transform import Change, HeaderRewriter  # noqa: E402
from exporter.config import Settings  # noqa: E402
from exporter.dicom.rules import CurationRules  # noqa: E402
from exporter.registry import query as registry  # noqa: E402
from exporter.registry.query import select_files  # noqa: E402
from exporter.schemas import ExportOptions, FileEntry  # noqa: E402
from exporter.store import db  # noqa: E402

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
    from exporter.dev import demo_data  # numpy and Pillow stay out of the export's process

    settings = settings_for(base)
    manifest = demo_data.write_demo_tree(
        settings.data_root / "bench", patients=patients, seed=11, scale="large"
    )
    services.migrate(settings)
    services.add_project(settings, "bench")
    services.register(settings, "bench", settings.data_root / "bench")
    services.add_user(settings, USER, "bench", "researcher")
    return manifest.bytes


CURATED = {
    0x00081030: ("StudyDescription", "Curated study"),
    0x00080080: ("InstitutionName", "Site"),
}


class NoRewrite(HeaderRewriter):
    """The baseline: every file copied as it is (one hash serves source and entry)."""

    def applies_to(self, planned: PlannedFile) -> bool:
        return False


WHOLE = ("default", "nocheck", "changelog")  # modes that export the whole dataset
LEVEL = {"none": "identified", "rewrite": "identified", "deid": "deidentified"}


def child(base: Path, compression: str, out: Path, mode: str = "default") -> None:
    """Run one export in this (fresh) process and print its time, size and peak RSS.

    ``mode``: default (the whole dataset, as exports run: pseudonymised, with the residual
    check on the registry's identifiers), nocheck (the same without the check), changelog
    (the default, counting the change log's rows), or on the CBCT series only: none (no
    rewrite), rewrite (curated values + label), deid (the profile)."""
    settings = settings_for(base)
    modalities = ["cbct", "ios", "intraoral-photo"] if mode in WHOLE else ["cbct"]
    kinds = None if mode in WHOLE else ["raw"]
    sel = schemas.parse_selection(folders=["/"], modalities=modalities, kinds=kinds)
    with db.session_scope(settings) as session:
        files = select_files(session, principal_for(session, USER), "bench", sel)
        found = registry.identities(session, {f.patient_id for f in files})
    names = pseudonyms({f.patient_label for f in files})
    facts = [PatientFacts(names[p.label], p.label, p.source_dir, p.headers) for p in found]

    def identifiers(part: PlannedPart) -> Needles:  # the job's needles
        return part_needles(facts, part_paths(part), search_study_dates=True)

    info = ExportInfo("bench", "export_bench", "bench", USER, datetime.now(UTC))
    options = ExportOptions(compression=compression, privacy=LEVEL.get(mode, "pseudonymised"))
    counted = {
        "rows": 0,
        "changes": 0,
        "dicom": sum(f.media_type == "application/dicom" for f in files),
    }

    def sink(rows: list[Change]) -> None:
        counted["rows"] += len(rows)
        counted["changes"] += sum(r.files for r in rows)

    transform: HeaderRewriter | None = None
    if mode == "none":
        transform = NoRewrite()
    elif mode == "rewrite":
        rules = CurationRules(by_patient={f.patient_id: dict(CURATED) for f in files})
        transform = export_transform(options, [], rules)
    if mode in ("copy", "copy-deid"):
        copy_rewritten(files, settings.data_root, out, mode == "copy-deid")
        return
    before_kib = peak_rss_kib()
    start = time.perf_counter()
    result = build_export(
        files,
        out,
        info,
        options,
        settings.data_root,
        transform=transform,
        names=names,
        identifiers=identifiers,
        check_identifiers=mode != "nocheck",
        changes_sink=sink if mode == "changelog" else None,
    )
    seconds = time.perf_counter() - start
    rss_kib = peak_rss_kib()
    report = result.parts[0].privacy_report
    print(
        json.dumps(
            {
                "seconds": seconds,
                "size": result.parts[0].size,
                "rss_mib": rss_kib / 1024,
                "rss_before_mib": before_kib / 1024,
                "files": result.files,
                "check": report.get("result"),
                "searched": report.get("checked", {}).get("bytes_searched", 0),
                **counted,
            }
        )
    )


def copy_rewritten(files: list[FileEntry], root: Path, out: Path, deid: bool) -> None:
    """The rewrite alone, as dcmodify does it: read each file, write a copy with the new
    header (no ZIP, no hashes), then sync; one process, one thread, like dcmodify."""
    options = ExportOptions(privacy="deidentified" if deid else "identified")
    planned = plan_files(files, pseudonyms({f.patient_label for f in files}) if deid else None)
    rules = CurationRules(by_patient={f.patient_id: dict(CURATED) for f in files})
    transform = export_transform(options, [], None if deid else rules)
    out.mkdir(parents=True)
    start = time.perf_counter()
    for n, item in enumerate(planned):
        with open(root / item.source.path, "rb") as fh:
            header, head, offset, _ = transform.rewrite(item, fh.read(1 << 20), fh)
            with open(out / f"{n}.dcm", "wb") as dest:
                dest.write(header)
                dest.write(memoryview(head)[offset:])
                while chunk := fh.read(1 << 20):
                    dest.write(chunk)
    subprocess.run(["sync"], check=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "files": len(planned)}))


def peak_rss_kib() -> int:
    """This process's peak RSS. Not ru_maxrss: Linux carries the parent's high-water mark
    across fork and exec into it, so a child started by a big parent reports the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


COLD = False  # --cold: every case starts with the page cache dropped (root only)


def warm(source: Path) -> None:
    """Before each case: read the inputs untimed (warm), or drop the page cache (cold: what a
    worker meets at 1000 patients, the sources read from the disk)."""
    if COLD:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    subprocess.run(
        f"find {source} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
    )


def timed_cmd(cmd: list[str], cwd: Path | None = None, sync: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    if sync:
        subprocess.run(["sync"], check=True)
    return time.perf_counter() - start


def run_export(base: Path, compression: str, out: Path, mode: str = "default") -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(base), compression, str(out), mode],
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
    sizes_on_disk = [p.stat().st_size for p in source.rglob("*") if p.is_file()]
    total = sum(sizes_on_disk)
    state = "cold" if COLD else "warm"
    print(
        f"  dataset {total / 1e9:.2f} GB, {len(sizes_on_disk)} files; "
        f"medians of {rounds} rounds ({state})"
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


def cbct_files(base: Path) -> list[FileEntry]:
    settings = settings_for(base)
    sel = schemas.parse_selection(folders=["/"], modalities=["cbct"], kinds=["raw"])
    with db.session_scope(settings) as session:
        return select_files(session, principal_for(session, USER), "bench", sel)


def dcmodify_args(base: Path, files: list[FileEntry], deid: bool) -> dict[str, list[str]]:
    """dcmodify's arguments per series: the same fields the export changes.

    For the rewrite: the 4 fields (2 curated, PatientID, PatientName). For the profile: the
    changes the de-identified export makes to the series' first file, one dcmodify option per
    changed element (-e to remove, -m to set), and -gin for the per-file SOP Instance UID."""
    by_series: dict[str, list[FileEntry]] = {}
    for f in files:
        by_series.setdefault(f"{f.patient_label}/{f.series_label}", []).append(f)
    args: dict[str, list[str]] = {}
    planned = {
        p.source.id: p for p in plan_files(files, pseudonyms({f.patient_label for f in files}))
    }
    transform = export_transform(ExportOptions(privacy="deidentified"), [])
    for key, members in by_series.items():
        item = planned[members[0].id]
        if not deid:
            pseudo = item.patient_dir
            args[key] = ["-m", f"(0010,0010)={pseudo}", "-m", f"(0010,0020)={pseudo}"]
            for tag, (_, value) in CURATED.items():
                args[key] += ["-m", f"({tag >> 16:04x},{tag & 0xFFFF:04x})={value}"]
            continue
        with open(settings_for(base).data_root / item.source.path, "rb") as fh:
            _, _, _, changes = transform.rewrite(item, fh.read(1 << 20), fh)
        ops = ["-imt", "-gin"]
        for c in changes:
            path = c.tag.replace("](", "].(")
            nested = "[" in c.tag or c.keyword.endswith("Sequence")
            if c.keyword == "SOPInstanceUID" or (nested and c.action != "removed"):
                continue
            if c.new_value is None:
                ops += ["-e", path]
            else:
                ops += ["-i" if c.action == "set" else "-m", f"{path}={c.new_value}"]
        args[key] = ops
    return args


def bench_rewrite(base: Path, rounds: int) -> None:
    """The header rewrite against no rewrite and against dcmodify, on the CBCT series."""
    files = cbct_files(base)
    scratch = base / "scratch"
    plain_args = dcmodify_args(base, files, deid=False)
    deid_args = dcmodify_args(base, files, deid=True)
    source = base / "data"
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for case in ("none", "rewrite", "deid", "dcmodify", "dcmodify-deid", "copy", "copy-deid"):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            warm(source / "bench")
            if case.startswith("dcmodify"):
                copies = scratch / "copy"
                shutil.copytree(source / "bench", copies)
                subprocess.run(["sync"], check=True)
                if COLD:
                    warm(copies)
                per_series = deid_args if case == "dcmodify-deid" else plain_args
                start = time.perf_counter()
                for key, ops in per_series.items():
                    members = [f for f in files if f"{f.patient_label}/{f.series_label}" == key]
                    paths = [str(copies / f.path.split("/", 1)[1]) for f in members]
                    subprocess.run(
                        ["dcmodify", "-nb", "-q", *ops, *paths],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                subprocess.run(["sync"], check=True)
                results.setdefault(case, []).append(time.perf_counter() - start)
            else:
                figures = run_export(base, "store", scratch / "export", case)
                assert int(figures["files"]) == len(files)
                results.setdefault(case, []).append(figures["seconds"])
    shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))

    state = "cold" if COLD else "warm"
    print(f"\n== header rewrite: {len(files)} CBCT files, medians of {rounds} rounds ({state})")
    for case, seconds in med.items():
        print(f"  {case:<14} {seconds:7.2f} s  {len(files) / seconds:8.0f} files/s")
    print(f"  rewrite / no-rewrite export        {ratio('rewrite', 'none'):.2f}x  (target <= 1.5)")
    print(
        f"  rewrite files/s / dcmodify files/s {ratio('dcmodify', 'rewrite'):.2f}x  (target >= 1.0)"
    )
    print(f"  deid / no-rewrite export           {ratio('deid', 'none'):.2f}x")
    print(f"  deid files/s / dcmodify (deid) files/s {ratio('dcmodify-deid', 'deid'):.2f}x")
    print(f"  rewrite alone files/s / dcmodify files/s {ratio('dcmodify', 'copy'):.2f}x")
    print(
        f"  deid alone files/s / dcmodify (deid) files/s {ratio('dcmodify-deid', 'copy-deid'):.2f}x"
    )


def bench_privacy(base: Path, rounds: int) -> None:
    """The residual-identifier check's cost, and the change log's size, on the default
    export (pseudonymised) of the whole dataset."""
    source = base / "data" / "bench"
    scratch = base / "scratch"
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for compression in ("store", "fast"):
            for mode in ("default", "nocheck"):
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir()
                subprocess.run(["sync"], check=True)
                warm(source)
                figures = run_export(base, compression, scratch / "export", mode)
                runs.setdefault(f"{compression} {mode}", []).append(figures)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    log = run_export(base, "store", scratch / "export", "changelog")
    shutil.rmtree(scratch, ignore_errors=True)
    state = "cold" if COLD else "warm"
    print(f"\n== residual-identifier check: medians of {rounds} rounds ({state})")
    for compression in ("store", "fast"):
        on, off = runs[f"{compression} default"], runs[f"{compression} nocheck"]
        ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(on, off, strict=True))
        print(
            f"  {compression:<5} with check {statistics.median(r['seconds'] for r in on):6.2f} s, "
            f"without {statistics.median(r['seconds'] for r in off):6.2f} s: {ratio:.3f}x "
            "(target <= 1.10)"
        )
        print(
            f"        peak RSS with {max(r['rss_mib'] for r in on):.0f} MiB, without "
            f"{max(r['rss_mib'] for r in off):.0f} MiB; check {on[0]['check']}, "
            f"{on[0]['searched'] / 1e6:.1f} MB searched"
        )
    per = 1000 / log["dicom"] if log["dicom"] else 0
    print(
        f"  change log per 1,000 CBCT files: {log['changes'] * per:,.0f} rows before (one per "
        f"file and field), {log['rows'] * per:,.0f} rows now: "
        f"{log['changes'] / max(log['rows'], 1):.1f}x fewer   (target >= 10x)"
    )


def bench_writes(directory: Path, size: int, rounds: int) -> None:
    """The archive writer's two ways to the disk, on the same bytes: buffered (through the
    page cache, as the export wrote until it took O_DIRECT) and O_DIRECT. Each writes
    ``size`` bytes from a reused buffer, hashes them and fsyncs; CPU is this process's."""
    from exporter.archive.sourceio import ArchiveWriter

    piece = os.urandom(1024 * 1024)
    results: dict[str, list[tuple[float, float]]] = {"buffered": [], "direct": []}
    for _ in range(rounds):
        for case in results:
            path = directory / f"writes-{case}.bin"
            subprocess.run(["sync"], check=True)
            before, start = os.times(), time.perf_counter()
            out = ArchiveWriter(path, direct=case == "direct")
            for _ in range(size // len(piece)):
                out.write(piece)
            out.finish()
            after = os.times()
            cpu = after.user + after.system - before.user - before.system
            results[case].append((time.perf_counter() - start, cpu))
            path.unlink()
    print(
        f"\n== archive writes: {size / 1e9:.2f} GB, hashed and fsynced, medians of {rounds} rounds"
    )
    for case, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {case:<9} {wall:6.2f} s  {size / wall / 1e6:6.0f} MB/s  CPU {cpu:5.2f} s")


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
    parser.add_argument("--rewrite-only", action="store_true", help="only the rewrite section")
    parser.add_argument(
        "--cold", action="store_true", help="drop the page cache before every case (root)"
    )
    parser.add_argument(
        "--writes-only", action="store_true", help="only the archive write-path section"
    )
    parser.add_argument(
        "--privacy-only", action="store_true", help="only the residual check and change log"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("BASE", "COMPRESSION", "OUT", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]), args.child[3])
        return
    global COLD
    COLD = args.cold
    if args.writes_only:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            bench_writes(Path(tmp), args.patients * 108 * 1024 * 1024, args.rounds)
        return
    rss = {}
    for patients in (args.small_patients, args.patients):
        if (args.rewrite_only or args.privacy_only) and patients != args.small_patients:
            break
        base = Path(tempfile.mkdtemp(prefix="bench-export-", dir=os.environ.get("BENCH_DIR")))
        try:
            size = prepare(base, patients)
            print(f"\n== {patients} patients ({size / 1e9:.2f} GB)")
            if patients == args.small_patients and not args.privacy_only:
                bench_rewrite(base, args.rounds)
            if patients == args.small_patients and not args.rewrite_only:
                bench_privacy(base, args.rounds)
            if not (args.rewrite_only or args.privacy_only):
                rss[patients] = bench(base, args.rounds)["rss"]
                bench_writes(base, size, args.rounds)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if rss:
        by_size = ", ".join(f"{p} patients {r:.0f} MiB" for p, r in rss.items())
        print(f"\npeak RSS by dataset: {by_size}")


if __name__ == "__main__":
    main()
