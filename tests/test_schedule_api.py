"""The JSON API of schedules and settings: an operator's working hours, absences and time zone
(GET / PUT /operators/<id>/schedule), the organisation's zone (GET / PUT /settings), bad input named
field by field, who may call them, and on_shift / next_shift_change_at in every operator shown."""

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts, schedules
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, OperatorEvent, utcnow
from leadcrm.schedules import Absence, Hours
from leadcrm.vocabulary import SCHEDULE_HOURS_MAX
from tests.helpers import PASSWORD, assert_load_matches_open_contacts, csrf_token_of, json_of, login_client

API = "/api/v1"


def assert_error(response: Any, status: int, fields: set[str] | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)[:200]
    error = response.json["error"]
    assert isinstance(error["message"], str) and error["message"]
    if fields is not None:
        assert set(error.get("fields") or {}) == fields, error
    return error


def created(client: FlaskClient, path: str, body: Any) -> dict:
    response = client.post(f"{API}{path}", json=body)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return json_of(response)


def put_schedule(client: FlaskClient, operator_id: int, body: Any) -> Any:
    return client.put(f"{API}/operators/{operator_id}/schedule", json=body)


def schedule(timezone: str | None = None, hours: list | None = None, absences: list | None = None) -> dict:
    return {"timezone": timezone, "hours": hours or [], "absences": absences or []}


def hhmm(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def hours_around_now(before: timedelta, after: timedelta) -> tuple[dict, datetime]:
    """One interval (in UTC) from ``before`` ahead of now to ``after`` past it, whole minutes; and its end."""
    now = utcnow()
    start = (now - before).replace(second=0, microsecond=0)
    end = (now + after).replace(second=0, microsecond=0)
    return {"weekday": start.isoweekday(), "start": hhmm(start), "end": hhmm(end)}, end


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def anna(client: FlaskClient) -> dict:
    return created(client, "/operators/", {"name": "Anna", "max_active_leads": 5})


# --- reading and replacing a schedule -------------------------------------------------------


def test_a_new_operator_has_an_empty_schedule_in_the_organisations_zone_and_is_always_on_shift(
    client: FlaskClient, anna: dict
) -> None:
    answer = json_of(client.get(f"{API}/operators/{anna['id']}/schedule"))
    assert answer == {
        "operator_id": anna["id"],
        "timezone": None,
        "effective_timezone": "UTC",
        "hours": [],
        "absences": [],
        "on_shift": True,
        "next_shift_change_at": None,
    }


def test_a_schedule_is_stored_as_sent_and_answered_in_its_own_words(client: FlaskClient, anna: dict) -> None:
    body = schedule(
        "Europe/Moscow",
        hours=[
            {"weekday": 5, "start": "22:00", "end": "06:00"},  # crosses midnight
            {"weekday": 1, "start": "13:00", "end": "00:00"},  # 00:00: the midnight that ends Monday
            {"weekday": 1, "start": "09:00", "end": "12:00"},
            {"weekday": 7, "start": "00:00", "end": "24:00"},  # the whole of Sunday
        ],
        absences=[
            {"from": "2027-05-01", "to": "2027-05-01"},
            {"from": "2026-12-24", "to": "2027-01-02", "note": "  holiday "},
        ],
    )
    response = put_schedule(client, anna["id"], body)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = json_of(response)
    assert answer["operator_id"] == anna["id"]
    assert (answer["timezone"], answer["effective_timezone"]) == ("Europe/Moscow", "Europe/Moscow")
    # By day and start; a midnight end always as 24:00.
    assert answer["hours"] == [
        {"weekday": 1, "start": "09:00", "end": "12:00"},
        {"weekday": 1, "start": "13:00", "end": "24:00"},
        {"weekday": 5, "start": "22:00", "end": "06:00"},
        {"weekday": 7, "start": "00:00", "end": "24:00"},
    ]
    assert answer["absences"] == [
        {"from": "2026-12-24", "to": "2027-01-02", "note": "holiday"},
        {"from": "2027-05-01", "to": "2027-05-01", "note": None},
    ]
    assert json_of(client.get(f"{API}/operators/{anna['id']}/schedule")) == answer
    # Sent again as it was answered: the same schedule.
    again = put_schedule(client, anna["id"], {k: answer[k] for k in ("timezone", "hours", "absences")})
    assert json_of(again) == answer


def test_on_shift_and_the_next_change_follow_the_hours_and_absences(client: FlaskClient, anna: dict) -> None:
    interval, end = hours_around_now(timedelta(hours=1), timedelta(hours=1))
    answer = json_of(put_schedule(client, anna["id"], schedule("UTC", hours=[interval])))
    assert answer["on_shift"] is True and at(answer["next_shift_change_at"]) == end
    # Absent from yesterday to tomorrow (in UTC): off now, back at midnight after tomorrow.
    today = utcnow().date()
    absent = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}
    answer = json_of(put_schedule(client, anna["id"], schedule("UTC", absences=[absent])))
    assert answer["on_shift"] is False
    assert at(answer["next_shift_change_at"]) == datetime.combine(today + timedelta(days=2), datetime.min.time(), UTC)
    # Every hour of the week: always on, no change foreseen.
    every_day = [{"weekday": day, "start": "00:00", "end": "24:00"} for day in range(1, 8)]
    answer = json_of(put_schedule(client, anna["id"], schedule("UTC", hours=every_day)))
    assert (answer["on_shift"], answer["next_shift_change_at"]) == (True, None)


def test_every_operator_shown_says_whether_it_is_on_shift_and_when_that_changes(
    client: FlaskClient, anna: dict
) -> None:
    boris = created(client, "/operators/", {"name": "Boris", "max_active_leads": 5})
    interval, end = hours_around_now(timedelta(hours=1), timedelta(hours=2))
    put_schedule(client, anna["id"], schedule("UTC", hours=[interval]))
    today = utcnow().date()
    put_schedule(client, boris["id"], schedule(absences=[{"from": str(today), "to": str(today + timedelta(days=1))}]))
    back = datetime.combine(today + timedelta(days=2), datetime.min.time(), UTC)
    shown = {o["id"]: o for o in json_of(client.get(f"{API}/operators/"))["items"]}
    assert (shown[anna["id"]]["on_shift"], at(shown[anna["id"]]["next_shift_change_at"])) == (True, end)
    assert (shown[boris["id"]]["on_shift"], at(shown[boris["id"]]["next_shift_change_at"])) == (False, back)
    assert shown[boris["id"]]["at_work"] is False and shown[anna["id"]]["at_work"] is True
    for operator_id, expected in shown.items():
        assert json_of(client.get(f"{API}/operators/{operator_id}")) == expected
        assert json_of(client.patch(f"{API}/operators/{operator_id}", json={})) == expected
    # The registration's operator too (built from the engine's record, not the model).
    source = created(client, "/sources/", {"name": "web"})
    created(client, f"/sources/{source['id']}/config", [{"operator_id": anna["id"], "weight": 1}])
    registered = created(client, "/contacts/register", {"source_id": source["id"], "phone": "+79000000001"})
    operator = registered["assigned_operator"]
    assert (operator["on_shift"], at(operator["next_shift_change_at"])) == (True, end)
    schemas = json_of(client.get(f"{API}/openapi.json"))["components"]["schemas"]
    assert {"on_shift", "next_shift_change_at", "away_reason"} <= set(schemas["OperatorOut"]["required"])


def test_a_schedule_without_a_zone_is_read_in_the_organisations(client: FlaskClient, anna: dict) -> None:
    assert json_of(client.put(f"{API}/settings", json={"timezone": "Asia/Tokyo"}))["timezone"] == "Asia/Tokyo"
    answer = json_of(
        put_schedule(client, anna["id"], schedule(hours=[{"weekday": 1, "start": "09:00", "end": "18:00"}]))
    )
    assert (answer["timezone"], answer["effective_timezone"]) == (None, "Asia/Tokyo")
    # Monday 09:00 in Tokyo is Monday 00:00 UTC.
    assert at(answer["next_shift_change_at"]).astimezone(UTC).strftime("%a %H:%M") in ("Mon 00:00", "Mon 09:00")


def test_replacing_a_schedule_is_in_the_operators_history(app: Flask, client: FlaskClient, anna: dict) -> None:
    put_schedule(client, anna["id"], schedule("UTC", hours=[{"weekday": 2, "start": "08:00", "end": "17:00"}]))
    with app.app_context():
        events = db.session.scalars(sa.select(OperatorEvent).where(OperatorEvent.operator_id == anna["id"])).all()
        assert [(e.field, e.actor) for e in events] == [("schedule", "token:tests (#1)")]


def test_routing_follows_a_schedule_at_once(app: Flask, client: FlaskClient, anna: dict) -> None:
    """Absent: registrations wait; the absence removed: the waiting contacts go to it in the same request."""
    source = created(client, "/sources/", {"name": "web"})
    created(client, f"/sources/{source['id']}/config", [{"operator_id": anna["id"], "weight": 1}])
    today = utcnow().date()
    absent = [{"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}]
    put_schedule(client, anna["id"], schedule("UTC", absences=absent))
    for n in range(2):
        registered = created(client, "/contacts/register", {"source_id": source["id"], "phone": f"+7900000000{n}"})
        assert registered["assigned_operator"] is None
    assert json_of(put_schedule(client, anna["id"], schedule("UTC")))["on_shift"] is True
    assert json_of(client.get(f"{API}/operators/{anna['id']}"))["active_leads"] == 2
    with app.app_context():
        assert set(db.session.scalars(sa.select(Contact.operator_id))) == {anna["id"]}
        assert_load_matches_open_contacts()


# --- bad input ------------------------------------------------------------------------------

NINE_TO_SIX = {"weekday": 1, "start": "09:00", "end": "18:00"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (schedule(hours=[{"weekday": 1, "start": "25:00", "end": "18:00"}]), {"hours.0.start"}),
        (schedule(hours=[{"weekday": 1, "start": "24:00", "end": "18:00"}]), {"hours.0.start"}),
        (schedule(hours=[{"weekday": 1, "start": "9:00", "end": "18:00"}]), {"hours.0.start"}),
        (schedule(hours=[{"weekday": 1, "start": "09:00", "end": "24:01"}]), {"hours.0.end"}),
        (schedule(hours=[{"weekday": 1, "start": 540, "end": "18:00"}]), {"hours.0.start"}),
        (schedule(hours=[{"weekday": 1, "start": "09:00", "end": "09:00"}]), {"hours.0.end"}),  # empty
        (schedule(hours=[{"weekday": 1, "start": "00:00", "end": "00:00"}, NINE_TO_SIX]), {"hours.1"}),  # all day
        (schedule(hours=[NINE_TO_SIX, {"weekday": 1, "start": "17:00", "end": "19:00"}]), {"hours.1"}),
        (schedule(hours=[{"weekday": 7, "start": "22:00", "end": "10:00"}, NINE_TO_SIX]), {"hours.1"}),
        (schedule(hours=[{"weekday": 0, "start": "09:00", "end": "18:00"}]), {"hours.0.weekday"}),
        (schedule(hours=[{"weekday": 8, "start": "09:00", "end": "18:00"}]), {"hours.0.weekday"}),
        (schedule(hours=[{"weekday": 1, "start": "09:00"}]), {"hours.0.end"}),
        (schedule(hours=[NINE_TO_SIX] * (SCHEDULE_HOURS_MAX + 1)), {"hours"}),
        (schedule(absences=[{"from": "2027-01-02", "to": "2027-01-01"}]), {"absences.0.to"}),
        (schedule(absences=[{"from": "2027-02-30", "to": "2027-03-01"}]), {"absences.0.from"}),
        (schedule(absences=[{"from": "20270101", "to": "2027-03-01"}]), {"absences.0.from"}),
        (schedule(absences=[{"from": "0001-01-01", "to": "2027-03-01"}]), {"absences.0.from"}),
        (schedule(absences=[{"from": "2027-01-01", "to": "9999-12-31"}]), {"absences.0.to"}),
        (schedule(absences=[{"from_": "2027-01-01", "to": "2027-01-02"}]), {"absences.0.from", "absences.0.from_"}),
        (schedule(absences=[{"from": "2027-01-01", "to": "2027-01-02", "note": "x" * 201}]), {"absences.0.note"}),
        (schedule("Mars/Olympus"), {"timezone"}),
        (schedule("europe/moscow"), {"timezone"}),
        (schedule(""), {"timezone"}),
        ({"hours": [], "absences": []}, {"timezone"}),  # null is the organisation's; leaving it out is a typo
        ({"timezone": None, "hours": []}, {"absences"}),
        ({**schedule(), "shift": 1}, {"shift"}),
    ],
)
def test_bad_schedules_are_422_naming_the_field_and_change_nothing(
    client: FlaskClient, anna: dict, body: dict, fields: set[str]
) -> None:
    path = f"{API}/operators/{anna['id']}/schedule"
    before = json_of(put_schedule(client, anna["id"], schedule("UTC", hours=[NINE_TO_SIX])))
    assert_error(put_schedule(client, anna["id"], body), 422, fields)
    assert json_of(client.get(path)) == before


def test_an_unknown_operator_is_404_whatever_the_body(client: FlaskClient) -> None:
    assert_error(client.get(f"{API}/operators/99/schedule"), 404)
    assert_error(put_schedule(client, 99, schedule()), 404)
    assert_error(put_schedule(client, 99, schedule("Mars/Olympus")), 404)
    assert_error(client.put(f"{API}/operators/99/schedule", data="{", content_type="application/json"), 404)


# --- who may --------------------------------------------------------------------------------


def test_an_operator_user_reads_its_own_schedule_only_and_changes_none(
    app: Flask, client: FlaskClient, anna: dict
) -> None:
    boris = created(client, "/operators/", {"name": "Boris", "max_active_leads": 5})
    put_schedule(client, anna["id"], schedule("UTC", hours=[NINE_TO_SIX]))
    with app.app_context():
        user = accounts.create_user(
            db.session(), username="anna", password=PASSWORD, role="operator", operator_id=anna["id"]
        )
        db.session.commit()
        operator = login_client(app, user)
    csrf = {"X-CSRFToken": csrf_token_of(operator.get("/login", follow_redirects=True).get_data(as_text=True))}
    own = operator.get(f"{API}/operators/{anna['id']}/schedule")
    assert own.status_code == 200 and json_of(own)["hours"] == [NINE_TO_SIX]
    assert_error(operator.get(f"{API}/operators/{boris['id']}/schedule"), 403)
    refused = operator.put(f"{API}/operators/{anna['id']}/schedule", json=schedule(), headers=csrf)
    assert_error(refused, 403)
    assert_error(operator.get(f"{API}/settings"), 403)
    assert_error(operator.put(f"{API}/settings", json={"timezone": "UTC"}, headers=csrf), 403)
    assert json_of(client.get(f"{API}/operators/{anna['id']}/schedule"))["hours"] == [NINE_TO_SIX]


# --- the organisation's settings ------------------------------------------------------------


def test_settings_answer_the_preset_zone_until_one_is_set(app: Flask, client: FlaskClient) -> None:
    assert json_of(client.get(f"{API}/settings")) == {"timezone": "UTC", "timezone_set": False}
    app.config["LEADCRM_TIMEZONE"] = "Europe/Berlin"
    assert json_of(client.get(f"{API}/settings")) == {"timezone": "Europe/Berlin", "timezone_set": False}
    answer = client.put(f"{API}/settings", json={"timezone": "Europe/Moscow"})
    assert answer.status_code == 200 and json_of(answer) == {"timezone": "Europe/Moscow", "timezone_set": True}
    assert json_of(client.get(f"{API}/settings")) == {"timezone": "Europe/Moscow", "timezone_set": True}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"timezone": "Mars/Olympus"}, {"timezone"}),
        ({"timezone": ""}, {"timezone"}),
        ({"timezone": None}, {"timezone"}),
        ({"timezone": "x" * 65}, {"timezone"}),
        ({}, {"timezone"}),
        ({"timezone": "UTC", "language": "ru"}, {"language"}),
    ],
)
def test_bad_settings_are_422_naming_the_field(client: FlaskClient, body: dict, fields: set[str]) -> None:
    assert_error(client.put(f"{API}/settings", json=body), 422, fields)
    assert json_of(client.get(f"{API}/settings"))["timezone_set"] is False


def test_a_new_organisation_zone_has_the_worker_recompute_the_schedules_in_it(
    app: Flask, client: FlaskClient, anna: dict
) -> None:
    boris = created(client, "/operators/", {"name": "Boris", "max_active_leads": 5})
    carl = created(client, "/operators/", {"name": "Carl", "max_active_leads": 5})
    put_schedule(client, anna["id"], schedule(hours=[NINE_TO_SIX]))  # the organisation's zone
    put_schedule(client, boris["id"], schedule("Europe/Moscow", hours=[NINE_TO_SIX]))  # its own
    before = utcnow()
    client.put(f"{API}/settings", json={"timezone": "Asia/Tokyo"})
    with app.app_context():
        due = {o.id: o.schedule_due_at for o in db.session.scalars(sa.select(Operator))}
    annas, boriss = due[anna["id"]], due[boris["id"]]
    assert annas is not None and before <= annas <= utcnow()  # now: the worker's next step
    assert boriss is not None and boriss > utcnow()  # its own next change
    assert due[carl["id"]] is None  # no schedule: nothing to recompute


def test_the_document_describes_schedules_in_their_own_words(client: FlaskClient) -> None:
    document = json_of(client.get(f"{API}/openapi.json"))
    schemas = document["components"]["schemas"]
    hours = schemas["HoursIn"]["properties"]
    assert hours["start"]["pattern"] and hours["end"]["pattern"] and hours["start"]["type"] == "string"
    assert set(schemas["AbsenceIn"]["properties"]) == {"from", "to", "note"}
    assert set(schemas["AbsenceOut"]["properties"]) == {"from", "to", "note"}
    assert set(schemas["ScheduleIn"]["required"]) == {"timezone", "hours", "absences"}
    put = document["paths"]["/operators/{operator_id}/schedule"]["put"]
    assert put["operationId"] == "replaceOperatorSchedule" and "422" in put["responses"]


def test_the_domain_refuses_what_the_database_would_refuse() -> None:
    """The web form calls the domain without the API's schema: an empty interval, a day outside the
    week or an absence near the calendar's end is a 422 naming the field, never a constraint's 500."""
    for hours, field in (
        ([Hours(1, 540, 540)], "hours.0.end"),
        ([Hours(8, 540, 600)], "hours.0.weekday"),
        ([Hours(1, 1440, 600)], "hours.0.start"),
        ([Hours(1, 540, 0)], "hours.0.end"),
    ):
        with pytest.raises(InvalidInput) as refused:
            schedules.check_hours(hours)
        assert set(refused.value.fields) == {field}
    with pytest.raises(InvalidInput) as refused:
        schedules.check_absences([Absence(date(2027, 1, 1), date(9999, 12, 31))])
    assert set(refused.value.fields) == {"absences.0.to"}


def test_the_servers_own_localtime_is_not_a_time_zone_to_store(client: FlaskClient) -> None:
    """zoneinfo lists "localtime" where the system has /usr/share/zoneinfo/localtime: whatever the server's
    clock is set to, a different zone on each server (and for the worker). Refused, as an unknown name."""
    from zoneinfo import available_timezones

    if "localtime" not in available_timezones():
        pytest.skip("this system's zoneinfo has no localtime entry")
    operator_id = created(client, "/operators/", {"name": "Anna", "max_active_leads": 5})["id"]
    assert_error(client.put(f"{API}/settings", json={"timezone": "localtime"}), 422, {"timezone"})
    body = {"timezone": "localtime", "hours": [], "absences": []}
    assert_error(put_schedule(client, operator_id, body), 422, {"timezone"})
