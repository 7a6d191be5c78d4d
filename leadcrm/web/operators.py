"""Operators page: list, create, and change limit, idle setting, presence or active state in place."""

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue

from leadcrm import operators as domain
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import Operator, User, utcnow
from leadcrm.vocabulary import Role
from leadcrm.web.forms import OperatorForm, OperatorIdleForm, OperatorLimitForm, required, show_domain_error
from leadcrm.web.rendering import changed, is_htmx, local_target, render

bp = Blueprint("operators", __name__, url_prefix="/operators")

# How many of its latest changes each row shows.
HISTORY_SHOWN = 5


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
