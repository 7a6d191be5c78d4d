"""The week editor of the operator page: what it shows, what was typed in it, and its errors.

One form holds the schedule's time zone, one row per interval of the week
(``hours-<n>-weekday``, ``-start``, ``-end``) and one per absence
(``absences-<n>-from``, ``-to``, ``-note``). Its buttons are plain submits
(``action``: ``add-hours``, ``remove-hours-<n>``, ``add-absence``,
``remove-absence-<n>``, ``save``), so it works without JavaScript and by
keyboard: adding or removing a row re-renders what was typed, with focus
(``autofocus``) where the person goes next. Errors are keyed as the domain
names its fields (``timezone``, ``hours.1``, ``hours.0.start``,
``absences.0.to``), counted in the rows as shown.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

from flask_babel import gettext as _

from leadcrm.errors import InvalidInput
from leadcrm.i18n import translate
from leadcrm.schedules import Absence, Hours, Schedule, check_timezone, clock, read_clock
from leadcrm.vocabulary import ABSENCE_NOTE_MAX, ABSENCE_YEAR_MAX, ABSENCE_YEAR_MIN

# Rows of a form, as posted; three digits are more rows than a schedule may hold.
_ROW_KEY = re.compile(r"(hours|absences)-(\d{1,3})-(weekday|start|end|from|to|note)")
_REMOVE = re.compile(r"remove-(hours|absence)-(\d{1,3})")
# A domain error's field in a list: hours.1, absences.0.to
_LISTED = re.compile(r"(hours|absences)\.(\d+)(\..+)?")
# A typed time as browsers without a time input, and people, write it: 9:00, 09:00:00.
_LOOSE_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::00)?")


@dataclass
class HoursRow:
    weekday: str = "1"
    start: str = ""
    end: str = ""


@dataclass
class AbsenceRow:
    starts: str = ""
    ends: str = ""
    note: str = ""


@dataclass
class ScheduleEditor:
    """The editor as shown: every value as text (what was typed stays), errors by field, where focus goes."""

    timezone: str = ""
    hours: list[HoursRow] = field(default_factory=list)
    absences: list[AbsenceRow] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    focus: str | None = None  # the id of the element to focus when the page comes back

    @classmethod
    def of(cls, schedule: Schedule) -> "ScheduleEditor":
        return cls(
            timezone=schedule.timezone or "",
            hours=[HoursRow(str(h.weekday), clock(h.starts), clock(h.ends % (24 * 60))) for h in schedule.hours],
            absences=[
                AbsenceRow(a.starts_on.isoformat(), a.ends_on.isoformat(), a.note or "") for a in schedule.absences
            ],
        )

    @classmethod
    def posted(cls, form: Mapping[str, str]) -> "ScheduleEditor":
        """The editor as the browser sent it: rows in the order of their numbers, renumbered from 0."""
        rows: dict[str, dict[int, dict[str, str]]] = {"hours": {}, "absences": {}}
        for key, value in form.items():
            match = _ROW_KEY.fullmatch(key)
            if match:
                rows[match[1]].setdefault(int(match[2]), {})[match[3]] = value
        return cls(
            timezone=form.get("timezone", "").strip(),
            hours=[
                HoursRow(row.get("weekday", ""), row.get("start", "").strip(), row.get("end", "").strip())
                for _, row in sorted(rows["hours"].items())
            ],
            absences=[
                AbsenceRow(row.get("from", "").strip(), row.get("to", "").strip(), row.get("note", "").strip())
                for _, row in sorted(rows["absences"].items())
            ],
        )

    # --- the buttons that change the rows -----------------------------------------------

    def add_hours(self) -> None:
        """A new interval: the day after the last one's, at its times (Monday 09:00-18:00 for the first)."""
        last = self.hours[-1] if self.hours else None
        weekday = int(last.weekday) % 7 + 1 if last and last.weekday in _WEEKDAYS else 1
        self.hours.append(HoursRow(str(weekday), last.start if last else "09:00", last.end if last else "18:00"))
        self.focus = f"hours-{len(self.hours) - 1}-weekday"

    def add_absence(self) -> None:
        self.absences.append(AbsenceRow())
        self.focus = f"absences-{len(self.absences) - 1}-from"

    def remove(self, kind: str, index: int) -> None:
        """Remove a row (``kind``: hours or absence); focus goes to the Remove button now in its place,
        else the one before, else to Add."""
        rows: list[HoursRow] | list[AbsenceRow] = self.hours if kind == "hours" else self.absences
        if index < len(rows):
            del rows[index]
        if rows:
            self.focus = f"remove-{kind}-{min(index, len(rows) - 1)}"
        else:
            self.focus = f"add-{kind}"

    def act(self, action: str) -> bool:
        """Do what a row button asks; False when the action is to save."""
        if action == "add-hours":
            self.add_hours()
        elif action == "add-absence":
            self.add_absence()
        elif match := _REMOVE.fullmatch(action):
            self.remove(match[1], int(match[2]))
        else:
            return False
        return True

    # --- reading it into a schedule -----------------------------------------------------

    def read(self) -> tuple[str | None, list[Hours], list[Absence], list[int], list[int]] | None:
        """The schedule typed, or None with ``errors`` filled in (every field's at once).

        Blank rows (an interval with neither time, an absence with nothing typed) are left out; the
        two lists of numbers say which row each interval and absence came from.
        """
        errors: dict[str, str] = {}
        timezone = self.timezone or None
        if timezone is not None:
            try:
                check_timezone(timezone)
            except InvalidInput as exc:
                errors["timezone"] = translate(exc.fields.get("timezone", exc.message))
        hours, hours_rows = self._read_hours(errors)
        absences, absence_rows = self._read_absences(errors)
        if errors:
            self.fail(errors)
            return None
        return timezone, hours, absences, hours_rows, absence_rows

    def _read_hours(self, errors: dict[str, str]) -> tuple[list[Hours], list[int]]:
        hours: list[Hours] = []
        rows: list[int] = []
        for n, row in enumerate(self.hours):
            if not row.start and not row.end:
                continue
            if row.weekday not in _WEEKDAYS:
                errors[f"hours.{n}.weekday"] = _("Choose a day of the week.")
            starts = read_clock(_tidy_clock(row.start), end=False)
            ends = read_clock(_tidy_clock(row.end), end=True)
            if starts is None:
                errors[f"hours.{n}.start"] = _("A time from 00:00 to 23:59, such as 09:00.")
            if ends is None:
                errors[f"hours.{n}.end"] = _("A time from 00:00 to 24:00, such as 18:00 (00:00 is midnight).")
            elif starts == ends:
                errors[f"hours.{n}.end"] = _("The interval is empty: it ends when it starts.")
            if row.weekday in _WEEKDAYS and starts is not None and ends is not None and starts != ends:
                hours.append(Hours(int(row.weekday), starts, ends))
                rows.append(n)
        return hours, rows

    def _read_absences(self, errors: dict[str, str]) -> tuple[list[Absence], list[int]]:
        absences: list[Absence] = []
        rows: list[int] = []
        for n, row in enumerate(self.absences):
            if not row.starts and not row.ends and not row.note:
                continue
            starts_on, ends_on = _read_day(row.starts), _read_day(row.ends)
            for name, typed, day in (("from", row.starts, starts_on), ("to", row.ends, ends_on)):
                if day is None:
                    errors[f"absences.{n}.{name}"] = (
                        _("Enter the day, such as 2026-12-24.")
                        if not typed
                        else _(
                            "A day from %(first)s to %(last)s, such as 2026-12-24.",
                            first=f"{ABSENCE_YEAR_MIN}-01-01",
                            last=f"{ABSENCE_YEAR_MAX}-12-31",
                        )
                    )
            if len(row.note) > ABSENCE_NOTE_MAX:
                errors[f"absences.{n}.note"] = _("At most %(max)s characters.", max=ABSENCE_NOTE_MAX)
            elif starts_on is not None and ends_on is not None:
                absences.append(Absence(starts_on, ends_on, row.note or None))
                rows.append(n)
        return absences, rows

    def refused(self, refusals: list[InvalidInput], hours_rows: list[int], absence_rows: list[int]) -> None:
        """Show what the domain refused next to the row or field it names (counted in the rows shown)."""
        errors: dict[str, str] = {}
        known = self.known_fields()
        for exc in refusals:
            for name, message in exc.fields.items():
                match = _LISTED.fullmatch(name)
                rows = hours_rows if match and match[1] == "hours" else absence_rows
                if match and int(match[2]) < len(rows):
                    name = f"{match[1]}.{rows[int(match[2])]}{match[3] or ''}"
                errors[name if name in known else "form"] = translate(message)
            if not exc.fields:
                errors["form"] = translate(exc.message)
        self.fail(errors)

    def fail(self, errors: dict[str, str]) -> None:
        self.errors = errors
        # Focus on the first field in error, in the order of the page.
        for name in self.known_fields():
            if name in errors:
                self.focus = _element_of(name)
                return

    def known_fields(self) -> list[str]:
        """Every field an error may name, in the order of the page."""
        names = ["timezone", "hours"]
        for n in range(len(self.hours)):
            names += [f"hours.{n}", f"hours.{n}.weekday", f"hours.{n}.start", f"hours.{n}.end"]
        names.append("absences")
        for n in range(len(self.absences)):
            names += [f"absences.{n}", f"absences.{n}.from", f"absences.{n}.to", f"absences.{n}.note"]
        return names


_WEEKDAYS = {str(day) for day in range(1, 8)}


def _tidy_clock(text: str) -> str:
    """09:00 from 9:00 or 09:00:00 (what some browsers and people send); anything else as typed."""
    match = _LOOSE_CLOCK.fullmatch(text)
    return f"{int(match[1]):02d}:{match[2]}" if match else text


def _read_day(text: str) -> date | None:
    """A day as a date input sends it (2026-12-24), within the years absences are kept for."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if ABSENCE_YEAR_MIN <= day.year <= ABSENCE_YEAR_MAX else None


def _element_of(name: str) -> str:
    """The id of the element an error is shown at: hours.1 -> the row's day, hours.0.start -> its start."""
    if name == "hours":
        return "add-hours"
    if name == "absences":
        return "add-absence"
    parts = name.split(".")
    if len(parts) == 2:
        parts.append("weekday" if parts[0] == "hours" else "from")
    return "-".join(parts)
