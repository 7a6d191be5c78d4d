"""Operators page: list, create, and change limit or active state in place."""

from typing import Any

from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue

from leadcrm import operators as domain
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import Operator
from leadcrm.vocabulary import Role
from leadcrm.web.forms import OperatorForm, OperatorLimitForm, required, show_domain_error
from leadcrm.web.rendering import changed, is_htmx, render

bp = Blueprint("operators", __name__, url_prefix="/operators")


def _page(form: OperatorForm, status: int = 200, **context: Any) -> Response:
    operators = db.session.scalars(domain.list_operators_query()).all()
    return render(
        "operators/index.html", block="operators_section", status=status, form=form, operators=operators, **context
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
    """One change from a row: a new limit, or the active toggle (``is_active`` = 1 / 0)."""
    operator = db.get_or_404(Operator, operator_id)
    form = OperatorLimitForm()
    if "is_active" in request.form:
        begin_write(db.session)
        updated = domain.update_operator(db.session(), operator.id, {"is_active": request.form["is_active"] == "1"})
    elif form.validate():
        begin_write(db.session)
        updated = domain.update_operator(db.session(), operator.id, {"max_active_leads": form.max_active_leads.data})
    else:
        # The row shows the error next to the limit, with what was typed.
        invalid = {"row_form": form, "row_form_for": operator.id}
        if is_htmx():
            return render("operators/index.html", block="operator_row", status=422, operator=operator, **invalid)
        return _page(OperatorForm(formdata=None), status=422, **invalid)
    db.session.commit()
    if not is_htmx():
        return redirect(url_for(".index"))
    return changed(render("operators/index.html", block="operator_row", operator=updated), "operators-changed")
