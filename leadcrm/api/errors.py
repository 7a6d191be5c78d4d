"""One error shape for the whole JSON API: {"error": {"code", "message", "fields"?}}."""

from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError, default_exceptions

from leadcrm.errors import Conflict, DomainError, InvalidInput, NotFound
from leadcrm.extensions import db
from leadcrm.i18n import translate, translate_fields
from leadcrm.web.rendering import render

# How long a client should wait before sending a request again after a 503.
RETRY_AFTER_SECONDS = "1"

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
]


def error_response(
    status: int, code: str, message: Any, fields: dict[str, Any] | None = None
) -> tuple[dict[str, Any], int]:
    body: dict[str, Any] = {"code": code, "message": translate(message)}
    if fields:
        body["fields"] = translate_fields(fields)
    return {"error": body}, status


def validation_fields(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors as {"a.0.b": "message"}; errors about the whole body under "body"."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(path, err["msg"])
    return fields


def _is_api_request() -> bool:
    return request.path.startswith("/api/")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError) -> Any:
        status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 400)
        if not _is_api_request():
            # A page: the plain HTML error page for that status.
            return default_exceptions[status](description=translate(exc.message))
        return error_response(status, exc.code, exc.message, exc.fields)

    @app.errorhandler(ValidationError)
    def invalid_body(exc: ValidationError) -> Any:
        return error_response(422, "validation_error", "The request is not valid.", validation_fields(exc))

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    def database_unavailable(exc: sa.exc.DBAPIError) -> Any:
        # The database is busy, unreachable, or dropped our connection: the
        # request wrote nothing and can be sent again.
        current_app.logger.warning("database unavailable: %s", exc.orig)
        try:
            # End the failed transaction now; on a lost connection this only discards it.
            db.session.rollback()
        except sa.exc.DBAPIError:
            db.session().invalidate()
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
        if not _is_api_request():
            page = render("errors/unavailable.html", status=503, without_database=True)
            page.headers.update(headers)
            return page
        body, status = error_response(503, "database_unavailable", "The database is busy; try again.")
        return body, status, headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if not _is_api_request():
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        response = exc.get_response()
        body, status = error_response(exc.code or 500, code, exc.description or exc.name)
        headers = {k: v for k, v in response.headers.items() if k in ("Allow", "Retry-After")}
        return body, status, headers

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError) -> Any:
        if not _is_api_request():
            return exc
        return error_response(500, "internal_error", "Something went wrong on our side; it is logged.")
