"""Interface language: English or Russian, from a remembered choice or the browser."""

from typing import Any

from flask import has_request_context, request
from flask_babel import gettext

from leadcrm.errors import Message

LANGUAGES = {"en": "English", "ru": "Русский"}
LANGUAGE_COOKIE = "lang"


def select_locale() -> str:
    # The JSON API answers in one language, whoever calls it: integrations
    # should not see their error texts change with a browser's settings.
    # Commands (`flask leadcrm ...`) have no request: English too.
    if not has_request_context() or request.path.startswith("/api/"):
        return "en"
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES)) or "en"


def translate(text: Message | str | Any) -> str:
    """``text`` in the current request's language: a domain ``Message`` through the catalog,
    anything else (text an edge already translated, a lazy string) as ``str()`` gives it."""
    if isinstance(text, Message):
        return gettext(text.msgid, **text.params)
    return str(text)


def translate_fields(fields: dict[str, Any]) -> dict[str, str]:
    """A domain error's per-field messages, each translated."""
    return {field: translate(text) for field, text in fields.items()}
