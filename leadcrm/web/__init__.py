"""Server-rendered pages (Jinja2 + htmx). They call the same domain functions as the API."""

from flask import Flask, abort, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _

from leadcrm.auth import public
from leadcrm.i18n import LANGUAGE_COOKIE, LANGUAGES
from leadcrm.vocabulary import (
    ABSENCE_NOTE_MAX,
    IDLE_MINUTES_MAX,
    LIMIT_MAX,
    NAME_MAX,
    PASSWORD_MAX,
    PASSWORD_MIN,
    TIMEZONE_MAX,
    URL_MAX,
    USERNAME_MAX,
    WEIGHT_MAX,
    ContactStatus,
    EventReason,
    OperatorChange,
    Presence,
    Role,
    Strategy,
)
from leadcrm.web import (
    auth,
    contacts,
    inbox,
    intake,
    leads,
    load,
    operators,
    report,
    settings,
    sources,
    tokens,
    users,
    webhooks,
)
from leadcrm.web.ages import format_age, format_countdown
from leadcrm.web.rendering import local_target
from leadcrm.web.times import clock_time, organisation_timezone, sortable_time, utc_iso

BLUEPRINTS = (
    auth.bp,
    users.bp,
    tokens.bp,
    webhooks.bp,
    load.bp,
    inbox.bp,
    intake.bp,
    contacts.bp,
    leads.bp,
    operators.bp,
    sources.bp,
    report.bp,
    settings.bp,
)


def register_web(app: Flask) -> None:
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)

    @app.before_request
    def refuse_nul_characters() -> None:
        # No browser sends a NUL character in a form or a URL, and PostgreSQL
        # cannot store or search one: refuse it before any view reads it. (The
        # JSON API says the same per field, through its schemas.)
        if request.blueprint == "api":
            return
        for values in (request.args, request.form):
            if any("\x00" in key or "\x00" in value for key, value in values.items(multi=True)):
                abort(400, description=_("Text may not contain the NUL character."))

    # The vocabulary as globals, not through a context processor: macros imported
    # from _macros.html see globals, but not the context of the page that calls them.
    app.jinja_env.globals.update(
        ContactStatus=ContactStatus,
        EventReason=EventReason,
        Role=Role,
        Presence=Presence,
        OperatorChange=OperatorChange,
        IDLE_MINUTES_MAX=IDLE_MINUTES_MAX,
        Strategy=Strategy,
        NAME_MAX=NAME_MAX,
        USERNAME_MAX=USERNAME_MAX,
        URL_MAX=URL_MAX,
        PASSWORD_MIN=PASSWORD_MIN,
        PASSWORD_MAX=PASSWORD_MAX,
        LIMIT_MAX=LIMIT_MAX,
        WEIGHT_MAX=WEIGHT_MAX,
        TIMEZONE_MAX=TIMEZONE_MAX,
        ABSENCE_NOTE_MAX=ABSENCE_NOTE_MAX,
        home_for=auth.home_for,
        # Times on the organisation's clock (read once per request), and the UTC instant for <time datetime>.
        organisation_timezone=organisation_timezone,
        sortable_time=sortable_time,
        clock_time=clock_time,
        utc_iso=utc_iso,
    )

    @app.context_processor
    def interface() -> dict[str, object]:
        return {"languages": LANGUAGES, "current_language": str(get_locale())}

    app.add_template_filter(format_age, "age")
    app.add_template_filter(format_countdown, "countdown")

    @app.template_filter("percent")
    def percent(share: float) -> str:
        return f"{share * 100:.1f} %"

    @app.get("/language/<code>")
    @public
    def set_language(code: str) -> ResponseReturnValue:
        """Remember the chosen interface language and go back where the user was."""
        response = redirect(local_target(request.args.get("next"), url_for("load.index")))
        if code in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, code, max_age=365 * 24 * 3600, samesite="Lax", httponly=True)
        return response
