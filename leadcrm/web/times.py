"""Times as the pages show them: in the organisation's time zone, which they name.

The zone is read once per request (``organisation_timezone``, kept on
``flask.g``); the <time> elements carry the UTC instant in their ``datetime``
attribute. Weekday and month names come from Babel's data for the interface
language. Numbers stay plain (2026-12-24 09:00); locale formats come later.
"""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, get_day_names
from flask import current_app, g
from flask_babel import get_locale

from leadcrm import schedules
from leadcrm.extensions import db

# Farther off than this, a moment is said with its date, not its weekday.
WEEKDAY_AHEAD = timedelta(days=6)


def organisation_timezone() -> str:
    """The organisation's time zone for this request (LEADCRM_TIMEZONE is checked at start, stored ones when set)."""
    name = g.get("leadcrm_timezone")
    if name is None:
        name = g.leadcrm_timezone = schedules.organisation_timezone(
            db.session(), current_app.config["LEADCRM_TIMEZONE"]
        )
    return name


def organisation_zone() -> ZoneInfo:
    return ZoneInfo(organisation_timezone())


def local(moment: datetime, zone: ZoneInfo | None = None) -> datetime:
    """``moment`` on the wall clock of ``zone``, by default the organisation's (a naive one is UTC, as stored)."""
    return _aware(moment).astimezone(zone or organisation_zone())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utc_iso(moment: datetime) -> str:
    """The instant for a <time datetime="...">: ISO 8601 in UTC."""
    return _aware(moment).astimezone(UTC).isoformat()


def sortable_time(moment: datetime) -> str:
    """2026-12-24 09:00 in the organisation's zone: what the time macro shows."""
    return local(moment).strftime("%Y-%m-%d %H:%M")


def clock_time(moment: datetime) -> str:
    """18:31 in the organisation's zone: a time of today (a deadline), as the clock macro shows it."""
    return local(moment).strftime("%H:%M")


def start_of_today(now: datetime) -> datetime:
    """Midnight that began the organisation's day ``now`` falls in (as an aware UTC time)."""
    day = local(now).date()
    return datetime.combine(day, datetime.min.time(), tzinfo=organisation_zone()).astimezone(UTC)


def _locale() -> str:
    return str(get_locale() or "en")


def weekday_names() -> list[tuple[int, str]]:
    """(ISO weekday, its name) from Monday to Sunday, in the interface language, capitalised."""
    names = get_day_names("wide", context="stand-alone", locale=_locale())
    return [(day + 1, names[day][:1].upper() + names[day][1:]) for day in range(7)]


def shift_change(moment: datetime, now: datetime, zone: ZoneInfo | None = None) -> str:
    """When a shift changes, as short as it reads unambiguously: "18:00" today, "Mon 09:00" within
    the week, "2 Jan 09:00" (with the year when it is another) further off."""
    zone = zone or organisation_zone()
    at, today = moment.astimezone(zone), now.astimezone(zone)
    if at.date() == today.date():
        return at.strftime("%H:%M")
    if at - today <= WEEKDAY_AHEAD:
        return format_datetime(at, "EEE HH:mm", tzinfo=zone, locale=_locale())
    pattern = "d MMM HH:mm" if at.year == today.year else "d MMM y HH:mm"
    return format_datetime(at, pattern, tzinfo=zone, locale=_locale())


def day(value: date, today: date) -> str:
    """A day as "2 Jan" (with the year when it is not this year's)."""
    return format_date(value, "d MMM" if value.year == today.year else "d MMM y", locale=_locale())
