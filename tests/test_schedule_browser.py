"""Real Chromium (as tests/test_browser.py drives it) on the schedule pages: a supervisor edits an
operator's week and absences by keyboard alone, and the schedule saved is the one in the database.

A server of its own (its database is read directly at the end). Chromium's time and date inputs
follow the browser's own locale (a 12- or 24-hour clock, month or day first): the typing helpers
below find out which, as a person looking at the field would.
"""

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from tests.servers import gunicorn
from tests.test_browser import ADMIN_PASSWORD, chromium, log_in, new_context, shot

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("schedule-browser") / "leadcrm.sqlite3"


@pytest.fixture(scope="module")
def server(database_file: Path) -> Iterator[str]:
    env = {"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with gunicorn(f"sqlite:///{database_file}", database_file.parent, workers=2, env=env) as base:
        yield base


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator["Browser"]:
    with chromium() as browser:
        yield browser


# What sticks out past a phone's screen, for the message of a failed check.
WIDEST = """Array.from(document.querySelectorAll("body *"))
  .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth)
  .slice(0, 8).map((e) => e.tagName + (e.id ? "#" + e.id : "") + (e.className ? "." + e.className : ""))"""


def focused_id(page: "Page") -> str:
    return str(page.evaluate("document.activeElement && document.activeElement.id"))


def tab_to(page: "Page", element_id: str, most: int = 40) -> None:
    """Press Tab until the element has the focus, as a person tabs through the page."""
    for _ in range(most):
        if focused_id(page) == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached #{element_id}; the focus is on #{focused_id(page)}")


def type_time(page: "Page", hours: int, minutes: int) -> None:
    """Type a time into the focused <input type="time">, its hour part first, on either clock."""
    field = page.locator(f"#{focused_id(page)}")
    wanted = f"{hours:02d}:{minutes:02d}"
    twelve = (hours + 11) % 12 + 1
    # A 12-hour clock: hour, minutes, then A or P (a 24-hour clock ignores the letter).
    page.keyboard.type(f"{twelve:02d}{minutes:02d}{'P' if hours >= 12 else 'A'}")
    if field.input_value() != wanted:  # a 24-hour clock: back to its hour part, and the hour as it is
        page.keyboard.press("Shift+Tab")
        page.keyboard.type(f"{hours:02d}")
    assert field.input_value() == wanted


def type_date(page: "Page", day: date) -> None:
    """Type a day into the focused <input type="date">: month first or day first, as its parts are laid out."""
    field = page.locator(f"#{focused_id(page)}")
    page.keyboard.type(f"{day.month:02d}{day.day:02d}{day.year}")
    if field.input_value() != day.isoformat():  # day first: back to the first part, and again
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Shift+Tab")
        page.keyboard.type(f"{day.day:02d}{day.month:02d}{day.year}")
    assert field.input_value() == day.isoformat()


def press(page: "Page", element_id: str, key: str) -> None:
    """Press a button with Space or Enter; the page comes back (a plain form submit)."""
    assert focused_id(page) == element_id
    with page.expect_navigation():
        page.keyboard.press(key)


def test_a_supervisor_edits_a_schedule_by_keyboard_alone(server: str, browser: "Browser", database_file: Path) -> None:
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server}/operators/")
    page.get_by_label("Name", exact=True).fill("Vera")
    page.get_by_label("Limit of active leads", exact=True).fill("3")
    page.get_by_role("button", name="Add operator").click()
    page.get_by_role("link", name="Vera").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Vera")
    operator_id = int(page.url.rsplit("/", 1)[1])

    # From the top of the page, Tab reaches the time zone first, then Add interval.
    tab_to(page, "timezone")
    page.keyboard.type("Europe/Moscow")
    page.keyboard.press("Tab")
    press(page, "add-hours", " ")
    # The new row comes back with the focus on its day: Friday, 22:00 to 06:00 (into Saturday).
    expect(page.locator("#hours-0-weekday")).to_be_focused()
    expect(page.get_by_label("Time zone of these hours")).to_have_value("Europe/Moscow")
    page.keyboard.type("Fri")
    expect(page.get_by_label("Day of interval 1")).to_have_value("5")
    # (A time or date field is several stops for Tab, one per part: tab_to presses it until the next field.)
    tab_to(page, "hours-0-start")
    type_time(page, 22, 0)
    tab_to(page, "hours-0-end")
    type_time(page, 6, 0)
    tab_to(page, "remove-hours-0")
    page.keyboard.press("Tab")
    press(page, "add-hours", "Enter")
    # A second row: Monday 09:00 to 18:00.
    expect(page.locator("#hours-1-weekday")).to_be_focused()
    expect(page.get_by_label("End of interval 1")).to_have_value("06:00")
    page.keyboard.type("Mon")
    tab_to(page, "hours-1-start")
    type_time(page, 9, 0)
    tab_to(page, "hours-1-end")
    type_time(page, 18, 0)
    # A third, added by mistake and removed: the focus goes to the Remove now in its place (none: the one before).
    tab_to(page, "add-hours")
    press(page, "add-hours", " ")
    expect(page.locator("#hours-2-weekday")).to_be_focused()
    tab_to(page, "remove-hours-2")
    press(page, "remove-hours-2", " ")
    expect(page.locator("#remove-hours-1")).to_be_focused()
    expect(page.locator("#hours-2-weekday")).to_have_count(0)
    expect(page.get_by_label("Start of interval 2")).to_have_value("09:00")

    # An absence, whose last day comes before its first at first: refused next to the field, all kept.
    tab_to(page, "add-absence")
    press(page, "add-absence", "Enter")
    expect(page.locator("#absences-0-from")).to_be_focused()
    type_date(page, date(2026, 12, 24))
    tab_to(page, "absences-0-to")
    type_date(page, date(2026, 12, 20))
    tab_to(page, "absences-0-note")
    page.keyboard.type("holiday")
    # Enter in a field saves (the form's first button is a Save, never a Remove).
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#absences-0-to-error")).to_have_text(
        "The last day of an absence cannot come before its first."
    )
    expect(page.locator("#absences-0-to")).to_have_attribute("aria-describedby", "absences-0-to-error")
    expect(page.locator("#absences-0-to")).to_be_focused()  # the field in error
    expect(page.get_by_label("Note of absence 1")).to_have_value("holiday")
    expect(page.get_by_label("Start of interval 1")).to_have_value("22:00")
    shot(page, "schedule-error")
    type_date(page, date(2027, 1, 2))
    tab_to(page, "save-schedule")
    press(page, "save-schedule", "Enter")
    expect(page.get_by_test_id("saved")).to_have_text("Schedule saved.")
    expect(page.get_by_label("Day of interval 1")).to_have_value("1")  # saved by day: Monday first
    expect(page.get_by_label("Day of interval 2")).to_have_value("5")
    expect(page.get_by_test_id("operator-history")).to_contain_text("working hours")
    shot(page, "schedule")

    # Focus is visible on the buttons reached by keyboard (the stylesheet's :focus-visible outline).
    page.locator("#save-schedule").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused_id(page) == "save-schedule" and outline != "none"

    engine = sa.create_engine(f"sqlite:///{database_file}")
    try:
        with engine.connect() as conn:
            hours = conn.execute(
                sa.text("SELECT weekday, starts, ends FROM operator_hours WHERE operator_id = :id ORDER BY weekday"),
                {"id": operator_id},
            ).all()
            absences = conn.execute(
                sa.text("SELECT starts_on, ends_on, note FROM operator_absences WHERE operator_id = :id"),
                {"id": operator_id},
            ).all()
            timezone = conn.execute(sa.text("SELECT timezone FROM operators WHERE id = :id"), {"id": operator_id})
            assert timezone.scalar() == "Europe/Moscow"
    finally:
        engine.dispose()
    assert [tuple(row) for row in hours] == [(1, 9 * 60, 18 * 60), (5, 22 * 60, 6 * 60)]
    assert [(str(a), str(b), note) for a, b, note in absences] == [("2026-12-24", "2027-01-02", "holiday")]
    assert errors == []
    context.close()


def test_schedule_pages_fit_a_phone_and_switch_language(server: str, browser: "Browser") -> None:
    from playwright.sync_api import expect

    context, errors = new_context(browser, viewport={"width": 390, "height": 844})
    page = context.new_page()
    log_in(page, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server}/operators/")
    page.get_by_label("Name", exact=True).fill("Yana")
    page.get_by_label("Limit of active leads", exact=True).fill("2")
    page.get_by_role("button", name="Add operator").click()
    page.get_by_role("link", name="Yana").click()
    operator_page = page.url
    page.get_by_role("button", name="Add interval").click()
    expect(page.locator("#hours-0-weekday")).to_be_focused()
    for url in (None, f"{server}/settings/", f"{server}/"):
        if url:
            page.goto(url)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{page.url} is {overflow}px wider than a phone screen: {page.evaluate(WIDEST)}"
    page.goto(operator_page)
    page.get_by_role("button", name="Add interval").click()
    # The language switch on a page the editor's buttons gave back: the operator's page, in Russian.
    page.get_by_role("link", name="RU").click()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    expect(page).to_have_url(operator_page)
    page.locator("#add-hours").click()
    expect(page.locator("#hours-0-weekday option:checked")).to_have_text("Понедельник")
    page.goto(f"{server}/language/en?next=/")
    assert errors == []
    context.close()
