"""Intake: the form staff use all day to register contacts that come by phone or in person."""

from typing import Any

from flask import Blueprint, Response, current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue
from wtforms.fields.choices import SelectChoice  # type: ignore[attr-defined]  # new in WTForms 3.3; types-WTForms is 3.2

from leadcrm import distribution
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.identity import parse_identity
from leadcrm.models import Contact, Lead, Operator
from leadcrm.sources import find_source, list_sources_query
from leadcrm.vocabulary import INT_MAX, Role
from leadcrm.web.forms import IntakeForm, show_domain_error
from leadcrm.web.rendering import changed, is_htmx, render

bp = Blueprint("intake", __name__, url_prefix="/intake")


def _form(formdata: object = None, source_id: int | None = None) -> IntakeForm:
    """The intake form; ``formdata`` None gives an empty one (not the request's)."""
    form = IntakeForm(formdata=formdata)
    form.source_id.choices = [SelectChoice(s.id, s.name) for s in db.session.scalars(list_sources_query())]
    if source_id is not None:
        form.source_id.data = source_id
    return form


def _page(form: IntakeForm, status: int = 200, **result: Any) -> Response:
    return render("intake/index.html", block="intake", status=status, form=form, **result)


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE)
def index() -> ResponseReturnValue:
    """The empty form; after a registration without JavaScript, also its result card."""
    result: dict[str, Any] = {}
    contact_id = request.args.get("registered", type=int)
    contact = db.session.get(Contact, contact_id) if contact_id and 0 < contact_id <= INT_MAX else None
    if contact is not None:
        result = {
            "contact": contact,
            "lead": db.session.get(Lead, contact.lead_id),
            "operator": db.session.get(Operator, contact.operator_id) if contact.operator_id else None,
            "lead_created": request.args.get("new") == "1",
        }
    return _page(_form(source_id=contact.source_id if contact else None), **result)


@bp.post("/")
@allow(Role.SUPERVISOR, Role.INTAKE)
def register() -> ResponseReturnValue:
    form = _form(request.form)
    if form.validate():
        try:
            identity = parse_identity(
                external_id=form.external_id.data,
                phone=form.phone.data,
                email=form.email.data,
                region=current_app.config["LEADCRM_PHONE_REGION"],
            )
            begin_write(db.session)  # the form and the identity are valid: now the lock
            registration = distribution.register_contact(
                db.session(),
                source=find_source(db.session(), source_id=form.source_id.data, source_name=None),
                identity=identity,
                name=form.name.data or None,
                message=(form.message.data or "").strip() or None,
            )
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            if not is_htmx():
                new = "1" if registration.lead_created else "0"
                return redirect(url_for(".index", registered=registration.contact.id, new=new))
            # A fresh form for the next entry; the source stays chosen.
            return changed(
                _page(
                    _form(source_id=form.source_id.data),
                    contact=registration.contact,
                    lead=registration.lead,
                    operator=registration.operator,
                    lead_created=registration.lead_created,
                )
            )
    return _page(form, status=422)
