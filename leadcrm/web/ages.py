"""How old something is, as the pages say it: one formatter for every age shown; and the time left
to take an offer, as its countdown shows it.

An age is said in its largest whole unit, rounded down, so one age always
reads the same ("1 minute" from 60 to 119 seconds, never "60 seconds"), and
with the language's plural forms (Russian has three). The words are the ones
a sentence around them needs: in Russian the accusative, as in "ждёт 1
минуту" or "1 минуту назад".
"""

import math
from datetime import datetime, timedelta

from flask_babel import ngettext

MINUTE, HOUR, DAY = 60, 3600, 86400


def format_age(age: timedelta) -> str:
    """``age`` as "59 seconds", "1 minute", "21 minutes", "22 hours", "2 days" in the current language.

    A negative age (clocks of two servers a moment apart) reads as 0 seconds.
    """
    seconds = max(int(age.total_seconds()), 0)
    if seconds < MINUTE:
        return ngettext("%(num)s second", "%(num)s seconds", seconds)
    if seconds < HOUR:
        return ngettext("%(num)s minute", "%(num)s minutes", seconds // MINUTE)
    if seconds < DAY:
        return ngettext("%(num)s hour", "%(num)s hours", seconds // HOUR)
    return ngettext("%(num)s day", "%(num)s days", seconds // DAY)


def milliseconds_left(until: datetime, now: datetime) -> int:
    """Milliseconds from ``now`` to ``until``, never below 0: what a countdown starts from (to the
    millisecond, so that the browser's count and the next answer's agree on when a second ends)."""
    return max(math.ceil((until - now) / timedelta(milliseconds=1)), 0)


def seconds_of(milliseconds: int) -> int:
    """The whole seconds a countdown shows for ``milliseconds`` left: rounded up, so 0:01 until the very end."""
    return math.ceil(milliseconds / 1000)


def format_countdown(seconds: int) -> str:
    """Time left as a countdown shows it, "0:28", "4:05", "1:00:00": digits, the same in every language
    (static/app.js counts down in the same form)."""
    hours, rest = divmod(max(seconds, 0), HOUR)
    minutes, seconds = divmod(rest, MINUTE)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"
