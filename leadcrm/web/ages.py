"""How old something is, as the pages say it: one formatter for every age shown.

An age is said in its largest whole unit, rounded down, so one age always
reads the same ("1 minute" from 60 to 119 seconds, never "60 seconds"), and
with the language's plural forms (Russian has three). The words are the ones
a sentence around them needs: in Russian the accusative, as in "ждёт 1
минуту" or "1 минуту назад".
"""

from datetime import timedelta

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
