"""The organisation's settings: its time zone."""

from typing import Any

from flask import current_app

from leadcrm import schedules
from leadcrm.api import bp
from leadcrm.api.http import Response, json_body, parse
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import SettingsIn, SettingsOut
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.vocabulary import Role


def _settings_answer() -> dict[str, Any]:
    session = db.session()
    answer = SettingsOut(
        timezone=schedules.organisation_timezone(session, current_app.config["LEADCRM_TIMEZONE"]),
        timezone_set=schedules.organisation_timezone_is_set(session),
    )
    return answer.model_dump(mode="json")


@bp.get("/settings")
@allow(Role.SUPERVISOR)
@operation("getSettings", Answer("The settings.", SettingsOut))
def get_settings() -> Response:
    """The organisation's settings: its time zone, and whether it was set or preset by the server."""
    return _settings_answer()


@bp.put("/settings")
@allow(Role.SUPERVISOR)
@operation("replaceSettings", Answer("The settings as stored.", SettingsOut), body=SettingsIn)
def replace_settings() -> Response:
    """Set the organisation's time zone.

    Schedules without a zone of their own are read in it: the worker recomputes their stretches on shift
    at once.
    """
    body = parse(SettingsIn, json_body())
    schedules.check_timezone(body.timezone)
    begin_write(db.session)
    schedules.set_organisation_timezone(db.session(), body.timezone)
    db.session.commit()
    return _settings_answer()
