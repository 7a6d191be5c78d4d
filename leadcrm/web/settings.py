"""Settings page: the organisation's settings, for supervisors (today its time zone)."""

from flask import Blueprint, Response, current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue

from leadcrm import schedules
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import utcnow
from leadcrm.vocabulary import Role
from leadcrm.web.forms import TimezoneForm, required, show_domain_error
from leadcrm.web.rendering import render
from leadcrm.web.times import organisation_timezone

bp = Blueprint("settings", __name__, url_prefix="/settings")


def timezone_choices() -> list[str]:
    """Every time zone name zoneinfo knows, sorted: the datalist of the time zone fields."""
    return sorted(schedules.known_timezones())


def _page(form: TimezoneForm, status: int = 200, saved: bool = False) -> Response:
    return render(
        "settings/index.html",
        status=status,
        form=form,
        timezones=timezone_choices(),
        saved=saved,
        preset=current_app.config["LEADCRM_TIMEZONE"],
        now=utcnow(),
    )


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    form = TimezoneForm(formdata=None, data={"timezone": organisation_timezone()})
    return _page(form, saved=request.args.get("saved") == "1")


@bp.post("/")
@allow(Role.SUPERVISOR)
def save() -> ResponseReturnValue:
    """Store the organisation's time zone (schedules on it move with it: the worker recomputes them)."""
    form = TimezoneForm()
    if form.validate():
        name = required(form.timezone)
        try:
            schedules.check_timezone(name)  # before the write: a typo never waits for the write lock
            begin_write(db.session)
            schedules.set_organisation_timezone(db.session(), name)
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            return redirect(url_for(".index", saved=1))
    return _page(form, status=422)
