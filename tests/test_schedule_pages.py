"""The supervisor's pages of schedules: the settings page's time zone and the times pages show in it, the
operator page's week editor (add, remove, save, refusals next to the field), and the load table's shift,
absence and missed-offer texts and its warning when no worker runs."""

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from babel.dates import format_date
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import create_app, queries, schedules
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.models import Operator, OperatorAbsence, OperatorEvent, Setting, WorkerBeat, utcnow
from leadcrm.schedules import Absence, Hours
from leadcrm.vocabulary import AwayReason, OperatorChange, Presence
from tests.helpers import add_operator, csrf_token_of

HTMX = {"HX-Request": "true"}
RU = {"Accept-Language": "ru"}


def text(response) -> str:
    return response.get_data(as_text=True)


def post_form(client: FlaskClient, path: str, data: dict, **kw):
    token = csrf_token_of(text(client.get("/settings/")))
    return client.post(path, data={"csrf_token": token, **data}, **kw)


@pytest.fixture
def anna(app: Flask, client: FlaskClient) -> int:
    with app.app_context():
        operator = add_operator("Anna", 3)
        db.session.commit()
        return operator.id


def set_schedule(operator_id: int, hours: list[Hours], absences: list[Absence], timezone: str | None = None) -> None:
    begin_write(db.session)
    organisation = schedules.organisation_timezone(db.session())
    schedules.replace_schedule(
        db.session(), operator_id, timezone=timezone, hours=hours, absences=absences, organisation=organisation
    )
    db.session.commit()


def set_organisation_timezone(name: str) -> None:
    begin_write(db.session)
    schedules.set_organisation_timezone(db.session(), name)
    db.session.commit()


# --- the settings page and the times of every page ------------------------------------------------


def test_settings_page_saves_the_zone_and_pages_show_times_in_it(app: Flask, client: FlaskClient) -> None:
    page = text(client.get("/settings/"))
    assert 'href="/settings/" aria-current="page"' in page  # in the nav, for supervisors
    assert '<option value="Europe/Moscow">' in page and 'value="UTC"' in page
    assert "Times in UTC" in page
    saved = post_form(client, "/settings/", {"timezone": " Europe/Moscow "})
    assert saved.status_code == 302 and saved.location == "/settings/?saved=1"
    page = text(client.get(saved.location))
    assert re.search(r'role="status"[^>]*>Saved: times are shown in Europe/Moscow', page)
    assert 'value="Europe/Moscow"' in page and "Times in Europe/Moscow" in page
    with app.app_context():
        assert db.session.get_one(Setting, "timezone").value == "Europe/Moscow"
    # A time on a page: the UTC instant in datetime, the wall clock of Moscow (UTC+3 all year) shown.
    users = text(client.get("/users/"))
    stamp = re.search(r'<time datetime="([^"]+)">([^<]+)</time>', users)
    assert stamp, users
    instant = datetime.fromisoformat(stamp.group(1))
    assert instant.utcoffset() == timedelta(0)
    assert stamp.group(2) == (instant + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M")
    assert "Times in Europe/Moscow" in users


def test_settings_page_refuses_an_unknown_zone_next_to_the_field_and_keeps_it(app: Flask, client: FlaskClient) -> None:
    refused = post_form(client, "/settings/", {"timezone": "Mars/Olympus"})
    assert refused.status_code == 422
    html = text(refused)
    assert re.search(r'<p class="error" id="timezone-error">Unknown time zone “Mars/Olympus”', html)
    assert 'value="Mars/Olympus"' in html and 'aria-describedby="timezone-error"' in html
    empty = post_form(client, "/settings/", {"timezone": ""})
    assert empty.status_code == 422 and 'id="timezone-error"' in text(empty)
    too_long = post_form(client, "/settings/", {"timezone": "x" * 5000})
    assert too_long.status_code == 422 and 'id="timezone-error"' in text(too_long)
    with app.app_context():
        assert db.session.get(Setting, "timezone") is None
    assert "Times in UTC" in text(client.get("/"))


def test_the_preset_zone_is_shown_until_one_is_chosen(app: Flask, client: FlaskClient) -> None:
    app.config["LEADCRM_TIMEZONE"] = "Asia/Tokyo"
    assert "Times in Asia/Tokyo" in text(client.get("/"))
    # A typo in the environment stops the app at start, so no page ever shows a zone that does not exist.
    with pytest.raises(RuntimeError, match="LEADCRM_TIMEZONE"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                    "LEADCRM_TIMEZONE": "Not/AZone"})  # fmt: skip


# --- the operator page ----------------------------------------------------------------------------


def test_operator_page_is_linked_and_renders_in_both_languages(app: Flask, client: FlaskClient, anna: int) -> None:
    assert f'href="/operators/{anna}"' in text(client.get("/operators/"))
    assert f'href="/operators/{anna}"' in text(client.get("/"))
    page = client.get(f"/operators/{anna}")
    assert page.status_code == 200
    html = text(page)
    assert "<h1>Anna</h1>" in html and 'data-testid="shift">On shift<' in html
    assert "always on shift" in html and "Add interval" in html and "Add absence" in html
    russian = text(client.get(f"/operators/{anna}", headers=RU))
    assert '<html lang="ru">' in russian
    with app.app_context():
        set_schedule(anna, [Hours(1, 9 * 60, 18 * 60)], [])
    russian = text(client.get(f"/operators/{anna}", headers=RU))
    assert '<option value="1" selected>Понедельник</option>' in russian and "Воскресенье" in russian
    english = text(client.get(f"/operators/{anna}"))
    assert '<option value="1" selected>Monday</option>' in english and "Sunday" in english
    assert client.get("/operators/999").status_code == 404
    assert post_form(client, "/operators/999/schedule", {"action": "save"}).status_code == 404


def test_operator_page_saves_a_week_with_a_night_interval_and_an_absence(
    app: Flask, client: FlaskClient, anna: int
) -> None:
    form = {
        "timezone": "Europe/Moscow",
        "hours-0-weekday": "1",
        "hours-0-start": "09:00",
        "hours-0-end": "18:00",
        "hours-1-weekday": "5",
        "hours-1-start": "22:00",
        "hours-1-end": "06:00",  # into Saturday
        "hours-2-weekday": "7",
        "hours-2-start": "12:00",
        "hours-2-end": "00:00",  # to midnight
        "absences-0-from": "2026-12-24",
        "absences-0-to": "2027-01-02",
        "absences-0-note": "holiday",
        "absences-1-from": "",  # a row added and left blank: nothing
        "absences-1-to": "",
        "absences-1-note": "",
        "action": "save",
    }
    saved = post_form(client, f"/operators/{anna}/schedule", form)
    assert saved.status_code == 302, text(saved)
    assert saved.location == f"/operators/{anna}?saved=1"
    with app.app_context():
        schedule = schedules.get_schedule(db.session(), anna)
        assert schedule.timezone == "Europe/Moscow"
        assert schedule.hours == [Hours(1, 540, 1080), Hours(5, 1320, 360), Hours(7, 720, 1440)]
        assert schedule.absences == [Absence(date(2026, 12, 24), date(2027, 1, 2), "holiday")]
        event = db.session.scalar(sa.select(OperatorEvent).where(OperatorEvent.operator_id == anna))
        assert event is not None and event.field == OperatorChange.SCHEDULE and event.actor == "user:boss"
        operator = db.session.get_one(Operator, anna)
        assert operator.shift_from is not None or operator.shift_until is not None  # a stretch was stored
    page = text(client.get(saved.location))
    assert 'role="status" data-testid="saved">Schedule saved.' in page
    assert 'id="timezone" name="timezone"' in page and 'value="Europe/Moscow"' in page
    assert 'name="hours-1-start" value="22:00"' in page and 'name="hours-1-end" value="06:00"' in page
    assert 'name="hours-2-end" value="00:00"' in page
    assert 'name="absences-0-to" value="2027-01-02"' in page and 'value="holiday"' in page
    assert 'name="absences-1-from"' not in page
    assert re.search(r'data-testid="shift">(On|Off) shift until ', page)
    assert re.search(r'data-testid="operator-history">.*working hours.*changed.*boss', page, re.S)
    # An empty time zone is the organisation's again; removing every row is "always on shift".
    cleared = post_form(client, f"/operators/{anna}/schedule", {"timezone": "", "action": "save"})
    assert cleared.status_code == 302
    with app.app_context():
        schedule = schedules.get_schedule(db.session(), anna)
        assert (schedule.timezone, schedule.hours, schedule.absences) == (None, [], [])
    page = text(client.get(f"/operators/{anna}"))
    assert 'data-testid="shift">On shift<' in page and 'placeholder="UTC"' in page


def test_add_and_remove_keep_what_was_typed_and_save_nothing(app: Flask, client: FlaskClient, anna: int) -> None:
    typed = {"timezone": "Asia/Tokyo", "hours-0-weekday": "2", "hours-0-start": "08:30", "hours-0-end": "17:00"}
    added = post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "add-hours"})
    assert added.status_code == 200
    html = text(added)
    # The new row is the day after, at the same times, and gets the focus.
    assert 'value="Asia/Tokyo"' in html and 'name="hours-0-start" value="08:30"' in html
    assert 'id="hours-1-weekday" name="hours-1-weekday" autofocus>' in html
    assert '<option value="2" selected>Tuesday</option>' in html  # the first row's, as typed
    assert '<option value="3" selected>Wednesday</option>' in html
    assert 'name="hours-1-start" value="08:30"' in html and 'name="hours-1-end" value="17:00"' in html
    removed = post_form(
        client,
        f"/operators/{anna}/schedule",
        {
            **typed,
            "hours-1-weekday": "3",
            "hours-1-start": "10:00",
            "hours-1-end": "11:00",
            "action": "remove-hours-0",
        },
    )
    html = text(removed)
    assert removed.status_code == 200
    # Renumbered: the second row is now the first, and its Remove has the focus.
    assert 'name="hours-0-start" value="10:00"' in html and 'name="hours-1-start"' not in html
    assert 'id="remove-hours-0" name="action" value="remove-hours-0" autofocus' in html
    last = post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "remove-hours-0"})
    assert 'id="add-hours" name="action" value="add-hours" autofocus' in text(last)
    absence = post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "add-absence"})
    assert 'id="absences-0-from" name="absences-0-from" value="" autofocus' in text(absence)
    with app.app_context():
        schedule = schedules.get_schedule(db.session(), anna)
        assert (schedule.timezone, schedule.hours, schedule.absences) == (None, [], [])
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OperatorEvent)) == 0


REFUSALS = [
    # (what is typed, the field in error, its message, what stays typed)
    (
        {"hours-0-weekday": "1", "hours-0-start": "09:00", "hours-0-end": "12:00",
         "hours-1-weekday": "1", "hours-1-start": "11:00", "hours-1-end": "13:00"},
        "hours-1", "This interval overlaps another one of the same days.", 'name="hours-1-start" value="11:00"',
    ),
    (
        {"hours-0-weekday": "7", "hours-0-start": "22:00", "hours-0-end": "06:00",
         "hours-1-weekday": "1", "hours-1-start": "05:00", "hours-1-end": "07:00"},
        "hours-1", "This interval overlaps another one", 'name="hours-0-end" value="06:00"',
    ),
    (
        {"hours-0-weekday": "1", "hours-0-start": "25:00", "hours-0-end": "18:00"},
        "hours-0-start", "A time from 00:00 to 23:59", 'name="hours-0-start" value="25:00"',
    ),
    (
        {"hours-0-weekday": "1", "hours-0-start": "09:00", "hours-0-end": "09:00"},
        "hours-0-end", "The interval is empty", 'name="hours-0-end" value="09:00"',
    ),
    (
        {"hours-0-weekday": "8", "hours-0-start": "09:00", "hours-0-end": "10:00"},
        "hours-0-weekday", "Choose a day of the week.", 'name="hours-0-end" value="10:00"',
    ),
    (
        {"absences-0-from": "2027-01-10", "absences-0-to": "2027-01-02", "absences-0-note": "trip"},
        "absences-0-to", "The last day of an absence cannot come before its first.", 'value="trip"',
    ),
    (
        {"absences-0-from": "9999-12-01", "absences-0-to": "9999-12-31"},
        "absences-0-from", "A day from 2000-01-01 to 2999-12-31", 'name="absences-0-to" value="9999-12-31"',
    ),
    (
        {"absences-0-from": "2027-02-30", "absences-0-to": ""},
        "absences-0-to", "Enter the day", 'name="absences-0-from" value="2027-02-30"',
    ),
    (
        {"timezone": "Mars/Olympus", "hours-0-weekday": "1", "hours-0-start": "09:00", "hours-0-end": "18:00"},
        "timezone", "Unknown time zone “Mars/Olympus”", 'value="Mars/Olympus"',
    ),
]  # fmt: skip


@pytest.mark.parametrize(("typed", "field", "message", "kept"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusals_are_shown_next_to_the_field_and_keep_what_was_typed(
    app: Flask, client: FlaskClient, anna: int, typed: dict, field: str, message: str, kept: str
) -> None:
    refused = post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "save"})
    assert refused.status_code == 422
    html = text(refused)
    assert re.search(rf'<p class="error" id="{field}-error">{re.escape(message)}', html), html
    assert kept in html
    assert f'{field}-error"' in html.split(f'id="{field}-error"')[0]  # a field points at its error
    assert " autofocus" in html
    with app.app_context():
        schedule = schedules.get_schedule(db.session(), anna)
        assert (schedule.timezone, schedule.hours, schedule.absences) == (None, [], [])


def test_a_refusal_names_the_row_as_shown_when_blank_rows_come_before_it(
    app: Flask, client: FlaskClient, anna: int
) -> None:
    """Blank rows are left out of what is saved; the domain's numbers are mapped back to the rows shown."""
    typed = {
        "absences-0-from": "", "absences-0-to": "", "absences-0-note": "",
        "absences-1-from": "2027-01-10", "absences-1-to": "2027-01-02",
    }  # fmt: skip
    refused = post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "save"})
    assert refused.status_code == 422 and 'id="absences-1-to-error"' in text(refused)
    assert 'aria-describedby="absences-1-to-error" autofocus' in text(refused)


# --- the load table ---------------------------------------------------------------------------------


def off_shift_until(day: date) -> list[Hours]:
    """One hour of work a week, on ``day``'s weekday at 09:00 (in the schedule's zone)."""
    return [Hours(day.isoweekday(), 9 * 60, 10 * 60)]


def test_load_table_says_off_shift_until_when_on_the_organisations_clock(
    app: Flask, client: FlaskClient, anna: int
) -> None:
    with app.app_context():
        set_organisation_timezone("Europe/Moscow")
        # 09:00 in Tokyo (UTC+9) is 03:00 in Moscow (UTC+3), the same day; three days from now in Tokyo.
        tokyo = ZoneInfo("Asia/Tokyo")
        day = utcnow().astimezone(tokyo).date() + timedelta(days=3)
        set_schedule(anna, off_shift_until(day), [], timezone="Asia/Tokyo")
        expected = datetime(day.year, day.month, day.day, 9, tzinfo=tokyo).astimezone(ZoneInfo("Europe/Moscow"))
    weekday = expected.strftime("%a")  # the C locale's English short names: Mon, Tue
    for html in (text(client.get("/")), text(client.get("/", headers=HTMX))):
        assert f'data-testid="presence-{anna}">off shift until {weekday} {expected:%H:%M}<' in html, html
    # The operator's page says it on both clocks: the hours were typed on Tokyo's.
    own = f"{day:%a} 09:00 in Asia/Tokyo"
    assert f"Off shift until {weekday} {expected:%H:%M} ({own})<" in text(client.get(f"/operators/{anna}"))
    russian = text(client.get("/", headers={**HTMX, **RU}))
    short = format_date(expected.date(), "EEE", locale="ru")
    assert f"{short} {expected:%H:%M}<" in russian
    assert 'data-testid="totals-load">0 / 0<' in russian  # not at work: out of the totals


def test_load_table_says_absent_until_the_last_day_of_touching_absences(
    app: Flask, client: FlaskClient, anna: int
) -> None:
    with app.app_context():
        boris = add_operator("Boris").id
        db.session.commit()
        today = utcnow().date()  # the organisation's zone is UTC
        last = today + timedelta(days=9)
        set_schedule(
            anna,
            [],
            [Absence(today - timedelta(days=1), today + timedelta(days=4)), Absence(today + timedelta(days=5), last)],
        )
        set_schedule(boris, [], [Absence(today + timedelta(days=2), today + timedelta(days=3))])  # later
        assert queries.absent_until(db.session(), utcnow(), "UTC") == {anna: last}
    said = format_date(last, "d MMM" if last.year == today.year else "d MMM y", locale="en")
    html = text(client.get("/", headers=HTMX))
    assert f'data-testid="presence-{anna}">absent until {said}<' in html
    assert f'data-testid="presence-{boris}">available<' in html
    russian = text(client.get("/", headers={**HTMX, **RU}))
    assert format_date(last, "d MMM" if last.year == today.year else "d MMM y", locale="ru") in russian


def test_absences_are_read_in_each_operators_zone(app: Flask, anna: int) -> None:
    with app.app_context():
        # 23:30 UTC on a Wednesday is already Thursday in Tokyo.
        now = datetime(2026, 12, 2, 23, 30, tzinfo=ZoneInfo("UTC"))
        thursday = date(2026, 12, 3)
        db.session.add(OperatorAbsence(operator_id=anna, starts_on=thursday, ends_on=thursday))
        db.session.commit()
        assert queries.absent_until(db.session(), now, "UTC") == {}
        assert queries.absent_until(db.session(), now, "Asia/Tokyo") == {anna: thursday}


def test_load_table_says_away_for_missed_offers(app: Flask, client: FlaskClient, anna: int) -> None:
    with app.app_context():
        db.session.execute(
            sa.update(Operator)
            .where(Operator.id == anna)
            .values(presence=Presence.AWAY, away_reason=AwayReason.MISSED_OFFERS)
        )
        db.session.commit()
    assert f'data-testid="presence-{anna}">away — missed offers<' in text(client.get("/", headers=HTMX))
    assert "away — missed offers" in text(client.get("/"))
    # Away for no reason of leadcrm's: just away.
    with app.app_context():
        db.session.execute(
            sa.update(Operator).where(Operator.id == anna).values(presence=Presence.AWAY, away_reason=None)
        )
        db.session.commit()
    assert f'data-testid="presence-{anna}">away<' in text(client.get("/", headers=HTMX))


WARNING = "Schedules and offer deadlines are not being applied: no worker is running (flask leadcrm worker)."


def beat(at: datetime) -> None:
    db.session.merge(WorkerBeat(name="host:1", started_at=at - timedelta(hours=1), beat_at=at))
    db.session.commit()


def test_load_page_warns_when_no_worker_beats(app: Flask, client: FlaskClient, anna: int) -> None:
    page = text(client.get("/"))
    assert re.search(rf'role="alert" data-testid="worker-silent">{re.escape(WARNING)}<', page)
    # The table's own poll leaves the warning alone; the warning's poll says nothing while nothing changed.
    assert WARNING not in text(client.get("/", headers=HTMX))
    unchanged = client.get("/?part=worker&shown=1", headers=HTMX)
    assert unchanged.status_code == 204 and "HX-Request" in unchanged.headers["Vary"]
    with app.app_context():
        beat(utcnow())
    assert WARNING not in text(client.get("/"))
    gone = client.get("/?part=worker&shown=1", headers=HTMX)
    assert gone.status_code == 200 and 'id="worker-warning"' in text(gone) and WARNING not in text(gone)
    assert 'shown=0"' in text(gone).replace("&amp;", "&")
    assert client.get("/?part=worker&shown=0", headers=HTMX).status_code == 204
    with app.app_context():
        beat(utcnow() - timedelta(minutes=3))  # it stopped beating three minutes ago
    assert WARNING in text(client.get("/"))
    back = client.get("/?part=worker&shown=0", headers=HTMX)
    assert back.status_code == 200 and 'role="alert"' in text(back)
    # Without htmx, the address is the page itself.
    assert "<html" in text(client.get("/?part=worker&shown=0"))


def test_pages_of_schedules_render_in_both_languages(app: Flask, client: FlaskClient, anna: int) -> None:
    with app.app_context():
        set_schedule(anna, [Hours(3, 9 * 60, 18 * 60)], [Absence(date(2027, 1, 1), date(2027, 1, 2), "праздник")])
    for path in ("/settings/", f"/operators/{anna}", "/", "/operators/"):
        for headers in ({}, RU):
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, headers)
            assert f'<html lang="{"ru" if headers else "en"}">' in text(response)
    assert "Среда" in text(client.get(f"/operators/{anna}", headers=RU))


def test_errors_of_the_hours_and_of_the_absences_show_at_once(app: Flask, client: FlaskClient, anna: int) -> None:
    typed = {
        "hours-0-weekday": "1", "hours-0-start": "09:00", "hours-0-end": "12:00",
        "hours-1-weekday": "1", "hours-1-start": "11:00", "hours-1-end": "13:00",
        "absences-0-from": "2027-01-10", "absences-0-to": "2027-01-02",
    }  # fmt: skip
    html = text(post_form(client, f"/operators/{anna}/schedule", {**typed, "action": "save"}))
    assert 'id="hours-1-error"' in html and 'id="absences-0-to-error"' in html
    assert 'aria-describedby="hours-1-error" autofocus' in html  # the first on the page
