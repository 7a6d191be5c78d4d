"""Operators page: list, create, and change limit, idle setting, presence or active state in place;
each operator's own page with its shift, its week editor and absences, and its history."""

from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from leadcrm import operators as domain
from leadcrm import schedules
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError, InvalidInput
from leadcrm.extensions import db
from leadcrm.models import Operator, OperatorHours, User, utcnow
from leadcrm.queries import next_shift_change
from leadcrm.storage import is_on_shift
from leadcrm.vocabulary import Role
from leadcrm.web import times
from leadcrm.web.forms import OperatorForm, OperatorIdleForm, OperatorLimitForm, required, show_domain_error
from leadcrm.web.rendering import changed, is_htmx, local_target, render
from leadcrm.web.schedule_editor import ScheduleEditor
from leadcrm.web.settings import timezone_choices

bp = Blueprint("operators", __name__, url_prefix="/operators")

# How many of its latest changes each row shows, and the operator's own page.
HISTORY_SHOWN = 5
HISTORY_ON_PAGE = 50


def _rows_context(operator_ids: list[int]) -> dict[str, Any]:
    """What the rows show besides the operator: its linked user's name and its latest changes."""
    users = db.session.execute(
        sa.select(User.operator_id, User.username).where(User.operator_id.in_(operator_ids))
    ).all()
    return {
        "users_of": {operator_id: username for operator_id, username in users},
        "histories": domain.histories(db.session(), operator_ids, HISTORY_SHOWN),
        "now": utcnow(),
    }


def _page(form: OperatorForm, status: int = 200, **context: Any) -> Response:
    operators = db.session.scalars(domain.list_operators_query()).all()
    return render(
        "operators/index.html",
        block="operators_section",
        status=status,
        form=form,
        operators=operators,
        **_rows_context([op.id for op in operators]),
        **context,
    )


def _row(operator: Any, status: int = 200, **context: Any) -> Response:
    """One row, for htmx (``operator``: the ORM operator or the record update_operator returned)."""
    return render(
        "operators/index.html",
        block="operator_row",
        status=status,
        operator=operator,
        **_rows_context([operator.id]),
        **context,
    )


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    return _page(OperatorForm())


@bp.post("/")
@allow(Role.SUPERVISOR)
def create() -> ResponseReturnValue:
    form = OperatorForm()
    if form.validate():
        try:
            begin_write(db.session)
            domain.create_operator(
                db.session(),
                name=required(form.name),
                max_active_leads=required(form.max_active_leads),
                is_active=form.is_active.data,
            )
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            if not is_htmx():
                return redirect(url_for(".index"))
            return changed(_page(OperatorForm(formdata=None)), "operators-changed")
    return _page(form, status=422)


@bp.post("/<id:operator_id>")
@allow(Role.SUPERVISOR)
def update(operator_id: int) -> ResponseReturnValue:
    """One change from a row (or the load table): the active toggle (``is_active`` = 1 / 0), the presence
    toggle (``presence`` = available / away), the idle setting (``idle_away_minutes``, empty: off) or a new limit.

    Without htmx the answer redirects to ``next`` when it is a path of this site, else to this page.
    """
    operator = db.get_or_404(Operator, operator_id)
    changes: dict[str, Any] | None = None
    invalid: dict[str, Any] = {}
    if "is_active" in request.form:
        changes = {"is_active": request.form["is_active"] == "1"}
    elif "presence" in request.form:
        changes = {"presence": request.form["presence"]}  # the domain refuses an unknown one (422)
    elif "idle_away_minutes" in request.form:
        idle_form = OperatorIdleForm()
        if idle_form.validate():
            changes = {"idle_away_minutes": idle_form.idle_away_minutes.data}
        else:
            invalid = {"idle_form": idle_form, "row_form_for": operator.id}
    else:
        form = OperatorLimitForm()
        if form.validate():
            changes = {"max_active_leads": form.max_active_leads.data}
        else:
            invalid = {"row_form": form, "row_form_for": operator.id}
    if changes is None:
        # The row shows the error next to the field, with what was typed.
        if is_htmx():
            return _row(operator, status=422, **invalid)
        return _page(OperatorForm(formdata=None), status=422, **invalid)
    begin_write(db.session)
    updated = domain.update_operator(db.session(), operator.id, changes)
    db.session.commit()
    if not is_htmx():
        return redirect(local_target(request.form.get("next"), url_for(".index")))
    return changed(_row(updated), "operators-changed")


def shift_sentence(operator: Operator) -> str:
    """Whether the operator is on shift now (as the claims decide, from its stored stretch) and until when."""
    now = utcnow()
    on = is_on_shift(operator.shift_from, operator.shift_until, now)
    change = next_shift_change(operator.shift_from, operator.shift_until, now)
    if change is None:
        return _("On shift") if on else _("Off shift")
    at = times.shift_change(change, now)
    if operator.timezone and operator.timezone != times.organisation_timezone():
        # The hours were typed on the operator's clock: that moment on it too.
        own = times.shift_change(change, now, ZoneInfo(operator.timezone))
        at = _("%(time)s (%(own)s in %(zone)s)", time=at, own=own, zone=operator.timezone)
    return _("On shift until %(time)s", time=at) if on else _("Off shift until %(time)s", time=at)


def _detail(operator: Operator, editor: ScheduleEditor, status: int = 200, saved: bool = False) -> Response:
    return render(
        "operators/detail.html",
        status=status,
        operator=operator,
        editor=editor,
        saved=saved,
        shift=shift_sentence(operator),
        has_hours=db.session.scalar(sa.select(sa.exists().where(OperatorHours.operator_id == operator.id))),
        weekdays=times.weekday_names(),
        timezones=timezone_choices(),
        history=domain.history(db.session(), operator.id, HISTORY_ON_PAGE),
        user=db.session.scalar(sa.select(User.username).where(User.operator_id == operator.id)),
    )


@bp.get("/<id:operator_id>")
@allow(Role.SUPERVISOR)
def detail(operator_id: int) -> ResponseReturnValue:
    """The operator's page: its shift now, the week editor, absences and history."""
    operator = db.get_or_404(Operator, operator_id)
    editor = ScheduleEditor.of(schedules.get_schedule(db.session(), operator.id))
    return _detail(operator, editor, saved=request.args.get("saved") == "1")


@bp.get("/<id:operator_id>/schedule")
@allow(Role.SUPERVISOR)
def schedule(operator_id: int) -> ResponseReturnValue:
    """The address the editor's buttons post to, asked for again (a reload, the language switch): its page."""
    return redirect(url_for(".detail", operator_id=operator_id))


@bp.post("/<id:operator_id>/schedule")
@allow(Role.SUPERVISOR)
def save_schedule(operator_id: int) -> ResponseReturnValue:
    """The week editor's buttons: add or remove a row (the form comes back with what was typed), or save
    the whole schedule (time zone, intervals, absences) at once."""
    operator = db.get_or_404(Operator, operator_id)
    editor = ScheduleEditor.posted(request.form)
    if editor.act(request.form.get("action", "save")):
        return _detail(operator, editor)
    typed = editor.read()
    if typed is None:
        return _detail(operator, editor, status=422)
    timezone, hours, absences, hours_rows, absence_rows = typed
    # Checked before the write (replace_schedule checks again), each list on its own: both lists' errors show at once.
    refusals: list[InvalidInput] = []
    try:
        schedules.check_hours(hours)
    except InvalidInput as exc:
        refusals.append(exc)
    try:
        schedules.check_absences(absences)
    except InvalidInput as exc:
        refusals.append(exc)
    if refusals:
        editor.refused(refusals, hours_rows, absence_rows)
        return _detail(operator, editor, status=422)
    try:
        begin_write(db.session)
        schedules.replace_schedule(
            db.session(),
            operator.id,
            timezone=timezone,
            hours=hours,
            absences=absences,
            organisation=times.organisation_timezone(),
        )
    except InvalidInput as exc:
        db.session.rollback()
        editor.refused([exc], hours_rows, absence_rows)
        return _detail(operator, editor, status=422)
    db.session.commit()
    return redirect(url_for(".detail", operator_id=operator.id, saved=1))
