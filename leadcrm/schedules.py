"""Schedules: an operator's weekly working hours and absences, and the stretch on shift they give.

The claims never read the hours: they check one stored stretch per operator
(``operators.shift_from`` and ``shift_until``, ``storage._at_work``), which
this module computes from the hours and absences in the schedule's time zone
(zoneinfo: daylight-saving changes included). Each stretch also says when to
look again (``schedule_due_at``): at its start, when the waiting queues of the
sources the operator serves are drained, and at its end, when the next
stretch is computed. The worker does both (``due_shifts``); a stretch that
ended is off at once, at the claim, even before the worker looks.

A schedule with no hours is always on shift (absences aside), as operators
were before schedules existed.
"""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import outbox, storage
from leadcrm.distribution import drain_for_operators
from leadcrm.errors import InvalidInput, Message, UnknownOperator
from leadcrm.models import Operator, OperatorAbsence, OperatorHours, Setting, utcnow
from leadcrm.storage import Tx
from leadcrm.vocabulary import (
    ABSENCE_YEAR_MAX,
    ABSENCE_YEAR_MIN,
    SCHEDULE_ABSENCES_MAX,
    SCHEDULE_HOURS_MAX,
    OperatorChange,
)

DAY = 24 * 60
WEEK = 7 * DAY
# How far ahead a stretch is looked for past the last absence: more than a week of hours.
HORIZON = timedelta(days=15)
# A stretch is never looked for further than this (an absence years long).
HORIZON_MAX = timedelta(days=3 * 366)
TIMEZONE_KEY = "timezone"


@dataclass(frozen=True, slots=True)
class Hours:
    """One interval of the week: ISO weekday (1 is Monday) and minutes since midnight.

    ``ends`` is 1-1440; ``ends`` at or before ``starts`` crosses midnight.
    """

    weekday: int
    starts: int
    ends: int

    @property
    def minutes(self) -> int:
        return self.ends - self.starts if self.ends > self.starts else self.ends + DAY - self.starts


@dataclass(frozen=True, slots=True)
class Absence:
    starts_on: date
    ends_on: date  # inclusive
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Stretch:
    """The current or next stretch on shift (None: open-ended) and when to look at it again (None: never)."""

    shift_from: datetime | None
    shift_until: datetime | None
    due_at: datetime | None

    def on_shift(self, now: datetime) -> bool:
        return storage.is_on_shift(self.shift_from, self.shift_until, now)


@dataclass(frozen=True, slots=True)
class Schedule:
    operator_id: int
    timezone: str | None  # None: the organisation's
    hours: list[Hours]
    absences: list[Absence]


# --- time zones -----------------------------------------------------------------------


@cache
def known_timezones() -> frozenset[str]:
    # "localtime" (listed where the system has zoneinfo/localtime) is the server's own clock: one zone
    # on this server, another on the next and on the worker's. Not a zone to store.
    return frozenset(available_timezones()) - {"localtime"}


def check_timezone(name: str, field: str = "timezone") -> str:
    """The IANA name if zoneinfo knows it (Europe/Moscow, UTC); InvalidInput naming ``field`` otherwise."""
    if name not in known_timezones():
        message = Message("Unknown time zone “%(name)s”: use a name such as Europe/Moscow or UTC.", name=name)
        raise InvalidInput(message, {field: message})
    return name


def organisation_timezone(session: Session | Tx, preset: str = "UTC") -> str:
    """The organisation's time zone: as set on the settings page, else ``preset`` (LEADCRM_TIMEZONE)."""
    if isinstance(session, Tx):
        raise TypeError("organisation_timezone reads through the session")
    # Read again, not from the session's identity map (kept across commits): the worker's session lives long.
    stored = session.get(Setting, TIMEZONE_KEY, populate_existing=True)
    return stored.value if stored is not None else preset


def organisation_timezone_is_set(session: Session) -> bool:
    """Was the organisation's time zone set (the settings page, the API), rather than preset by LEADCRM_TIMEZONE?"""
    return session.get(Setting, TIMEZONE_KEY) is not None


def set_organisation_timezone(session: Session, name: str) -> None:
    """Store the organisation's time zone; the stretches of operators in it are recomputed by the worker at once."""
    check_timezone(name)
    setting = session.get(Setting, TIMEZONE_KEY)
    if setting is None:
        session.add(Setting(key=TIMEZONE_KEY, value=name))
    elif setting.value == name:
        return
    else:
        setting.value = name
    session.flush()
    # Operators on the organisation's zone with a schedule: their stretch moves with the zone.
    has_schedule = sa.or_(
        sa.exists().where(OperatorHours.operator_id == Operator.id),
        sa.exists().where(OperatorAbsence.operator_id == Operator.id),
    )
    session.execute(
        sa.update(Operator).where(Operator.timezone.is_(None), has_schedule).values(schedule_due_at=utcnow())
    )


# --- the stretch on shift -------------------------------------------------------------


def _local(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """Midnight of ``day`` plus ``minutes`` of wall-clock time, in UTC. A time the clocks skip
    (02:30 on the spring change) is read with the offset before the change: 03:30 after it."""
    extra, minutes = divmod(minutes, DAY)
    wall = datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60), tzinfo=zone)
    return wall.astimezone(UTC)


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def stretch(hours: list[Hours], absences: list[Absence], zone: ZoneInfo, now: datetime) -> Stretch:
    """The stretch on shift that contains ``now``, or else the next one, from the hours minus the absences.

    The hours are laid out day by day in the zone's wall-clock time, from two
    days before ``now`` to well past the last absence, merged where they touch
    (22:00-06:00 then 06:00-14:00 is one stretch), and the absences (whole
    days, midnight to midnight in the zone) cut out of them. A stretch that
    reaches either end of that span goes on as long as the hours repeat: it is
    open-ended there (None).
    """
    local_today = now.astimezone(zone).date()
    first_day = local_today - timedelta(days=2)
    last_absence = max((a.ends_on for a in absences), default=local_today)
    last_day = min(max(local_today, last_absence) + HORIZON, local_today + HORIZON_MAX)
    span_start, span_end = _local(first_day, 0, zone), _local(last_day, 0, zone)
    if hours:
        on = []
        day = first_day
        while day < last_day:
            for h in hours:
                if h.weekday == day.isoweekday():
                    start, end = _local(day, h.starts, zone), _local(day, h.starts + h.minutes, zone)
                    if start < end:  # a start the spring change skips reads after the change, maybe past the end
                        on.append((start, end))
            day += timedelta(days=1)
        on = _merge(on)
    else:
        on = [(span_start, span_end)]
    off = _merge([(_local(a.starts_on, 0, zone), _local(a.ends_on + timedelta(days=1), 0, zone)) for a in absences])
    for off_start, off_end in off:
        cut = []
        for start, end in on:
            if off_end <= start or end <= off_start:
                cut.append((start, end))
                continue
            if start < off_start:
                cut.append((start, off_start))
            if off_end < end:
                cut.append((off_end, end))
        on = cut
    for start, end in on:
        if end > now:
            shift_from = None if start <= span_start else start
            shift_until = None if end >= span_end else end
            due = shift_from if shift_from is not None and now < shift_from else shift_until
            return Stretch(shift_from, shift_until, due)
    # Nothing on shift within the span (absent for years): off, looked at again at its end.
    return Stretch(span_end, span_end, span_end)


# --- reading and writing schedules ----------------------------------------------------


def get_schedule(session: Session, operator_id: int) -> Schedule:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    hours = session.scalars(
        sa.select(OperatorHours)
        .where(OperatorHours.operator_id == operator_id)
        .order_by(OperatorHours.weekday, OperatorHours.starts)
    )
    absences = session.scalars(
        sa.select(OperatorAbsence)
        .where(OperatorAbsence.operator_id == operator_id)
        .order_by(OperatorAbsence.starts_on, OperatorAbsence.id)
    )
    return Schedule(
        operator_id,
        operator.timezone,
        [Hours(h.weekday, h.starts, h.ends) for h in hours],
        [Absence(a.starts_on, a.ends_on, a.note) for a in absences],
    )


def zone_of(schedule: Schedule, organisation: str) -> ZoneInfo:
    return ZoneInfo(schedule.timezone or organisation)


def check_hours(hours: list[Hours]) -> None:
    """Refuse an interval outside the week or the day, an empty one (its end at its start: stored,
    it would read as 24 hours), and overlapping intervals (also across midnight and from Sunday
    into Monday), naming the field."""
    if len(hours) > SCHEDULE_HOURS_MAX:
        message = Message("At most %(max)s intervals a week.", max=SCHEDULE_HOURS_MAX)
        raise InvalidInput(message, {"hours": message})
    for i, h in enumerate(hours):
        if not 1 <= h.weekday <= 7:
            message = Message("A day of the week is 1 (Monday) to 7 (Sunday).")
            raise InvalidInput(message, {f"hours.{i}.weekday": message})
        if not 0 <= h.starts < DAY:
            message = Message("A start is a time of day, 00:00 to 23:59.")
            raise InvalidInput(message, {f"hours.{i}.start": message})
        if not 0 < h.ends <= DAY:
            message = Message("An end is a time of day, 00:01 to 24:00.")
            raise InvalidInput(message, {f"hours.{i}.end": message})
        if h.starts == h.ends:
            message = Message("An interval cannot end when it starts: it would be empty.")
            raise InvalidInput(message, {f"hours.{i}.end": message})
    spans = sorted(
        ((h.weekday - 1) * DAY + h.starts, (h.weekday - 1) * DAY + h.starts + h.minutes, i) for i, h in enumerate(hours)
    )
    # Laid out over two weeks, so that Sunday 22:00-06:00 meets Monday's first interval.
    laid = sorted(spans + [(s + WEEK, e + WEEK, i) for s, e, i in spans])
    for (_, end, i), (start, _, j) in zip(laid, laid[1:], strict=False):
        if start < end and i != j:
            later = max(i, j)
            message = Message("This interval overlaps another one of the same days.")
            raise InvalidInput(
                Message(
                    "Working hours overlap: %(a)s and %(b)s.", a=describe(hours[min(i, j)]), b=describe(hours[later])
                ),
                {f"hours.{later}": message},
            )


def check_absences(absences: list[Absence]) -> None:
    if len(absences) > SCHEDULE_ABSENCES_MAX:
        message = Message("At most %(max)s absences.", max=SCHEDULE_ABSENCES_MAX)
        raise InvalidInput(message, {"absences": message})
    for i, absence in enumerate(absences):
        for field, day in (("from", absence.starts_on), ("to", absence.ends_on)):
            if not ABSENCE_YEAR_MIN <= day.year <= ABSENCE_YEAR_MAX:
                message = Message(
                    "An absence's days lie within the years %(first)s to %(last)s.",
                    first=ABSENCE_YEAR_MIN,
                    last=ABSENCE_YEAR_MAX,
                )
                raise InvalidInput(message, {f"absences.{i}.{field}": message})
        if absence.ends_on < absence.starts_on:
            message = Message("The last day of an absence cannot come before its first.")
            raise InvalidInput(message, {f"absences.{i}.to": message})


def clock(minutes: int) -> str:
    """09:00; the midnight that ends a day is 24:00."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


_CLOCK = re.compile(r"([01][0-9]|2[0-4]):([0-5][0-9])")


def read_clock(text: str, *, end: bool) -> int | None:
    """Minutes since midnight of "HH:MM"; None if not a time.

    00:00-23:59; an end may be 24:00, and an end of 00:00 is the midnight that ends the day (1440).
    """
    match = _CLOCK.fullmatch(text)
    if match is None:
        return None
    minutes = int(match[1]) * 60 + int(match[2])
    if minutes > DAY or (minutes == DAY and not end):
        return None
    return DAY if end and minutes == 0 else minutes


def describe(h: Hours) -> str:
    return f"{h.weekday} {clock(h.starts)}-{clock(h.ends)}"


def check_schedule(timezone: str | None, hours: list[Hours], absences: list[Absence]) -> None:
    """What ``replace_schedule`` checks before it writes: an edge may check first, before it takes the write lock."""
    if timezone is not None:
        check_timezone(timezone)
    check_hours(hours)
    check_absences(absences)


def replace_schedule(
    session: Session,
    operator_id: int,
    *,
    timezone: str | None,
    hours: list[Hours],
    absences: list[Absence],
    organisation: str,
) -> Stretch:
    """Replace the operator's time zone (None: the organisation's), working hours and absences.

    Checked whole before anything is written (a zone zoneinfo knows, no
    overlapping intervals, no absence ending before it starts); recorded in
    the operator's history; the stretch on shift is recomputed in the same
    transaction. If that puts the operator on shift now, the waiting queues
    of the sources it serves drain at once (one batch), as for any capacity
    that appears. Locks the operator's row first, as ``update_operator`` does.
    """
    check_schedule(timezone, hours, absences)
    tx = Tx.of(session)
    before = storage.lock_operator(tx, operator_id)
    if before is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    session.execute(sa.delete(OperatorHours).where(OperatorHours.operator_id == operator_id))
    session.execute(sa.delete(OperatorAbsence).where(OperatorAbsence.operator_id == operator_id))
    session.execute(sa.update(Operator).where(Operator.id == operator_id).values(timezone=timezone))
    session.add_all(
        OperatorHours(operator_id=operator_id, weekday=h.weekday, starts=h.starts, ends=h.ends) for h in hours
    )
    session.add_all(
        OperatorAbsence(operator_id=operator_id, starts_on=a.starts_on, ends_on=a.ends_on, note=a.note)
        for a in absences
    )
    session.flush()
    now = utcnow()
    storage.record_operator_event(tx, operator_id, OperatorChange.SCHEDULE, None, now)
    result = stretch(hours, absences, ZoneInfo(timezone or organisation), now)
    storage.set_shift(tx, operator_id, result.shift_from, result.shift_until, result.due_at)
    after = storage.operator_by_id(tx, operator_id)
    if after is not None:
        outbox.operator_updated(tx, after, [OperatorChange.SCHEDULE], now)
    if result.on_shift(now) and not before.on_shift(now):
        drain_for_operators(tx, [operator_id])
    return result


def refresh_shift(
    session: Session, operator_id: int, now: datetime, organisation: str, *, drains: set[int] | None = None
) -> Stretch | None:
    """Recompute and store the operator's stretch on shift at ``now``; None if there is no such operator.

    When the stretch is on at ``now``, the waiting queues of the sources the
    operator serves are asked to drain (``drain_requests``, done by the
    worker's next step): a shift that starts gets its contacts within seconds. With ``drains``, the
    sources are added to it instead, for the caller to ask for them all at once, in id order.
    """
    schedule = get_schedule_or_none(session, operator_id)
    if schedule is None:
        return None
    result = stretch(schedule.hours, schedule.absences, zone_of(schedule, organisation), now)
    tx = Tx.of(session)
    storage.set_shift(tx, operator_id, result.shift_from, result.shift_until, result.due_at)
    if result.on_shift(now):
        if drains is not None:
            drains.update(storage.sources_served_by(tx, operator_id))
        else:
            storage.request_drain(tx, storage.sources_served_by(tx, operator_id), now)
    return result


def get_schedule_or_none(session: Session, operator_id: int) -> Schedule | None:
    try:
        return get_schedule(session, operator_id)
    except UnknownOperator:
        return None


def refresh_due_shifts(session: Session, now: datetime, preset: str, limit: int = 50) -> int:
    """The worker's step: recompute the stretches due at ``now`` (claimed with SKIP LOCKED on
    PostgreSQL, so two workers never take the same operator). Runs in the caller's transaction;
    returns how many were recomputed.

    The organisation's zone (``preset``: LEADCRM_TIMEZONE) is read here, after the claim: a change of
    it committed a moment before is seen, and one still in flight waits for these rows, then marks
    them due again."""
    tx = Tx.of(session)
    due = storage.due_shifts(tx, now, limit)
    organisation = organisation_timezone(session, preset) if due else preset
    drains: set[int] = set()
    for operator_id in due:
        refresh_shift(session, operator_id, now, organisation, drains=drains)
    # Once, last, in source order (as every other request_drain): the rows of drain_requests are locked
    # in one order, so workers and requests asking for crossing sources queue instead of deadlocking.
    storage.request_drain(tx, drains, now)
    return len(due)
