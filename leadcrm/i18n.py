"""Interface language: English or Russian, from a remembered choice or the browser."""

from flask import has_request_context, request

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
