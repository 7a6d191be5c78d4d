"""Real Chromium (headless, driven by Playwright) against the app served by gunicorn.

Needs Debian's `chromium` package (Playwright's own browser download does not
work offline). Without it these tests skip, unless LEADCRM_REQUIRE_BROWSER=1
(CI sets it), which turns the skip into a failure.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import PROJECT_ROOT, gunicorn

if TYPE_CHECKING:  # playwright is imported when a test runs, so that the tests skip without it
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LEADCRM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"
ADMIN_PASSWORD = "browser-test-admin"


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
    # The first start creates supervisor "admin" with this password.
    env = {"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with gunicorn(f"sqlite:///{workdir / 'leadcrm.sqlite3'}", workdir, workers=2, env=env) as base:
        yield base


@contextmanager
def chromium() -> Iterator["Browser"]:
    """Debian's Chromium, headless, as every browser test launches it (skips where there is none)."""
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator["Browser"]:
    with chromium() as browser:
        yield browser


def new_context(browser: "Browser", viewport: "ViewportSize") -> tuple["BrowserContext", list[str]]:
    """A browser context that records script errors and Content-Security-Policy violations."""
    context = browser.new_context(locale="en-US", viewport=viewport)
    context.set_default_timeout(10_000)
    problems: list[str] = []
    context.on("weberror", lambda error: problems.append(f"script error: {error.error}"))
    # Chromium reports what a Content-Security-Policy blocked as console errors ("Refused to ...").
    context.on(
        "console",
        lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None,
    )
    return context, problems


def log_in(page: "Page", server: str, username: str, password: str) -> None:
    page.goto(f"{server}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()


def shot(page: "Page", name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_supervisor_and_intake_work_without_reloads(server: str, browser: "Browser") -> None:
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 1200, "height": 850})
    page = context.new_page()
    # Every page asks for a login first; a wrong password is refused.
    page.goto(f"{server}/operators/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong username or password")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    # Back where we wanted to go. Operators, created through the page's form (htmx swaps the section in place).
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

    # An account for the intake desk, made on the Users page.
    page.goto(f"{server}/users/")
    page.get_by_label("Username").fill("irina")
    page.get_by_label("Role", exact=True).select_option("intake")
    page.get_by_label("Password", exact=True).fill("intake-desk-2026")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#user-2")).to_contain_text("irina")
    shot(page, "users")
    desk_context, desk_errors = new_context(browser, viewport={"width": 1200, "height": 850})
    # The permission a person would give when asked; the Notification API recorded as the page uses it.
    desk_context.grant_permissions(["notifications"], origin=server)
    desk_context.add_init_script(NOTIFICATIONS_RECORDED)
    desk = desk_context.new_page()
    log_in(desk, server, "irina", "intake-desk-2026")
    # Intake staff land on the intake form and see no supervisor pages.
    expect(desk.get_by_role("heading", level=1)).to_have_text("Register a contact")
    expect(desk.get_by_role("link", name="Operators")).to_have_count(0)

    # Intake, by keyboard only: the form comes back empty with focus on its first field.
    desk.goto(f"{server}/intake/")
    expect(desk.get_by_label("Source")).to_be_focused()
    phones = ["8 900 111-11-11", "+7 900 222-22-22", "89003333333", "+79004444444"]
    for n, phone in enumerate(phones):
        desk.keyboard.press("Tab")
        expect(desk.get_by_label("Phone")).to_be_focused()
        desk.keyboard.type(phone)
        desk.keyboard.press("Enter")
        expect(desk.get_by_test_id("result")).to_contain_text(f"contact #{n + 1}")
        expect(desk.get_by_label("Phone")).to_have_value("")
        expect(desk.get_by_label("Source")).to_be_focused()
    # Capacity was 2 + 1: the fourth contact waits.
    expect(desk.get_by_test_id("result")).to_contain_text("Waiting")
    # A bad phone: the error is inline and the typed text stays.
    desk.get_by_label("Phone").fill("12")
    desk.get_by_label("Name", exact=True).fill("Someone")
    desk.get_by_role("button", name="Register").click()
    expect(desk.locator("#phone-error")).to_be_visible()
    expect(desk.get_by_label("Phone")).to_be_focused()
    expect(desk.get_by_label("Name", exact=True)).to_have_value("Someone")
    shot(desk, "intake")

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

    assert errors == [] and desk_errors == []
    desk_context.close()
    context.close()


def test_phone_width_pages_do_not_overflow(server: str, browser: "Browser") -> None:
    context, errors = new_context(browser, viewport={"width": 390, "height": 844})
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    pages = ("/", "/intake/", "/operators/", "/sources/", "/report/", "/contacts/", "/leads/", "/users/", "/tokens/")
    for path in pages:
        page.goto(server + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    shot(page, "leads-phone")
    assert errors == []
    context.close()


def test_screenshots_were_written(server: str, browser: "Browser") -> None:
    assert Path(SCREENSHOTS / "load.png").exists()


def test_tokens_are_shown_once_work_and_can_be_revoked(server: str, browser: "Browser") -> None:
    import requests
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 1200, "height": 850})
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server}/tokens/")
    page.get_by_label("Name", exact=True).fill("Website form")
    page.get_by_label("Scope").select_option("register")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("Token", exact=True).input_value()
    assert secret.startswith("lcrm_")
    shot(page, "tokens")
    status = f"{server}/api/v1/distribution_status/"
    auth = {"Authorization": f"Bearer {secret}"}
    assert requests.get(status, headers=auth, timeout=10).status_code == 200
    assert requests.get(f"{server}/api/v1/operators/", headers=auth, timeout=10).status_code == 403
    # /docs: Swagger UI runs under the Content-Security-Policy and can try a call with the token.
    page.goto(f"{server}/docs")
    page.get_by_role("button", name="Authorize").first.click()
    page.locator("#auth-bearer-value").fill(secret)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".auth-btn-wrapper .btn-done").click()
    # Swagger UI names the element after the operationId.
    page.locator("#operations-status-getDistributionStatus").get_by_role("button").first.click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    expect(page.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("200")
    expect(page.locator(".curl-command")).to_contain_text("Authorization: Bearer lcrm_")
    shot(page, "docs")

    # Shown once: the list has only its first characters, and shows that it was used.
    page.goto(f"{server}/tokens/")
    expect(page.get_by_text(secret)).to_have_count(0)
    row = page.locator("table.tokens tr", has_text="Website form")
    expect(row).to_contain_text(secret[:12])
    expect(row.locator("time")).to_have_count(2)  # created and last used
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("table.tokens tr", has_text="Website form")).to_contain_text("revoked")
    assert requests.get(status, headers=auth, timeout=10).status_code == 401
    assert errors == []
    context.close()


NOTIFICATIONS_RECORDED = """
window.__notified = [];
const RealNotification = window.Notification;
function RecordedNotification(title, options) {
  window.__notified.push([title, options && options.body]);
  try { return new RealNotification(title, options); } catch (error) { return {}; }
}
Object.defineProperty(RecordedNotification, "permission", { get: () => RealNotification.permission });
RecordedNotification.requestPermission = (...args) => RealNotification.requestPermission(...args);
window.Notification = RecordedNotification;
"""


def test_an_operator_works_from_its_live_inbox(server: str, browser: "Browser") -> None:
    """A supervisor makes an operator user on the Users page; it works from its live inbox, with a
    browser notification for each new contact; goes away; the next contacts go to someone else."""
    import requests
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 1200, "height": 850})
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server}/tokens/")
    page.get_by_label("Name", exact=True).fill("Inbox test")
    page.get_by_label("Scope").select_option("full")
    page.get_by_role("button", name="Create token").click()
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {page.get_by_label('Token', exact=True).input_value()}"
    v1 = f"{server}/api/v1"
    # Names of their own: the module's server already has an Anna and a Boris.
    anna = api.post(f"{v1}/operators/", json={"name": "Anna Inbox", "max_active_leads": 5}, timeout=10).json()
    boris = api.post(f"{v1}/operators/", json={"name": "Boris Inbox", "max_active_leads": 5}, timeout=10).json()
    source = api.post(f"{v1}/sources/", json={"name": "inbox_bot"}, timeout=10).json()
    config = f"{v1}/sources/{source['id']}/config"
    assert api.post(config, json=[{"operator_id": anna["id"], "weight": 1}], timeout=10).status_code == 200

    def register(phone: str, name: str) -> dict:
        body = {"source_id": source["id"], "phone": phone, "name": name, "message": f"Hello from {name}"}
        response = api.post(f"{v1}/contacts/register", json=body, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["contact"]

    # The supervisor makes Anna's account on the Users page.
    page.goto(f"{server}/users/")
    page.get_by_label("Username").fill("anna.inbox")
    page.get_by_label("Role", exact=True).select_option("operator")
    page.get_by_label("Works as operator", exact=True).select_option(label="Anna Inbox")
    page.get_by_label("Password", exact=True).fill("operator-anna-2026")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("table").filter(has_text="anna.inbox")).to_be_visible()

    desk_context, desk_errors = new_context(browser, viewport={"width": 1200, "height": 850})
    # The permission a person would give when asked; the Notification API recorded as the page uses it.
    desk_context.grant_permissions(["notifications"], origin=server)
    desk_context.add_init_script(NOTIFICATIONS_RECORDED)
    desk = desk_context.new_page()
    log_in(desk, server, "anna.inbox", "operator-anna-2026")
    expect(desk).to_have_url(f"{server}/inbox/")
    expect(desk.get_by_role("heading", name="0 open contacts")).to_be_visible()
    desk.evaluate("window.__sameDocument = true")
    desk.get_by_label("Browser notification for new contacts").check()
    desk.wait_for_function("localStorage.getItem('leadcrm.announce.notification') === 'on'")
    # New contacts appear by themselves, and the title counts them.
    first = register("+79005550001", "Pyotr")
    second = register("+79005550002", "Sergei")
    rows = desk.locator(".inbox-row")
    expect(rows).to_have_count(2, timeout=3000)
    expect(desk).to_have_title("(2) Inbox · leadcrm", timeout=3000)
    expect(rows.first).to_contain_text("Pyotr")  # oldest first
    desk.wait_for_function("window.__notified.length === 2", timeout=3000)
    assert sorted(body for _, body in desk.evaluate("window.__notified")) == ["Pyotr", "Sergei"]
    shot(desk, "inbox")
    # Closing by keyboard: focus moves to the next row's Close, then to the list when it is empty.
    desk.locator(f"#close-{first['id']}").focus()
    desk.keyboard.press("Enter")
    expect(rows).to_have_count(1)
    expect(desk.locator(f"#close-{second['id']}")).to_be_focused()
    expect(desk).to_have_title("(1) Inbox · leadcrm", timeout=3000)
    desk.keyboard.press("Enter")
    expect(rows).to_have_count(0)
    expect(desk.locator("#inbox-heading")).to_be_focused()
    assert desk.evaluate("window.__sameDocument") is True
    # Away, from the nav: the next contacts go to Boris.
    desk.get_by_role("button", name="Available").click()
    expect(desk.get_by_role("button", name="Away")).to_have_attribute("aria-pressed", "false")
    expect(desk.get_by_text("You are away")).to_be_visible(timeout=3000)
    both = [{"operator_id": anna["id"], "weight": 1}, {"operator_id": boris["id"], "weight": 1}]
    assert api.post(config, json=both, timeout=10).status_code == 200
    for n in range(3):
        assert register(f"+7900555001{n}", f"Later {n}")["operator_id"] == boris["id"]
    # The supervisor's load table shows Anna away.
    page.goto(server + "/")
    expect(page.get_by_test_id(f"presence-{anna['id']}")).to_contain_text("away")
    assert errors == [] and desk_errors == []
    desk_context.close()
    context.close()
