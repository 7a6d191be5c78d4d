"""Contacts: register (the hot path), list, read, history, assign, reopen, close, export."""

from typing import Any

from flask import Response as FlaskResponse
from flask import current_app, request, stream_with_context, url_for

from leadcrm import distribution, export, idempotency, leads, queries, sources
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args
from leadcrm.api.openapi import Answer, created, operation
from leadcrm.api.schemas import (
    AssignIn,
    ContactFilter,
    ContactOut,
    ContactPage,
    EventOut,
    LeadOut,
    OperatorOut,
    RegisteredLeadOut,
    RegisterHeaders,
    RegisterIn,
    RegistrationOut,
)
from leadcrm.auth import allow, caller_may, current_caller
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput, LeadConflict, NotFound
from leadcrm.extensions import db
from leadcrm.identity import parse_identity
from leadcrm.models import Contact
from leadcrm.vocabulary import IDEMPOTENCY_KEY_MAX, Role


@bp.post("/contacts/register")
@allow(Role.SUPERVISOR, Role.INTAKE, register_token=True)
@operation(
    "registerContact",
    created(RegistrationOut, "Contact"),
    body=RegisterIn,
    headers=RegisterHeaders,
    errors=(404, 409),
)
def register_contact() -> Response:
    """Register a contact and distribute it."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key.strip()) <= IDEMPOTENCY_KEY_MAX:
        message = f"An Idempotency-Key has 1 to {IDEMPOTENCY_KEY_MAX} characters."
        raise InvalidInput(message, {"Idempotency-Key": message})
    data = json_body()
    body = parse(RegisterIn, data)
    if (body.source_id is None) == (body.source_name is None):
        message = "Give exactly one of source_id and source_name."
        raise InvalidInput(message, {"source_id": message, "source_name": message})
    identity = parse_identity(
        external_id=body.external_id,
        phone=body.phone,
        email=body.email,
        region=current_app.config["LEADCRM_PHONE_REGION"],
    )
    caller = current_caller()
    begin_write(db.session)
    if key is not None:
        replay = idempotency.claim_key(db.session(), caller, key.strip(), idempotency.request_hash(data))
        if replay is not None:
            return _stored_answer(replay, replayed=True)
    source = sources.find_source(db.session(), source_id=body.source_id, source_name=body.source_name)
    try:
        registration = distribution.register_contact(
            db.session(),
            source=source,
            identity=identity,
            name=body.name or None,
            message=body.message or None,
        )
    except LeadConflict as exc:
        if caller_may("api.get_lead"):
            raise
        # Nothing was written: naming the leads would let a register token look customers up unseen.
        raise LeadConflict(
            exc.message, dict.fromkeys(exc.fields, "Belongs to a different lead than the other identifiers.")
        ) from None
    result = RegistrationOut(
        contact=ContactOut.model_validate(registration.contact),
        lead=_registered_lead(registration.lead, identity, body.name or None),
        lead_created=registration.lead_created,
        assigned_operator=OperatorOut.model_validate(registration.operator) if registration.operator else None,
    )
    answer = idempotency.StoredAnswer(
        status_code=201,
        body=current_app.json.dumps(result.model_dump(mode="json", exclude_unset=True)),
        location=url_for("api.get_contact", contact_id=registration.contact.id),
    )
    if key is not None:
        idempotency.remember_answer(db.session(), caller, key.strip(), answer)
    db.session.commit()
    return _stored_answer(answer, replayed=False)


def _registered_lead(lead: Any, identity: Any, name: str | None) -> LeadOut | RegisteredLeadOut:
    """The lead as the caller may see it: whole if it may read leads, else only what it sent that the lead holds."""
    if caller_may("api.get_lead"):
        return LeadOut.model_validate(lead)
    sent = {field: getattr(identity, field) for field in leads.IDENTIFIERS} | {"name": name}
    known = {
        field: value
        for field, value in sent.items()
        if value is not None and (lead.name == value if field == "name" else leads.holds_identifier(lead, field, value))
    }
    return RegisteredLeadOut(id=lead.id, **known)


def _stored_answer(answer: idempotency.StoredAnswer, *, replayed: bool) -> FlaskResponse:
    response = FlaskResponse(answer.body, answer.status_code, mimetype="application/json")
    if answer.location:
        response.headers["Location"] = answer.location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/contacts/")
@allow(Role.SUPERVISOR, Role.INTAKE)
@operation("listContacts", Answer("A page of contacts.", ContactPage), query=ContactFilter)
def list_contacts() -> Response:
    """List contacts, newest first."""
    args = query_args(ContactFilter)
    query = queries.contacts_query(
        status=args.status,
        operator_id=args.operator_id,
        source_id=args.source_id,
        lead_id=args.lead_id,
        unassigned=args.unassigned,
    )
    return page_of(query, args, ContactOut)


@bp.get("/contacts/<id:contact_id>")
@allow(Role.SUPERVISOR, Role.INTAKE)
@operation("getContact", Answer("The contact.", ContactOut), errors=(404,))
def get_contact(contact_id: int) -> Response:
    """Get a contact."""
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return dump(ContactOut, contact)


@bp.get("/contacts/<id:contact_id>/events")
@allow(Role.SUPERVISOR, Role.INTAKE)
@operation("listContactEvents", Answer("The events.", list[EventOut]), errors=(404,))
def get_contact_events(contact_id: int) -> Response:
    """A contact's history: every change of its assignment and why, oldest first."""
    if db.session.get(Contact, contact_id) is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return [dump(EventOut, event) for event in queries.contact_events(db.session(), contact_id)]


@bp.post("/contacts/<id:contact_id>/assign")
@allow(Role.SUPERVISOR)
@operation("assignContact", Answer("The contact.", ContactOut), body=AssignIn, errors=(404, 409))
def assign_contact(contact_id: int) -> Response:
    """Give an open contact to a chosen operator (past its limit only with override); the previous
    operator's slot goes back to the queue.
    """
    body = parse(AssignIn, json_body())
    begin_write(db.session)
    contact = distribution.assign_by_hand(db.session(), contact_id, body.operator_id, override=body.override)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.post("/contacts/<id:contact_id>/reopen")
@allow(Role.SUPERVISOR)
@operation("reopenContact", Answer("The contact.", ContactOut), errors=(404,))
def reopen_contact(contact_id: int) -> Response:
    """Reopen a closed contact: back to its operator if it still can take it, else distributed again."""
    begin_write(db.session)
    contact = distribution.reopen_contact(db.session(), contact_id)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.get("/contacts/export.csv")
@allow(Role.SUPERVISOR)
@operation("exportContacts", Answer("CSV, one contact a row.", media_type="text/csv"), query=ContactFilter)
def export_contacts() -> FlaskResponse:
    """The contacts matching the filters, as CSV."""
    # Streamed; the contacts page links here with its filters.
    filters = query_args(ContactFilter)
    query = queries.contacts_query(**filters.model_dump(exclude={"page", "per_page"}))
    rows = stream_with_context(export.contacts_csv(db.session(), query))
    response = FlaskResponse(rows, mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@bp.post("/contacts/<id:contact_id>/close")
@allow(Role.SUPERVISOR, Role.INTAKE)
@operation("closeContact", Answer("The closed contact.", ContactOut), errors=(404,))
def close_contact(contact_id: int) -> Response:
    """Close a contact (closing a closed one changes nothing)."""
    begin_write(db.session)
    contact = distribution.close_contact(db.session(), contact_id)
    db.session.commit()
    return dump(ContactOut, contact)
