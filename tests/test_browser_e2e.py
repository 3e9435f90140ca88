"""The whole flow in headless Chromium against the real portal (launcher, worker, Redis).

Identity comes from the proxy header (production mode), set per browser context, so two
users can be checked side by side. Screenshots of each page go to test-output/screenshots.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from exporter import schemas, services
from exporter.archive.verify import verify
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import free_port
from exporter.schemas import ExportRequest

SHOTS = PROJECT_ROOT / "test-output" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESEARCHER = "researcher@demo.example"
OUTSIDER = "outsider@other.example"


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """`python -m exporter run` in production mode on a free port, with demo data."""
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = {
        **os.environ,
        "PORTAL_ENV": "production",
        "TRUSTED_PROXIES": "127.0.0.1",  # the browser stands in for the sign-in proxy
        "DATABASE_URL": f"sqlite:///{tmp / 'portal.db'}",
        "DATA_ROOT": str(tmp / "data"),
        "EXPORT_ROOT": str(tmp / "exports"),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing there: a private Redis
        "DISK_RESERVE": "1MiB",
    }
    # Medium-sized demo data, loaded before the launcher starts (which then finds it): large
    # enough that an export at level 6 runs for a few seconds and can be cancelled.
    settings = Settings.load(environ=env, env_file=tmp / "none.env")
    services.migrate(settings)
    services.load_demo(settings, patients=12, seed=1, scale="medium", release_projects=True)
    log = open(tmp / "portal.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _up(base + "/_stcore/health"):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "portal.log").read_text()
        time.sleep(0.5)
    private = re.search(r"started a private one at (redis://\S+)", (tmp / "portal.log").read_text())
    assert private, "the launcher should have started its own Redis"
    yield base, dataclasses.replace(settings, redis_url=private.group(1))
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        yield chromium
        chromium.close()


def page_as(browser: Browser, email: str) -> Page:
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000},
        extra_http_headers={"X-Forwarded-User": email},
        accept_downloads=True,
    )
    return context.new_page()


def curation_page(browser: Browser, base: str, email: str) -> Page:
    """The DICOM curation page, open and drawn, for ``email``."""
    page = page_as(browser, email)
    page.goto(base + "/curation")
    expect(page.get_by_role("heading", name="DICOM curation")).to_be_visible(timeout=60_000)
    return page


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def metric(page: Page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


@pytest.mark.slow
def test_researcher_selects_exports_downloads_and_verifies(
    portal: tuple[str, Settings], browser: Browser, tmp_path: Path
) -> None:
    base, settings = portal
    page = page_as(browser, RESEARCHER)
    page.goto(base + "/")
    expect(page.get_by_text("Demo cohort").first).to_be_visible(timeout=60_000)
    shot(page, "1-registry")
    expect(page.get_by_role("link", name="Exports")).to_be_visible()
    assert page.get_by_role("link", name="DICOM curation").count() == 0, "managers only"

    page.goto(base + "/new_export")
    expect(page.get_by_role("heading", name="New export")).to_be_visible(timeout=60_000)
    assert metric(page, "Patients") == "0"
    tree = page.frame_locator("iframe").first
    tree.locator("label:has-text('site-a') .rct-checkbox").first.click()
    expect(page.get_by_text(re.compile(r"^CBCT — "))).to_be_visible(timeout=20_000)
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("6", timeout=20_000)
    files_all = int(metric(page, "Files").replace(",", ""))
    page.get_by_text(re.compile(r"^IOP — ")).click()  # untick the intraoral photos
    expect(page.locator('[data-testid="stMetricValue"]').nth(1)).not_to_have_text(
        str(files_all), timeout=20_000
    )
    assert int(metric(page, "Files").replace(",", "")) < files_all
    shot(page, "2-new-export")
    page.get_by_role("button", name="Create export").click()
    expect(page.get_by_text("is queued")).to_be_visible(timeout=30_000)
    shot(page, "3-created")

    page.goto(base + "/exports")
    expect(page.get_by_text("completed").first).to_be_visible(timeout=90_000)
    shot(page, "4-exports")
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("link", name="Download").first.click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    assert target.suffix == ".zip"
    assert verify(target).ok
    (view,) = services.list_exports(settings, RESEARCHER)
    assert view.status == "completed" and view.patient_count == 6


@pytest.mark.slow
def test_a_member_of_another_project_sees_none_of_it(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    exports = services.list_exports(settings, RESEARCHER)
    page = page_as(browser, OUTSIDER)
    page.goto(base + "/exports")
    expect(page.get_by_role("heading", name="Exports")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("No exports yet.")).to_be_visible(timeout=20_000)
    page.goto(base + "/new_export")
    project = page.get_by_role("combobox", name="Project")
    expect(project).to_have_value("Other study (other)", timeout=60_000)
    project.click()
    expect(page.get_by_role("option").first).to_be_visible(timeout=10_000)
    options = page.get_by_role("option").all_inner_texts()
    assert options == ["Other study (other)"], options
    page.keyboard.press("Escape")
    shot(page, "5-outsider")
    for view in exports:
        response = page.request.get(f"{base}/api/demo/exports/{view.id}/download/")
        assert response.status == 404


@pytest.mark.slow
def test_no_identity_in_production_shows_not_signed_in(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, _ = portal
    page = browser.new_page()
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Not signed in")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("could not tell who you are")).to_be_visible(timeout=20_000)
    assert page.get_by_text("Demo cohort").count() == 0
    assert page.get_by_role("link", name="Exports").count() == 0
    shot(page, "6-not-signed-in")


@pytest.mark.slow
def test_cancel_a_running_export_from_the_exports_page(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    selection = schemas.parse_selection(folders=["/"], modalities=["cbct", "ios"])
    view = services.create_export(
        settings,
        RESEARCHER,
        "demo",
        ExportRequest(selection=selection, name="to-cancel", compression="small"),
    )
    page = page_as(browser, RESEARCHER)
    page.goto(base + "/exports")
    cancel = page.locator(f".st-key-cancel-{view.id} button")  # the button's widget key
    expect(page.get_by_role("button", name="Cancel").first).to_be_visible(timeout=60_000)
    deadline = time.monotonic() + 30
    while services.get_export(settings, RESEARCHER, view.id).status != "processing":
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.1)
    page.get_by_role("button", name="Cancel").first.click()  # the popover asks first
    cancel.click()
    expect(page.get_by_text("cancelled").first).to_be_visible(timeout=15_000)
    expect(cancel).to_have_count(0, timeout=15_000)
    shot(page, "7-cancelled")
    assert services.get_export(settings, RESEARCHER, view.id).status == "cancelled"
    assert not (settings.export_root / view.id).exists()


@pytest.mark.slow
def test_curl_resumes_a_broken_download_with_a_token(
    portal: tuple[str, Settings], tmp_path: Path
) -> None:
    base, settings = portal
    secret, _ = services.create_token(settings, RESEARCHER, "curl")
    view = next(v for v in services.list_exports(settings, RESEARCHER) if v.status == "completed")
    url = f"{base}/api/demo/exports/{view.id}/download/"
    auth = ["-H", f"Authorization: Bearer {secret}"]
    target = tmp_path / "export.zip"
    subprocess.run(["curl", "-fs", "-r", "0-4095", "-o", str(target), *auth, url], check=True)
    assert target.stat().st_size == 4096  # a broken download
    subprocess.run(["curl", "-fs", "-C", "-", "-o", str(target), *auth, url], check=True)
    original = next((settings.export_root / view.id).glob("*.zip")).read_bytes()
    assert target.read_bytes() == original
    assert verify(target).ok


@pytest.mark.slow
def test_a_data_manager_curates_a_header_field(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    manager = "manager@demo.example"
    page = curation_page(browser, base, manager)
    expect(page.get_by_role("link", name="DICOM curation")).to_be_visible()  # in the menu
    expect(page.get_by_role("heading", name="Header")).to_be_visible(timeout=30_000)
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Edit a field")).to_be_visible()
    expect(page.get_by_role("button", name="Save value")).to_be_visible()
    expect(page.get_by_role("button", name="Clear curation")).to_be_visible()

    page.get_by_placeholder("Filter by keyword, tag or value").fill("Description")
    page.keyboard.press("Enter")  # the table shows the two description fields
    page.wait_for_timeout(1000)
    field = page.get_by_role("combobox", name="Field")
    field.click()
    page.keyboard.type("StudyDescription")
    page.keyboard.press("Enter")
    expect(field).to_have_value(re.compile(r"^StudyDescription"), timeout=20_000)
    value = page.get_by_role("textbox", name="New value")
    expect(value).to_have_count(1, timeout=20_000)  # the earlier field's input is gone
    expect(value).to_have_attribute("placeholder", "text")  # StudyDescription is LO: text
    value.fill("Cohort A, curated")
    page.get_by_role("button", name="Save value").click()
    expect(page.get_by_text("→ 'Cohort A, curated'")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    page.set_viewport_size({"width": 1400, "height": 2000})  # the page scrolls inside itself
    page.wait_for_timeout(1500)  # let the tables settle before the screenshot
    shot(page, "curation")
    (edit,) = services.curation_history(settings, manager, "demo", "P0001")
    assert (edit.keyword, edit.value, edit.scope) == (
        "StudyDescription",
        "Cohort A, curated",
        "series",
    )


@pytest.mark.slow
def test_a_data_manager_imports_curated_values_from_a_csv(
    portal: tuple[str, Settings], browser: Browser, tmp_path: Path
) -> None:
    base, settings = portal
    manager = "manager@demo.example"
    page = curation_page(browser, base, manager)
    page.get_by_text("Import values from a CSV file").click()
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("patient,series,field,value\nP0003,,StudyDate,yesterday\n")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(wrong))
    expect(page.get_by_text("wrong.csv")).to_be_visible(timeout=30_000)  # uploaded: rerun done
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Apply the file").click()
    expect(page.get_by_text("Nothing was applied")).to_be_visible(timeout=30_000)
    assert services.curation_history(settings, manager, "demo", "P0003") == []
    good = tmp_path / "good.csv"
    good.write_text("patient,series,field,value\nP0003,,InstitutionName,Research Site\n")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(good))
    expect(page.get_by_text("good.csv")).to_be_visible(timeout=30_000)  # uploaded: rerun done
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Apply the file").click()
    expect(page.get_by_text("1 line(s) applied.")).to_be_visible(timeout=30_000)
    shot(page, "curation-import")
    (edit,) = services.curation_history(settings, manager, "demo", "P0003")
    assert (edit.keyword, edit.value, edit.scope) == ("InstitutionName", "Research Site", "patient")


MANAGER = "manager@demo.example"
SCIENTIST = "scientist@demo.example"


def test_a_data_manager_releases_from_the_releases_page_and_reads_its_log(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    page = page_as(browser, MANAGER)
    page.goto(base + "/releases")
    expect(page.get_by_role("heading", name="Releases", exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Only patients not yet released to demo-released")).to_be_visible()
    # Every patient not yet released, intraoral scans only (a small release).
    for key in ("cbct", "intraoral-photo", "panoramic", "cephalometric", "facial-photo"):
        page.get_by_role("button", name=f"Remove {key}").click()
        expect(page.get_by_role("button", name=f"Remove {key}")).to_have_count(0)
    expect(page.get_by_text(re.compile(r"^12 patients, \d+ files"))).to_be_visible()
    page.get_by_label("Name").fill("first batch")
    page.get_by_role("button", name="Release", exact=True).click()
    expect(page.get_by_text("Release first batch is queued.")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("completed")).to_be_visible(timeout=120_000)
    page.get_by_text("Release log").click()
    expect(page.get_by_role("button", name="Download release_log.csv")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    shot(page, "releases")
    (view,) = services.list_releases(settings, MANAGER)
    assert view.status == "completed" and view.counts["created"] == view.file_count
    # The queue is empty now: nothing left to release for these modalities.
    page.reload()
    expect(page.get_by_text(re.compile(r"^0 patients, 0 files"))).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="Release", exact=True)).to_be_disabled()

    # The destination's researcher sees the released patients under their pseudonyms.
    other = page_as(browser, SCIENTIST)
    other.goto(base + "/")
    expect(other.get_by_role("heading", name="Released for data science")).to_be_visible(
        timeout=60_000
    )
    expect(other.get_by_text("Demo cohort")).to_have_count(0)
    expect(
        other.get_by_text(re.compile("Release destination: 12 patients released"))
    ).to_be_visible()
    shot(other, "released-registry")
