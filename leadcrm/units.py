"""The request's unit of work on a driver connection of its own: the hot path's transaction.

Most views work through the ORM session (``db.session``) and its
transaction. A view declared ``@on_driver_connection`` (the API's
registration) runs its unit of work on a pooled driver connection instead
(``storage.DriverTx``): the access check reads the caller's token through
it, and the view declares its write, writes and commits on it. The
connection goes back to the pool, rolled back if not committed, when the
request ends, whatever happened.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from leadcrm.extensions import db
from leadcrm.storage import DriverTx

V = TypeVar("V", bound=Callable[..., Any])
DRIVER_CONNECTION = "leadcrm_driver_connection"


def on_driver_connection(view: V) -> V:
    """Declare that ``view``'s unit of work runs on a driver connection of its own (``request_unit()``)."""
    setattr(view, DRIVER_CONNECTION, True)
    return view


def runs_on_driver_connection() -> bool:
    """Is the current request's view declared ``@on_driver_connection``?"""
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, DRIVER_CONNECTION, False))


def request_unit() -> DriverTx:
    """The request's unit of work on its driver connection, checked out of the pool on first use.

    It shares the session's settings (who acts, the drain batch): ``act_as``
    and ``limit_drains`` apply to it as to the session's transactions.
    """
    unit = g.get("leadcrm_unit")
    if unit is None:
        unit = g.leadcrm_unit = DriverTx(db.engine, db.session().info)
    return unit


def end_request_unit(_exc: BaseException | None = None) -> None:
    """Give the request's driver connection back to the pool (rolled back if not committed)."""
    unit = g.pop("leadcrm_unit", None)
    if unit is not None:
        unit.close()


def init_units(app: Flask) -> None:
    app.teardown_request(end_request_unit)
