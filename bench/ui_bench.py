"""Browser benchmark of the New export page on a large registry (headless Chromium).

Registry: 5,000 patients in 10 folders of 500, 100 file rows each (500,000 rows, inserted
directly). Measures, in the browser, the New export page's first render (until the tree
shows) and the count/size update after ticking a 500-patient folder, against the Registry
page's first render in the same run (a page with no tree: the peer for "a page").

Usage: .venv/bin/python bench/ui_bench.py [--patients 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from playwright.sync_api import expect, sync_playwright  # noqa: E402
from registry_bench import populate, settings_for  # noqa: E402

from exporter import services  # noqa: E402
from exporter.dev.redis_server import free_port  # noqa: E402

USER = "bench@example.org"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    url = f"sqlite:///{tmp / 'ui.db'}"
    proc = None
    try:
        print(f"== New export page with {args.patients:,} patients, {args.patients * 100:,} files")
        populate(url, n_patients=args.patients, per_folder=500)
        settings = settings_for(tmp, url)
        services.add_user(settings, USER, "big", "researcher")
        port = free_port()
        env = {
            **os.environ,
            "PORTAL_ENV": "production",
            "TRUSTED_PROXIES": "127.0.0.1",
            "DATABASE_URL": url,
            "DATA_ROOT": str(tmp / "data"),
            "EXPORT_ROOT": str(tmp / "exports"),
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--no-demo", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        renders, homes, updates = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for r in range(args.rounds + 1):  # the first round warms caches and is dropped
                context = browser.new_context(
                    viewport={"width": 1400, "height": 1000},
                    extra_http_headers={"X-Forwarded-User": USER},
                )
                page = context.new_page()
                start = time.perf_counter()
                page.goto(base + "/")
                expect(page.get_by_text("Patients").first).to_be_visible(timeout=60_000)
                home = time.perf_counter() - start
                start = time.perf_counter()
                page.goto(base + "/new_export")
                tree = page.frame_locator("iframe").first
                expect(tree.locator("label:has-text('site')").first).to_be_visible(timeout=60_000)
                render = time.perf_counter() - start
                folder = f"c{r % 10:02d}"
                tree.locator("span.rct-text:has(label:has-text('site')) button").first.click()
                expect(tree.locator(f"label:has-text('{folder}')").first).to_be_visible()
                value = page.locator('[data-testid="stMetricValue"]').first
                expect(value).to_have_text("0", timeout=30_000)
                start = time.perf_counter()
                tree.locator(f"label:has-text('{folder}') .rct-checkbox").first.click()
                expect(value).to_have_text("500", timeout=60_000)
                update = time.perf_counter() - start
                context.close()
                if r:
                    homes.append(home)
                    renders.append(render)
                    updates.append(update)
            browser.close()
        h, rr, u = (statistics.median(x) for x in (homes, renders, updates))
        print(f"  Registry page first render (peer)     {h:6.2f} s")
        print(
            f"  New export first render (tree shown)  {rr:6.2f} s  ({rr / h:.2f}x the peer)  target < 3 s"
        )
        print(
            f"  count/size update after ticking 500   {u:6.2f} s  ({u / h:.2f}x the peer)  target < 1 s"
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
