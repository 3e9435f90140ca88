"""A researcher's day in headless Chromium against the real portal (launcher, worker,
Redis): what is typed on New export reaches the export, a double click makes one export,
Export again ticks a folder selection, the e-mail's link opens the export, /api/docs shows
the operations, and a signed-in user without a portal account meets no traceback."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, Page, expect

from exporter import schemas, services
from exporter.config import Settings
from exporter.schemas import ExportRequest
from tests.test_browser_e2e import RESEARCHER, metric, page_as, shot
from tests.test_browser_e2e import browser as browser  # the fixtures, one portal per module
from tests.test_browser_e2e import portal as portal

pytestmark = pytest.mark.slow
NOBODY = "nobody@nowhere.example"  # signed in by the proxy, unknown to the portal


def new_export(page: Page, base: str) -> None:
    page.goto(base + "/new_export")
    expect(page.get_by_role("heading", name="New export")).to_be_visible(timeout=60_000)


def tick_site_a(page: Page) -> None:
    tree = page.frame_locator("iframe").first
    tree.locator("label:has-text('site-a') .rct-checkbox").first.click()
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("6", timeout=20_000)


def test_the_typed_name_reaches_the_export_and_a_double_click_makes_one(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    page = page_as(browser, RESEARCHER)
    new_export(page, base)
    name = page.get_by_role("textbox", name="Name")
    name.fill("ortho cohort, first look")
    name.press("Tab")
    tick_site_a(page)  # reruns after the name was typed: it stays
    expect(name).to_have_value("ortho cohort, first look")
    page.get_by_role("textbox", name="Notes").fill("for the growth study")
    page.get_by_role("textbox", name="Notes").press("Tab")
    page.get_by_role("button", name="Create export").dblclick()
    expect(page.get_by_text("is queued")).to_be_visible(timeout=30_000)
    time.sleep(2)  # a second click's run, if it made anything, has saved it by now
    shot(page, "r1-created-once")
    made = [v for v in services.list_exports(settings, RESEARCHER) if v.notes]
    assert [(v.name, v.notes) for v in made] == [
        ("ortho cohort, first look", "for the growth study")
    ]


def export_of(settings: Settings, name: str, folder: str) -> schemas.ExportView:
    selection = schemas.parse_selection(folders=[folder], modalities=["ios"])
    return services.create_export(
        settings, RESEARCHER, "demo", ExportRequest(selection=selection, name=name)
    )


def test_export_again_of_a_folder_selection_ticks_the_folder(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    first = export_of(settings, "site a ios", "site-a")
    page = page_as(browser, RESEARCHER)
    page.goto(base + "/exports")
    again = page.locator(f".st-key-again-{first.id} button")
    expect(again).to_be_visible(timeout=60_000)
    again.click()
    expect(page.get_by_role("heading", name="New export")).to_be_visible(timeout=30_000)
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text(
        str(first.patient_count), timeout=20_000
    )
    expect(page.get_by_role("textbox", name="Name")).to_have_value("site a ios again")
    expect(page.get_by_role("button", name="Create export")).to_be_enabled()
    assert metric(page, "Patients") == "6"
    shot(page, "r2-export-again")


def test_the_email_link_opens_the_exports_details(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = portal
    view = export_of(settings, "from the mail", "/")
    page = page_as(browser, RESEARCHER)
    page.goto(f"{base}/exports?export={view.id}")
    expect(page.get_by_text("from the mail").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(view.id).first).to_be_visible(timeout=20_000)  # details open
    expect(page.get_by_text("site a ios", exact=False)).to_have_count(0)  # that export alone
    expect(page.get_by_role("button", name="Show all exports")).to_be_visible()
    shot(page, "r3-mail-link")


def test_api_docs_render_the_operations(portal: tuple[str, Settings], browser: Browser) -> None:
    base, _ = portal
    page = page_as(browser, RESEARCHER)
    outside: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith(base) else None,
    )
    page.goto(base + "/api/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
    assert page.locator(".opblock").count() >= 20
    expect(page.get_by_text("/api/{project}/exports/create/").first).to_be_visible()
    assert page.locator(".errors-wrapper").count() == 0, "the document was read"
    assert outside == [], f"no request leaves the portal: {outside}"
    shot(page, "r4-api-docs")


@pytest.mark.parametrize(
    "path", ["/", "/new_export", "/exports", "/curation", "/releases", "/privacy", "/tokens"]
)
def test_a_user_without_an_account_meets_no_traceback(
    portal: tuple[str, Settings], browser: Browser, path: str
) -> None:
    base, _ = portal
    page = page_as(browser, NOBODY)
    page.goto(base + path)
    page.wait_for_load_state("networkidle")
    expect(page.locator('[data-testid="stMain"]')).to_be_visible(timeout=60_000)
    time.sleep(1.5)  # the script run has drawn its message
    assert page.locator('[data-testid="stException"]').count() == 0
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert not re.search(r"Traceback|File \"/|NotFound", text), text
    assert re.search(r"member|account|data manager|ask", text, re.I), text
    shot(page, f"r5-no-account{path.replace('/', '-') or '-home'}")


def test_the_pages_ask_nothing_of_another_host(
    portal: tuple[str, Settings], browser: Browser
) -> None:
    """The portal runs offline: no font, icon or script from elsewhere (the page icon was a
    Material symbol fetched from a CDN)."""
    base, _ = portal
    page = page_as(browser, RESEARCHER)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
    for path in ("/", "/new_export", "/exports"):
        page.goto(base + path)
        expect(page.locator('[data-testid="stMain"]')).to_be_visible(timeout=60_000)
        page.wait_for_load_state("networkidle")
    assert outside == [], outside
