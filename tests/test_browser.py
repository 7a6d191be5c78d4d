"""Real Chromium (headless, driven by Playwright) against the app served by gunicorn.

Needs Debian's `chromium` package (Playwright's own browser download does not
work offline). Without it these tests skip, unless LEADCRM_REQUIRE_BROWSER=1
(CI sets it), which turns the skip into a failure.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PROJECT_ROOT, gunicorn

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LEADCRM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"


def _browser_or_skip():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (make test installs it from requirements-dev.txt)"
    if reason is None and not os.path.exists(CHROMIUM):
        reason = (
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) or set LEADCRM_CHROMIUM"
        )
    if reason:
        if os.environ.get("LEADCRM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("browser")
    with gunicorn(f"sqlite:///{workdir / 'leadcrm.sqlite3'}", workdir, workers=2) as base:
        yield base


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_supervisor_and_intake_work_without_reloads(server: str, browser) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1200, "height": 850}, locale="en-US")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Operators, created through the page's form (htmx swaps the section in place).
    page.goto(f"{server}/operators/")
    expect(page.get_by_text("No operators yet")).to_be_visible()
    for name, limit in (("Anna", "2"), ("Boris", "1")):
        page.get_by_label("Name", exact=True).fill(name)
        page.get_by_label("Limit of active leads", exact=True).fill(limit)
        page.get_by_label("Active", exact=True).check()
        page.get_by_role("button", name="Add operator").click()
        expect(page.locator("table.operators")).to_contain_text(name)
    # An invalid limit shows its error next to the field and keeps the text.
    page.get_by_label("Name", exact=True).fill("Vera")
    page.get_by_label("Limit of active leads", exact=True).fill("-4")
    page.get_by_role("button", name="Add operator").click()
    expect(page.locator("#max_active_leads-error")).to_be_visible()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Vera")
    shot(page, "operators")

    # A source and its weights: the shares show as soon as they are saved.
    page.goto(f"{server}/sources/")
    page.get_by_label("Name", exact=True).fill("telegram_bot")
    page.get_by_role("button", name="Add source").click()
    expect(page.get_by_role("heading", name="telegram_bot")).to_be_visible()
    page.get_by_label("Weight of Anna").fill("10")
    page.get_by_label("Weight of Boris").fill("30")
    page.get_by_role("button", name="Save weights").click()
    expect(page.get_by_test_id("share-1")).to_have_text("25.0 %")
    expect(page.get_by_test_id("share-2")).to_have_text("75.0 %")
    shot(page, "weights")

    # A second tab keeps the load table open; we will watch it change by itself.
    load = context.new_page()
    load.goto(server + "/")
    load.evaluate("window.__sameDocument = true")
    expect(load.get_by_test_id("load-1")).to_have_text("0 / 2")

    # Intake, by keyboard only: the form comes back empty with focus on its first field.
    page.goto(f"{server}/intake/")
    expect(page.get_by_label("Source")).to_be_focused()
    phones = ["8 900 111-11-11", "+7 900 222-22-22", "89003333333", "+79004444444"]
    for n, phone in enumerate(phones):
        page.keyboard.press("Tab")
        expect(page.get_by_label("Phone")).to_be_focused()
        page.keyboard.type(phone)
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("result")).to_contain_text(f"contact #{n + 1}")
        expect(page.get_by_label("Phone")).to_have_value("")
        expect(page.get_by_label("Source")).to_be_focused()
    # Capacity was 2 + 1: the fourth contact waits.
    expect(page.get_by_test_id("result")).to_contain_text("Waiting")
    # A bad phone: the error is inline and the typed text stays.
    page.get_by_label("Phone").fill("12")
    page.get_by_label("Name", exact=True).fill("Someone")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#phone-error")).to_be_visible()
    expect(page.get_by_label("Phone")).to_be_focused()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Someone")
    shot(page, "intake")

    # The load table followed, without a reload.
    expect(load.get_by_test_id("unassigned-open")).to_have_text("1")
    expect(load.get_by_test_id("load-1")).to_have_text("2 / 2")
    expect(load.get_by_test_id("load-2")).to_have_text("1 / 1")
    assert load.evaluate("window.__sameDocument") is True
    shot(load, "load")

    # Close Boris's contact from the contacts list: the waiting contact takes his slot at once ...
    page.goto(f"{server}/contacts/?operator_id=2")
    rows = page.locator("table.contacts")
    rows.get_by_role("button", name="Close").first.click()
    expect(load.get_by_test_id("unassigned-open")).to_have_text("0")
    expect(load.get_by_test_id("load-2")).to_have_text("1 / 1")
    # ... and the list, told by the HX-Trigger event, shows it; closing that one too, the load falls.
    expect(rows.get_by_role("button", name="Close")).to_have_count(1)
    rows.get_by_role("button", name="Close").click()
    expect(rows.get_by_role("button", name="Close")).to_have_count(0)
    expect(load.get_by_test_id("load-2")).to_have_text("0 / 1")
    assert load.evaluate("window.__sameDocument") is True
    shot(page, "contacts")

    page.goto(f"{server}/report/")
    expect(page.get_by_test_id("waiting-1")).to_contain_text("0 waiting")
    shot(page, "report")

    # Switch to Russian from the nav bar; the choice is remembered.
    page.get_by_role("link", name="RU").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Отчёт о распределении")
    page.goto(server + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Нагрузка")
    shot(page, "load-ru")

    assert errors == []
    context.close()


def test_phone_width_pages_do_not_overflow(server: str, browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-US")
    page = context.new_page()
    for path in ("/", "/intake/", "/operators/", "/sources/", "/report/", "/contacts/", "/leads/"):
        page.goto(server + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    shot(page, "leads-phone")
    context.close()


def test_screenshots_were_written(server: str, browser) -> None:
    assert Path(SCREENSHOTS / "load.png").exists()
