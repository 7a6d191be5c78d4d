"""An offer taken from the inbox in real Chromium (Playwright) against gunicorn, as in tests/test_browser.py:
the supervisor sets the source's offer timeout on its page; the operator user sees the offer with a
countdown that runs, takes it, and the row says it is taken. No script error, no console error, no
Content-Security-Policy violation."""

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.servers import gunicorn
from tests.test_browser import ADMIN_PASSWORD, chromium, log_in, new_context, shot

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("offer-browser")
    # Offers as short as 2 seconds, so that one runs out while the test watches.
    env = {"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD, "LEADCRM_OFFER_TIMEOUT_MIN": "2"}
    with gunicorn(f"sqlite:///{workdir / 'leadcrm.sqlite3'}", workdir, workers=2, env=env) as base:
        yield base


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator["Browser"]:
    with chromium() as browser:
        yield browser


def record_console_errors(context: "BrowserContext", errors: list[str], expected: tuple[str, ...] = ()) -> None:
    """Every console error into ``errors``, besides a failed load of a URL starting with one of ``expected``
    (a form's 422 answer) and of /favicon.ico (the app has none; the browser asks anyway)."""

    def record(message: "ConsoleMessage") -> None:
        url = message.location.get("url", "")
        failed_load = message.text.startswith("Failed to load resource")
        if message.type != "error" or failed_load and (url.endswith("/favicon.ico") or url.startswith(expected)):
            return
        errors.append(f"console error: {message.text} ({url})")

    context.on("console", record)


def seconds_shown(countdown: "Locator") -> int:
    """The seconds a countdown shows ("0:28 left")."""
    found = re.fullmatch(r"(\d+):(\d\d) left", countdown.inner_text().strip())
    assert found, countdown.inner_text()
    return int(found.group(1)) * 60 + int(found.group(2))


def test_an_operator_takes_an_offered_contact_from_its_inbox(server: str, browser: "Browser") -> None:
    import requests
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 1200, "height": 850})
    record_console_errors(context, errors, expected=(f"{server}/sources/",))  # the bad value's 422, on purpose
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server}/tokens/")
    page.get_by_label("Name", exact=True).fill("Offer test")
    page.get_by_label("Scope").select_option("full")
    page.get_by_role("button", name="Create token").click()
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {page.get_by_label('Token', exact=True).input_value()}"
    v1 = f"{server}/api/v1"
    olga = api.post(f"{v1}/operators/", json={"name": "Olga", "max_active_leads": 5}, timeout=10).json()
    source = api.post(f"{v1}/sources/", json={"name": "offer_bot"}, timeout=10).json()
    short = api.post(f"{v1}/sources/", json={"name": "short_bot"}, timeout=10).json()
    config = [{"operator_id": olga["id"], "weight": 1}]
    for each in (source, short):
        assert api.post(f"{v1}/sources/{each['id']}/config", json=config, timeout=10).status_code == 200

    # The supervisor makes the sources' contacts offers of 30 and 3 seconds, on their pages; a bad value first.
    page.goto(f"{server}/sources/{source['id']}")
    page.get_by_label("Offer timeout (seconds)").fill("1")
    page.get_by_role("button", name="Save weights").click()
    expect(page.locator("#offer_timeout_seconds-error")).to_contain_text("From 2 to 86,400 seconds")
    expect(page.get_by_label("Offer timeout (seconds)")).to_have_value("1")
    page.get_by_label("Offer timeout (seconds)").fill("30")
    with page.expect_response(f"{server}/sources/{source['id']}") as saved:
        page.get_by_role("button", name="Save weights").click()
    assert saved.value.status == 200
    expect(page.locator("#offer_timeout_seconds-error")).to_have_count(0)
    page.reload()
    expect(page.get_by_label("Offer timeout (seconds)")).to_have_value("30")
    page.goto(f"{server}/sources/{short['id']}")
    page.get_by_label("Offer timeout (seconds)").fill("3")
    with page.expect_response(f"{server}/sources/{short['id']}") as saved:
        page.get_by_role("button", name="Save weights").click()
    assert saved.value.status == 200
    page.goto(f"{server}/sources/")
    expect(page.get_by_role("row").filter(has_text="short_bot")).to_contain_text("take within 3 s")

    page.goto(f"{server}/users/")
    page.get_by_label("Username").fill("olga")
    page.get_by_label("Role", exact=True).select_option("operator")
    page.get_by_label("Works as operator", exact=True).select_option(label="Olga")
    page.get_by_label("Password", exact=True).fill("operator-olga-2026")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("table").filter(has_text="olga")).to_be_visible()

    desk_context, desk_errors = new_context(browser, viewport={"width": 1200, "height": 850})
    record_console_errors(desk_context, desk_errors)
    desk = desk_context.new_page()
    log_in(desk, server, "olga", "operator-olga-2026")
    expect(desk).to_have_url(f"{server}/inbox/")

    def register(source_id: int, phone: str, name: str) -> dict:
        body: dict[str, int | str] = {"source_id": source_id, "phone": phone, "name": name, "message": "Call me"}
        response = api.post(f"{v1}/contacts/register", json=body, timeout=10)
        assert response.status_code == 201, response.text
        contact = response.json()["contact"]
        assert contact["operator_id"] == olga["id"]
        return contact

    contact = register(source["id"], "+79007770001", "Pyotr")
    # The offer appears by itself, marked, with the deadline said once and a countdown that runs.
    row = desk.locator(f"#inbox-contact-{contact['id']}")
    expect(row).to_have_class(re.compile(r"\boffered\b"), timeout=5000)
    expect(row).to_contain_text("Offered, take it before")
    countdown = row.locator("time.countdown")
    expect(countdown).to_be_visible()
    expect(countdown).to_have_attribute("aria-live", "off")
    # Every second, not only when a poll brings the list again (every 2 s): no second skipped.
    shown: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < 3.5:
        seconds = seconds_shown(countdown)
        if not shown or shown[-1] != seconds:
            shown.append(seconds)
        time.sleep(0.1)
    assert 20 <= shown[0] <= 30 and len(shown) >= 3, shown
    assert shown == list(range(shown[0], shown[0] - len(shown), -1)), shown
    shot(desk, "inbox-offer")

    # A short offer comes first (the nearest deadline); it runs out before it is taken, and Take then
    # says why in the alert region above the list, focus staying on the button.
    late = register(short["id"], "+79007770002", "Sergei")
    late_row = desk.locator(f"#inbox-contact-{late['id']}")
    expect(desk.locator(".inbox-row").first).to_have_id(f"inbox-contact-{late['id']}", timeout=5000)
    expect(late_row.locator("time.countdown")).to_have_text("The time ran out.", timeout=5000)
    expect(late_row.locator("time.countdown")).to_have_class(re.compile(r"\bran-out\b"))
    late_row.get_by_role("button", name="Take").click()
    expect(desk.get_by_role("alert")).to_have_text(
        "The time to take this contact ran out; it is being offered to someone else."
    )
    expect(late_row.get_by_role("button", name="Take")).to_be_focused()

    # Take, by keyboard: the row is taken (no button, no countdown), the live region above the list
    # says so, and focus stays with the contact, on its Close.
    desk.evaluate("window.__sameDocument = true")
    row.get_by_role("button", name="Take").focus()
    desk.keyboard.press("Enter")
    notice = desk.get_by_role("status").filter(has_text="Taken")
    expect(notice).to_have_text("Taken: Pyotr is yours now.")
    expect(desk.locator(f"#close-{contact['id']}")).to_be_focused()
    expect(row).to_contain_text("taken at")
    expect(row.get_by_role("button", name="Take")).to_have_count(0)
    expect(row.locator("time.countdown")).to_have_count(0)
    expect(row).not_to_have_class(re.compile(r"\boffered\b"))
    # The polls that follow (the age changes every second) show the same, and leave the message.
    time.sleep(2.5)
    expect(row.get_by_role("button", name="Take")).to_have_count(0)
    expect(notice).to_be_visible()
    assert desk.evaluate("window.__sameDocument") is True
    shot(desk, "inbox-offer-taken")

    # The supervisor sees when it was taken.
    page.goto(f"{server}/contacts/{contact['id']}")
    expect(page.locator("dl.facts")).to_contain_text("Taken")
    assert errors == [] and desk_errors == []
    desk_context.close()
    context.close()
