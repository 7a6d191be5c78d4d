"""Schedules: the stretch on shift from weekly hours and absences, in two zones and across DST changes,
and the claims that check it."""

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask

from leadcrm import distribution, schedules
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, utcnow
from leadcrm.schedules import Absence, Hours, Stretch, read_clock, stretch
from tests.helpers import add_operator, add_source, assert_load_matches_open_contacts, phone

MOSCOW = ZoneInfo("Europe/Moscow")  # UTC+3 all year
NEW_YORK = ZoneInfo("America/New_York")  # UTC-5, -4 in summer
BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS_9_TO_6 = [Hours(day, 9 * 60, 18 * 60) for day in range(1, 6)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def one_second(moment: datetime) -> tuple[datetime, datetime]:
    return moment - timedelta(seconds=1), moment


# --- the stretch, as a function of time ---------------------------------------------------


def test_no_hours_and_no_absences_is_always_on_shift() -> None:
    assert stretch([], [], MOSCOW, utc(2026, 12, 7, 3)) == Stretch(None, None, None)


@pytest.mark.parametrize(
    ("zone", "start", "end"),
    [
        # Monday 7 December 2026, 09:00-18:00 local.
        (MOSCOW, utc(2026, 12, 7, 6), utc(2026, 12, 7, 15)),
        (NEW_YORK, utc(2026, 12, 7, 14), utc(2026, 12, 7, 23)),
    ],
)
def test_boundaries_of_a_working_day_in_two_zones(zone: ZoneInfo, start: datetime, end: datetime) -> None:
    before, at_start = one_second(start)
    last, at_end = one_second(end)
    assert stretch(WEEKDAYS_9_TO_6, [], zone, before) == Stretch(start, end, start)  # off: next is today's
    assert not stretch(WEEKDAYS_9_TO_6, [], zone, before).on_shift(before)
    assert stretch(WEEKDAYS_9_TO_6, [], zone, at_start) == Stretch(start, end, end)  # on from 09:00 exactly
    assert stretch(WEEKDAYS_9_TO_6, [], zone, at_start).on_shift(at_start)
    assert stretch(WEEKDAYS_9_TO_6, [], zone, last).on_shift(last)  # 17:59:59
    after = stretch(WEEKDAYS_9_TO_6, [], zone, at_end)  # 18:00: off until Tuesday 09:00
    assert not after.on_shift(at_end)
    assert after == Stretch(start + timedelta(days=1), end + timedelta(days=1), start + timedelta(days=1))


def test_friday_evening_goes_to_monday_morning() -> None:
    friday_end = utc(2026, 12, 11, 15)  # 18:00 in Moscow
    monday = stretch(WEEKDAYS_9_TO_6, [], MOSCOW, friday_end)
    assert monday.shift_from == utc(2026, 12, 14, 6) and monday.due_at == monday.shift_from


def test_an_interval_crossing_midnight_ends_the_next_day() -> None:
    night = [Hours(5, 22 * 60, 6 * 60)]  # Friday 22:00 - Saturday 06:00
    start, end = utc(2026, 12, 11, 19), utc(2026, 12, 12, 3)
    assert stretch(night, [], MOSCOW, utc(2026, 12, 11, 20)) == Stretch(start, end, end)
    last, at_end = one_second(end)
    assert stretch(night, [], MOSCOW, last).on_shift(last)
    assert not stretch(night, [], MOSCOW, at_end).on_shift(at_end)
    assert stretch(night, [], MOSCOW, at_end).shift_from == start + timedelta(days=7)


def test_touching_intervals_are_one_stretch_and_round_the_clock_is_always() -> None:
    hours = [Hours(1, 22 * 60, 6 * 60), Hours(2, 6 * 60, 14 * 60)]  # Monday 22:00 - Tuesday 14:00
    assert stretch(hours, [], MOSCOW, utc(2026, 12, 8, 0)) == Stretch(
        utc(2026, 12, 7, 19), utc(2026, 12, 8, 11), utc(2026, 12, 8, 11)
    )
    every_day = [Hours(day, 0, 24 * 60) for day in range(1, 8)]
    assert stretch(every_day, [], MOSCOW, utc(2026, 12, 8, 0)) == Stretch(None, None, None)


def test_daylight_saving_changes_the_length_of_a_night_shift_and_the_utc_time_of_a_day_shift() -> None:
    nights = [Hours(7, 0, 6 * 60)]  # Sundays 00:00-06:00 in Berlin
    spring = stretch(nights, [], BERLIN, utc(2026, 3, 28, 12))  # clocks go 02:00 -> 03:00 on 29 March
    assert (spring.shift_from, spring.shift_until) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 4))  # 5 hours
    autumn = stretch(nights, [], BERLIN, utc(2026, 10, 24, 12))  # clocks go 03:00 -> 02:00 on 25 October
    assert (autumn.shift_from, autumn.shift_until) == (utc(2026, 10, 24, 22), utc(2026, 10, 25, 5))  # 7 hours
    # 09:00 in Berlin: 08:00 UTC on the Friday before the change, 07:00 UTC on the Monday after.
    days = [Hours(5, 9 * 60, 18 * 60), Hours(1, 9 * 60, 18 * 60)]
    assert stretch(days, [], BERLIN, utc(2026, 3, 27, 7)).shift_from == utc(2026, 3, 27, 8)
    assert stretch(days, [], BERLIN, utc(2026, 3, 27, 17)).shift_from == utc(2026, 3, 30, 7)
    # New York changes on another day (8 March): its 09:00 moves from 14:00 to 13:00 UTC.
    assert stretch(WEEKDAYS_9_TO_6, [], NEW_YORK, utc(2026, 3, 6, 23)).shift_from == utc(2026, 3, 9, 13)


def test_a_wall_clock_time_the_clocks_skip_starts_after_the_change() -> None:
    hours = [Hours(7, 2 * 60 + 30, 5 * 60)]  # Sunday 02:30 does not exist in Berlin on 29 March
    # Read with the offset before the change (UTC+1): 01:30 UTC, which is 03:30 after it.
    assert stretch(hours, [], BERLIN, utc(2026, 3, 28, 12)).shift_from == utc(2026, 3, 29, 1, 30)


def test_absences_cut_whole_days_out_of_the_hours() -> None:
    holiday = [Absence(date(2026, 12, 24), date(2027, 1, 2), "holiday")]
    # Wednesday 23 December ends at 18:00; Thursday to Saturday 2 January are off; back Monday 4 January.
    on_23rd = stretch(WEEKDAYS_9_TO_6, holiday, MOSCOW, utc(2026, 12, 23, 10))
    assert on_23rd == Stretch(utc(2026, 12, 23, 6), utc(2026, 12, 23, 15), utc(2026, 12, 23, 15))
    during = stretch(WEEKDAYS_9_TO_6, holiday, MOSCOW, utc(2026, 12, 28, 10))
    assert during.shift_from == utc(2027, 1, 4, 6) and not during.on_shift(utc(2026, 12, 28, 10))


def test_absences_without_hours_are_off_from_midnight_to_midnight() -> None:
    away = [Absence(date(2026, 12, 24), date(2026, 12, 25))]
    before = stretch([], away, MOSCOW, utc(2026, 12, 20))
    assert before == Stretch(None, utc(2026, 12, 23, 21), utc(2026, 12, 23, 21))  # 24 December 00:00 in Moscow
    during = stretch([], away, MOSCOW, utc(2026, 12, 24, 12))
    assert during == Stretch(utc(2026, 12, 25, 21), None, utc(2026, 12, 25, 21))  # back 26 December 00:00
    assert stretch([], away, MOSCOW, utc(2026, 12, 25, 21)).on_shift(utc(2026, 12, 25, 21))


# --- checking what is typed ---------------------------------------------------------------


def test_clock_times_are_read_strictly() -> None:
    assert read_clock("09:00", end=False) == 540
    assert read_clock("24:00", end=True) == 1440 and read_clock("00:00", end=True) == 1440
    for bad in ("25:00", "24:00", "9:00", "09:60", "09:00:00", " 09:00", "٠٩:٠٠"):
        assert read_clock(bad, end=False) is None, bad
    assert read_clock("24:01", end=True) is None


@pytest.mark.parametrize(
    ("hours", "field"),
    [
        ([Hours(1, 9 * 60, 12 * 60), Hours(1, 11 * 60, 13 * 60)], "hours.1"),
        ([Hours(1, 9 * 60, 18 * 60), Hours(1, 9 * 60, 18 * 60)], "hours.1"),
        ([Hours(1, 22 * 60, 6 * 60), Hours(2, 5 * 60, 7 * 60)], "hours.1"),  # across midnight
        ([Hours(1, 5 * 60, 7 * 60), Hours(7, 22 * 60, 6 * 60)], "hours.1"),  # Sunday night into Monday
    ],
)
def test_overlapping_intervals_are_refused_naming_one(hours: list[Hours], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        schedules.check_hours(hours)
    assert field in refused.value.fields


def test_touching_intervals_are_allowed_and_an_absence_must_not_end_before_it_starts() -> None:
    schedules.check_hours([Hours(1, 9 * 60, 12 * 60), Hours(1, 12 * 60, 18 * 60), Hours(7, 22 * 60, 6 * 60)])
    with pytest.raises(InvalidInput) as refused:
        schedules.check_absences([Absence(date(2026, 1, 2), date(2026, 1, 1))])
    assert "absences.0.to" in refused.value.fields
    with pytest.raises(InvalidInput) as refused:
        schedules.check_timezone("Mars/Olympus")
    assert "timezone" in refused.value.fields


# --- the claims check the stored stretch ---------------------------------------------------


def around(moment: datetime, before: timedelta, after: timedelta) -> Hours:
    """Hours (in UTC) from ``before`` ahead of ``moment`` to ``after`` past it, whole minutes."""
    start = (moment - before).replace(second=0, microsecond=0)
    end = (moment + after).replace(second=0, microsecond=0)
    ends = end.hour * 60 + end.minute
    return Hours(start.isoweekday(), start.hour * 60 + start.minute, ends or 24 * 60)


def test_an_operator_on_shift_gets_contacts_and_one_whose_shift_just_ended_does_not(ctx: None) -> None:
    anna, boris = add_operator("Anna"), add_operator("Boris")
    source = add_source("web", {anna: 1, boris: 1})
    db.session.commit()
    now = utcnow()
    begin_write(db.session)
    # Anna's shift runs now; Boris's ended a minute ago: computed by the worker while it was on,
    # two hours ago, so only the claim can tell that it is over.
    schedules.replace_schedule(
        db.session(),
        anna.id,
        timezone="UTC",
        hours=[around(now, timedelta(hours=1), timedelta(hours=1))],
        absences=[],
        organisation="UTC",
    )
    schedules.replace_schedule(
        db.session(),
        boris.id,
        timezone="UTC",
        hours=[around(now, timedelta(hours=3), -timedelta(minutes=1))],
        absences=[],
        organisation="UTC",
    )
    schedules.refresh_shift(db.session(), boris.id, now - timedelta(hours=2), "UTC")
    db.session.commit()
    db.session.expire_all()
    boris_row = db.session.get(Operator, boris.id)
    assert boris_row is not None and boris_row.shift_until is not None and boris_row.shift_until < utcnow()
    for n in range(4):
        begin_write(db.session)
        distribution.register_contact(db.session(), source=source, identity=phone(n))
        db.session.commit()
    held = dict(db.session.execute(db.select(Contact.operator_id, db.func.count()).group_by(Contact.operator_id)).all())
    assert held == {anna.id: 4}
    assert_load_matches_open_contacts()


def test_a_shift_that_starts_lets_the_queue_drain_through_the_worker_step(ctx: None) -> None:
    anna = add_operator("Anna")
    source = add_source("web", {anna: 1})
    db.session.commit()
    now = utcnow()
    begin_write(db.session)
    # Off now: the shift starts in an hour; three contacts wait.
    schedules.replace_schedule(
        db.session(),
        anna.id,
        timezone="UTC",
        hours=[around(now, -timedelta(hours=1), timedelta(hours=2))],
        absences=[],
        organisation="UTC",
    )
    db.session.commit()
    for n in range(3):
        begin_write(db.session)
        assert distribution.register_contact(db.session(), source=source, identity=phone(n)).operator is None
        db.session.commit()
    db.session.expire_all()
    row = db.session.get(Operator, anna.id)
    assert row is not None and row.schedule_due_at == row.shift_from and row.shift_from is not None
    # The worker's step at the moment the shift starts (a real future time, given to the step) asks
    # for the drain; the drain step cannot assign yet: the claim checks the real clock, still off.
    begin_write(db.session)
    assert schedules.refresh_due_shifts(db.session(), row.shift_from, "UTC") == 1
    db.session.commit()
    assert db.session.scalar(db.select(db.func.count()).select_from(Contact).where(Contact.operator_id.is_(None))) == 3
    from leadcrm.models import DrainRequest

    assert db.session.get(DrainRequest, source.id) is not None


def test_the_worker_reads_the_organisation_zone_in_the_transaction_that_recomputes_the_shifts(
    app: Flask, ctx: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor changes the organisation's zone just after the worker's round looked at what is due:
    the stretches recomputed are on the new zone's clock, not the one the round read a moment before."""
    from leadcrm.worker import Worker

    anna = add_operator("Anna")
    db.session.commit()
    begin_write(db.session)
    schedules.set_organisation_timezone(db.session(), "UTC")
    # Every day 09:00-17:00 on the organisation's clock (no zone of her own).
    hours = [Hours(day, 9 * 60, 17 * 60) for day in range(1, 8)]
    schedules.replace_schedule(db.session(), anna.id, timezone=None, hours=hours, absences=[], organisation="UTC")
    db.session.commit()
    begin_write(db.session)
    schedules.set_organisation_timezone(db.session(), "America/New_York")  # her stretch is due now
    db.session.commit()

    worker = Worker(app)
    read = worker._read

    def read_then_a_supervisor_changes_the_zone(work: Callable[[], Any]) -> Any:
        result = read(work)
        with app.app_context():  # another request, committed between the worker's read and its write
            begin_write(db.session)
            schedules.set_organisation_timezone(db.session(), "Asia/Tokyo")
            db.session.commit()
        monkeypatch.setattr(worker, "_read", read)
        return result

    monkeypatch.setattr(worker, "_read", read_then_a_supervisor_changes_the_zone)
    assert worker.shifts() == 1
    worker.shifts()  # anything still due
    db.session.expire_all()
    row = db.session.get_one(Operator, anna.id)
    expected = stretch(hours, [], ZoneInfo("Asia/Tokyo"), utcnow())
    assert (row.shift_from, row.shift_until) == (expected.shift_from, expected.shift_until)


def test_an_interval_the_spring_change_swallows_is_skipped_not_stored_backwards() -> None:
    """Sunday 02:30-03:10 in Berlin on 29 March 2026 (02:00-03:00 does not happen): its start reads as
    03:30, after its end. No stretch ends before it starts: that day has none, the next Sunday's is next."""
    hours = [Hours(7, 150, 190)]
    result = stretch(hours, [], BERLIN, utc(2026, 3, 28, 12))
    assert result.shift_from is not None and result.shift_until is not None
    assert result.shift_from < result.shift_until
    assert (result.shift_from, result.shift_until) == (utc(2026, 4, 5, 0, 30), utc(2026, 4, 5, 1, 10))


def test_shifts_starting_at_once_ask_for_drains_in_source_order(backend: Any, app: Flask, ctx: None) -> None:
    """The worker recomputes Anna's shift (she serves "chat") then Boris's ("web", the lower id): it asks for
    their sources' drains in id order, as a request whose drain ran out of batch does, so that both queue
    on the drain requests' rows instead of deadlocking (PostgreSQL's row locks)."""
    if backend.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    import threading

    from leadcrm.storage import Tx, request_drain

    anna, boris = add_operator("Anna"), add_operator("Boris")
    web = add_source("web", {boris: 1})
    chat = add_source("chat", {anna: 1})
    db.session.commit()
    long_ago = [Absence(date(2000, 1, 3), date(2000, 1, 3))]  # a schedule, and on shift now
    begin_write(db.session)
    for operator in (anna, boris):
        schedules.replace_schedule(
            db.session(), operator.id, timezone=None, hours=[], absences=long_ago, organisation="UTC"
        )
    schedules.set_organisation_timezone(db.session(), "Europe/Moscow")  # both due now, Anna first
    db.session.commit()

    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with app.app_context():
                begin_write(db.session)
                assert schedules.refresh_due_shifts(db.session(), utcnow(), "UTC") == 2
                db.session.commit()
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            failures.append(exc)

    with app.app_context():
        # A request whose drain ran out of batch asks for both, in id order: "web" first, then "chat".
        begin_write(db.session)
        request_drain(Tx.of(db.session()), [web.id], utcnow())
        thread = threading.Thread(target=worker)
        thread.start()
        time.sleep(0.5)
        try:
            request_drain(Tx.of(db.session()), [chat.id], utcnow())
            db.session.commit()
        except BaseException as exc:  # noqa: BLE001
            db.session.rollback()
            failures.append(exc)
        thread.join(20)
    assert not thread.is_alive()
    assert not failures, failures
