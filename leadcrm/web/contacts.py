"""Contacts: a filterable list, newest first; close with one click."""

from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from pydantic import ValidationError
from werkzeug.wrappers import Response as BaseResponse

from leadcrm import distribution, queries
from leadcrm.api.schemas import ContactFilter
from leadcrm.auth import allow, can, check_own_contact, others_summary_ids, own_operator_id
from leadcrm.database import begin_write
from leadcrm.errors import DomainError, InvalidInput
from leadcrm.extensions import db
from leadcrm.i18n import translate
from leadcrm.models import Contact
from leadcrm.operators import list_operators_query
from leadcrm.sources import list_sources_query
from leadcrm.vocabulary import INT_MAX, PER_PAGE, Role
from leadcrm.web import inbox
from leadcrm.web.rendering import changed, is_htmx, local_target, render

bp = Blueprint("contacts", __name__, url_prefix="/contacts")


def read_filters() -> ContactFilter:
    """The list's filters from the query string; anything unreadable is ignored."""
    args = {k: v for k, v in request.args.items() if v != ""}
    try:
        return ContactFilter.model_validate({**args, "per_page": PER_PAGE})
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        return ContactFilter.model_validate({k: v for k, v in args.items() if k not in bad} | {"per_page": PER_PAGE})


def _list_page(status: int = 200, bulk_error: str | None = None) -> Response:
    filters = read_filters()
    query = queries.contacts_query(**filters.model_dump(exclude={"page", "per_page"}))
    page = db.paginate(query, page=filters.page, per_page=PER_PAGE, error_out=False)
    args = {k: v for k, v in filters.model_dump(exclude={"page", "per_page"}).items() if v is not None}
    return render(
        "contacts/index.html",
        block="contacts_list",
        status=status,
        page=page,
        filters=filters,
        filter_args=args,
        bulk_error=bulk_error,
        source_choices=db.session.scalars(list_sources_query()).all(),
        operator_choices=db.session.scalars(list_operators_query()).all(),
        **queries.names_for(db.session(), list(page.items)),
    )


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE)
def index() -> ResponseReturnValue:
    return _list_page()


def _detail(contact: Contact, status: int = 200, error: str | None = None) -> Response:
    events, event_operators = queries.history_of(db.session(), [contact.id])
    # The assign picker is the supervisors' alone.
    first, rest = queries.operator_choices(db.session(), contact.source_id) if can(Role.SUPERVISOR) else ([], [])
    others = [c for c in db.session.scalars(queries.contacts_query(lead_id=contact.lead_id)) if c.id != contact.id]
    return render(
        "contacts/detail.html",
        status=status,
        contact=contact,
        other_contacts=others,
        summary_ids=others_summary_ids(others),
        events=events,
        event_operators=event_operators,
        offer_first=first,
        offer_rest=rest,
        assign_error=error,
        **queries.names_for(db.session(), [contact, *others]),
    )


def _own_contact_or_404(contact_id: int) -> Contact:
    """The contact; 404 if there is none, 403 for an operator user when it is someone else's."""
    contact = db.get_or_404(Contact, contact_id)
    check_own_contact(contact.operator_id)
    return contact


@bp.get("/<id:contact_id>")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def detail(contact_id: int) -> ResponseReturnValue:
    return _detail(_own_contact_or_404(contact_id))


def _back(default: str) -> BaseResponse:
    return redirect(local_target(request.form.get("next"), default))


def _chosen_operator() -> tuple[int, bool]:
    """The operator picked in an assign form, and whether its override box is ticked."""
    operator_id = request.form.get("operator_id", type=int)
    if operator_id is None or not 0 < operator_id <= INT_MAX:
        raise InvalidInput(_("Choose an operator."), {"operator_id": _("Choose an operator.")})
    return operator_id, request.form.get("override") == "1"


@bp.post("/<id:contact_id>/assign")
@allow(Role.SUPERVISOR)
def assign(contact_id: int) -> ResponseReturnValue:
    """Assign or reassign by hand; past the limit only with the override box ticked."""
    db.get_or_404(Contact, contact_id)  # an unknown contact is a 404 before any error of the form
    try:
        operator_id, override = _chosen_operator()
        begin_write(db.session)
        distribution.assign_by_hand(db.session(), contact_id, operator_id, override=override)
    except DomainError as exc:
        db.session.rollback()
        return _detail(
            db.get_or_404(Contact, contact_id), status=422, error=translate(exc.fields.get("operator_id", exc.message))
        )
    db.session.commit()
    return changed(_back(url_for(".detail", contact_id=contact_id)))


@bp.post("/<id:contact_id>/reopen")
@allow(Role.SUPERVISOR, Role.OPERATOR)
def reopen(contact_id: int) -> ResponseReturnValue:
    # A closed contact keeps its operator: an operator user may reopen what it closed.
    _own_contact_or_404(contact_id)
    begin_write(db.session)
    contact = distribution.reopen_contact(db.session(), contact_id, held_by=own_operator_id())
    db.session.commit()
    own = own_operator_id()
    if own is not None and contact.operator_id != own:
        # Reopened while its operator was away or full: someone else has it now, so not its page any more.
        return changed(redirect(url_for("inbox.index")))
    return changed(_back(url_for(".detail", contact_id=contact_id)))


@bp.post("/bulk")
@allow(Role.SUPERVISOR)
def bulk() -> ResponseReturnValue:
    """Close, or reassign, every selected contact: all of them or, on any error, none."""
    ids = sorted({int(v) for v in request.form.getlist("contact_id") if v.isascii() and v.isdigit() and len(v) < 10})
    action = request.form.get("action")
    try:
        if not ids:
            raise InvalidInput(_("Select at least one contact."))
        if action == "close":
            begin_write(db.session)
            distribution.close_contacts(db.session(), ids)
        elif action == "reassign":
            operator_id, override = _chosen_operator()
            begin_write(db.session)
            distribution.assign_contacts_by_hand(db.session(), ids, operator_id, override=override)
        else:
            raise InvalidInput(_("Choose what to do with the selected contacts."))
    except DomainError as exc:
        db.session.rollback()
        return _list_page(status=422, bulk_error=translate(exc.message))
    db.session.commit()
    return changed(_back(url_for(".index")))


@bp.post("/<id:contact_id>/close")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def close(contact_id: int) -> ResponseReturnValue:
    _own_contact_or_404(contact_id)  # before anything changes
    begin_write(db.session)
    contact = distribution.close_contact(db.session(), contact_id, held_by=own_operator_id())
    db.session.commit()
    if inbox.wants_inbox():
        return changed(inbox.inbox_page())  # closed from the inbox: its list again, without this one
    if not is_htmx():
        return _back(url_for(".index"))
    return changed(
        render(
            "contacts/index.html", block="contact_row", contact=contact, **queries.names_for(db.session(), [contact])
        )
    )
