"""Every error answer of the app, in one place: JSON on the API, the app's own page everywhere else.

Nothing else renders an error. Domain code raises ``DomainError`` subclasses,
the access check (``leadcrm.auth``) raises ``LoginRequired`` and werkzeug's
``Forbidden``, views and werkzeug raise ``HTTPException`` (400, 404, 405, 413,
415), Flask-WTF raises ``CSRFError``, pydantic ``ValidationError``, and the
database ``OperationalError`` or ``InterfaceError`` when it is busy or gone.
Each handler below turns its exception into an ``ErrorAnswer`` (status, stable
code, message, fields, headers); ``answer()`` then renders it once, as JSON
(``wants_json()``) or as templates/errors/error.html.

It lives in ``web/`` beside the pages it shares base.html, the navigation and
``render()`` with, and is registered by the app factory (``register_error_handlers``)
because it answers for every blueprint, the API included.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Flask, Response, current_app, make_response, request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Response as BaseResponse

from leadcrm.accounts import LoginThrottled
from leadcrm.auth import LoginRequired
from leadcrm.database import UndeclaredWrite, write_refused_as_undeclared
from leadcrm.errors import Conflict, DomainError, InvalidInput, NotFound
from leadcrm.extensions import db
from leadcrm.i18n import translate
from leadcrm.vocabulary import Role
from leadcrm.web.rendering import is_htmx, local_target, render

# Everything under this path is the JSON API (its docs page is /docs).
API_PREFIX = "/api/"
# How long a client should wait before sending a request again after a 503.
RETRY_AFTER_SECONDS = "1"
# Headers of an HTTPException that belong in any answer to it (405's Allow, 401's challenge).
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (LoginThrottled, 429),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
]


@dataclass(frozen=True)
class ErrorAnswer:
    """What an error answers, before it is JSON or a page. ``message`` and ``fields``' values are
    messages (text, or translatable: see ``message_text``)."""

    status: int
    code: str
    message: object
    fields: Mapping[str, object] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    # The page's own words, when the message alone would not do (werkzeug's English default descriptions).
    page_message: object | None = None


def wants_json() -> bool:
    """The one decision: the JSON API gets JSON, every other URL an HTML page (also for a 404 or 405,
    where no view and so no blueprint was found, hence the path)."""
    return request.path.startswith(API_PREFIX)


def message_text(message: object) -> str:
    """A message as text in the reader's language (pages: the interface language; the API: English)."""
    return translate(message)


def answer(error: ErrorAnswer, *, without_database: bool = False) -> Response:
    """``error`` as the API's JSON or as the app's own error page."""
    if wants_json():
        body: dict[str, Any] = {"code": error.code, "message": message_text(error.message)}
        if error.fields:
            body["fields"] = {path: message_text(text) for path, text in error.fields.items()}
        response = make_response({"error": body}, error.status)
    else:
        response = _page(error, without_database)
    response.headers.update(error.headers)
    return response


# Per status: the page's title and the line that says what to do.
PAGE_TEXTS: dict[int, tuple[Any, Any]] = {
    400: (_l("This request could not be understood"), _l("Nothing was saved. Go back and try again.")),
    401: (_l("Log in first"), _l("This page is for logged-in users.")),
    403: (_l("Not allowed"), _l("Ask a supervisor if you need this.")),
    404: (_l("Not found"), _l("The address may be mistyped, or what it showed no longer exists.")),
    405: (_l("Not possible here"), _l("This address does not take this kind of request.")),
    409: (_l("Changed meanwhile"), _l("Nothing was saved. Look again and repeat what you did.")),
    413: (_l("Too large"), _l("What was sent is larger than the server accepts. Nothing was saved.")),
    415: (_l("Not understood"), _l("What was sent is in a form this address does not take. Nothing was saved.")),
    422: (_l("This cannot be saved"), _l("Nothing was saved. Go back, correct it and send it again.")),
    429: (_l("Too many attempts"), _l("Wait a little, then try again.")),
    500: (
        _l("Something went wrong"),
        _l("Something went wrong on our side; it is logged. Try again, or tell your administrator what you did."),
    ),
    503: (
        _l("Try again in a moment"),
        _l(
            "The database is busy or was briefly unreachable, so nothing was saved. "
            "Reload the page or send the form again in a moment."
        ),
    ),
}
CSRF_TEXTS = (
    _l("This form could not be accepted"),
    _l(
        "The page was open too long or came from elsewhere, so its security token did not match. "
        "Nothing was saved. Go back, reload the page and send it again."
    ),
)


def _page(error: ErrorAnswer, without_database: bool) -> Response:
    title, hint = CSRF_TEXTS if error.code == "csrf_failed" else PAGE_TEXTS.get(error.status, PAGE_TEXTS[500])
    if error.status == 403 and not without_database and current_user.is_authenticated:
        if current_user.role == Role.SUPERVISOR:
            hint = _l("This page is for another role's work (the inbox, for one, is an operator user's).")
    message = error.page_message if error.page_message is not None else error.message
    return render(
        "errors/error.html",
        block="error",  # htmx swaps a 422 into the page: only the message, not a second page inside it
        status=error.status,
        error_code=error.code,
        title=title,
        hint=hint,
        message=message_text(message) if message else None,
        fields=[message_text(text) for text in error.fields.values()],
        back=_back_link(),
        # The navigation loads the user: not from a database that is down or in a failed transaction.
        without_database=without_database,
    )


def _back_link() -> tuple[str, Any]:
    """Where the page's link goes: back where the user came from on this site, else the load table
    (which sends an operator user on to its inbox)."""
    home = url_for("load.index")
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and (referrer.path, referrer.query) != (
        request.path,
        request.query_string.decode(),
    ):
        target = local_target(referrer.path + (f"?{referrer.query}" if referrer.query else ""), home)
        if target != home:
            return target, _l("Back")
    return home, _l("Back to the load table")


def _http_answer(exc: HTTPException) -> ErrorAnswer:
    status = exc.code or 500
    headers = {name: value for name, value in exc.get_headers() if name in KEPT_HEADERS}
    message = exc.description or exc.name
    # werkzeug's own descriptions are English and generic: a page says it in its own words.
    default = message == type(exc).description
    return ErrorAnswer(
        status,
        (exc.name or "error").lower().replace(" ", "_"),
        message,
        headers=headers,
        page_message="" if default else None,
    )


def _roll_back() -> None:
    """End the request's failed transaction; on a lost connection this only discards it."""
    try:
        db.session.rollback()
    except sa.exc.DBAPIError:
        db.session().invalidate()


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError) -> Response:
        status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LoginThrottled) else {}
        return answer(ErrorAnswer(status, exc.code, exc.message, exc.fields, headers))

    @app.errorhandler(ValidationError)
    def invalid_body(exc: ValidationError) -> Response:
        return answer(ErrorAnswer(422, "validation_error", _l("The request is not valid."), validation_fields(exc)))

    @app.errorhandler(sa.exc.DBAPIError)
    def database_error(exc: sa.exc.DBAPIError) -> Response:
        _roll_back()
        if write_refused_as_undeclared(exc):
            # Not the database's fault: a view wrote without begin_write(). A 500, and loud in tests.
            raise UndeclaredWrite(request.endpoint) from exc
        if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            raise exc  # a constraint or a statement of ours that is wrong: a bug, answered 500
        # The database is busy, unreachable, or dropped our connection: the
        # request wrote nothing and can be sent again.
        current_app.logger.warning("database unavailable: %s", exc.orig)
        unavailable = ErrorAnswer(
            503,
            "database_unavailable",
            "The database is busy; try again.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
            page_message="",
        )
        return answer(unavailable, without_database=True)

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Response:
        return answer(ErrorAnswer(400, "csrf_failed", exc.description, page_message=""))

    @app.errorhandler(LoginRequired)
    def login_required(exc: LoginRequired) -> BaseResponse:
        if wants_json():
            return answer(_http_answer(exc))
        response: BaseResponse
        if is_htmx():
            # htmx follows HX-Redirect with a full page load.
            response = Response(status=401, headers={"HX-Redirect": exc.login_url})
        else:
            response = current_app.redirect(exc.login_url)
        response.vary.add("HX-Request")
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return answer(_http_answer(exc))

    @app.errorhandler(InternalServerError)
    def internal_error(_exc: InternalServerError) -> Response:
        _roll_back()
        failed = ErrorAnswer(500, "internal_error", "Something went wrong on our side; it is logged.", page_message="")
        return answer(failed, without_database=True)


def validation_fields(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors as {"a.0.b": "message"}; errors about the whole body under "body"."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(path, err["msg"])
    return fields
