"""Contacts: a filterable list, newest first; close with one click."""

from flask import Blueprint, redirect, request, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from leadcrm import distribution
from leadcrm.api.schemas import ContactFilter
from leadcrm.extensions import db
from leadcrm.models import Contact, ContactEvent, Lead, Operator, Source
from leadcrm.operators import list_operators_query
from leadcrm.sources import list_sources_query
from leadcrm.web.rendering import changed, is_htmx, render

bp = Blueprint("contacts", __name__, url_prefix="/contacts")
PER_PAGE = 50


def read_filters() -> ContactFilter:
    """The list's filters from the query string; anything unreadable is ignored."""
    args = {k: v for k, v in request.args.items() if v != ""}
    try:
        return ContactFilter.model_validate({**args, "per_page": PER_PAGE})
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        return ContactFilter.model_validate({k: v for k, v in args.items() if k not in bad} | {"per_page": PER_PAGE})


def names_for(contacts: list[Contact]) -> dict[str, dict[int, object]]:
    """Leads, sources and operators the listed contacts refer to, in three queries."""

    def by_id(model: type, ids: set[int]) -> dict[int, object]:
        return {obj.id: obj for obj in db.session.scalars(db.select(model).where(model.id.in_(ids)))} if ids else {}

    return {
        "leads": by_id(Lead, {c.lead_id for c in contacts}),
        "sources": by_id(Source, {c.source_id for c in contacts}),
        "operators": by_id(Operator, {c.operator_id for c in contacts if c.operator_id}),
    }


@bp.get("/")
def index() -> ResponseReturnValue:
    filters = read_filters()
    query = distribution.contacts_query(**filters.model_dump(exclude={"page", "per_page"}))
    page = db.paginate(query, page=filters.page, per_page=PER_PAGE, error_out=False)
    args = {k: v for k, v in filters.model_dump(exclude={"page", "per_page"}).items() if v is not None}
    return render(
        "contacts/index.html",
        block="contacts_list",
        page=page,
        filters=filters,
        filter_args=args,
        source_choices=db.session.scalars(list_sources_query()).all(),
        operator_choices=db.session.scalars(list_operators_query()).all(),
        **names_for(list(page.items)),
    )


def history_of(contact_ids: list[int]) -> tuple[list, dict[int, object]]:
    """The events of these contacts, oldest first, and the operators they name."""
    events = list(
        db.session.scalars(
            db.select(ContactEvent).where(ContactEvent.contact_id.in_(contact_ids)).order_by(ContactEvent.id)
        )
    )
    named = {e.from_operator_id for e in events} | {e.to_operator_id for e in events}
    named.discard(None)
    operators = {op.id: op for op in db.session.scalars(db.select(Operator).where(Operator.id.in_(named)))}
    return events, operators


@bp.get("/<id:contact_id>")
def detail(contact_id: int) -> ResponseReturnValue:
    contact = db.get_or_404(Contact, contact_id)
    events, event_operators = history_of([contact.id])
    return render(
        "contacts/detail.html",
        contact=contact,
        events=events,
        event_operators=event_operators,
        **names_for([contact]),
    )


@bp.post("/<id:contact_id>/close")
def close(contact_id: int) -> ResponseReturnValue:
    contact = distribution.close_contact(db.session, contact_id)
    db.session.commit()
    if not is_htmx():
        target = request.form.get("next", "")
        return redirect(target if target.startswith("/") and not target.startswith("//") else url_for(".index"))
    return changed(render("contacts/index.html", block="contact_row", contact=contact, **names_for([contact])))
