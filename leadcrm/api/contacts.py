"""Contacts: register (the hot path), list, read, history, assign, reopen, close, export."""

from typing import Any

from flask import Response as FlaskResponse
from flask import current_app, request, stream_with_context, url_for

from leadcrm import distribution, export, idempotency, leads, queries, sources
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args
from leadcrm.api.schemas import (
    AssignIn,
    ContactFilter,
    ContactOut,
    EventOut,
    LeadOut,
    OperatorOut,
    RegisteredLeadOut,
    RegisterIn,
    RegistrationOut,
)
from leadcrm.auth import allow, caller_may, current_caller
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput, LeadConflict, NotFound
from leadcrm.extensions import db
from leadcrm.identity import parse_identity
from leadcrm.models import IDEMPOTENCY_KEY_MAX, INTAKE, SUPERVISOR, Contact


@bp.post("/contacts/register")
@allow(SUPERVISOR, INTAKE, register_token=True)
def register_contact() -> Response:
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
        replay = idempotency.claim_key(db.session, caller, key.strip(), idempotency.request_hash(data))
        if replay is not None:
            return _stored_answer(replay, replayed=True)
    source = sources.find_source(db.session, source_id=body.source_id, source_name=body.source_name)
    try:
        registration = distribution.register_contact(
            db.session,
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
        idempotency.remember_answer(db.session, caller, key.strip(), answer)
    db.session.commit()
    return _stored_answer(answer, replayed=False)


def _registered_lead(lead: Any, identity: Any, name: str | None) -> LeadOut | RegisteredLeadOut:
    """The lead as the caller may see it: whole if it may read leads, else only what it sent that the lead holds."""
    if caller_may("api.get_lead"):
        return LeadOut.model_validate(lead)
    sent = {field: getattr(identity, field) for field in leads.IDENTIFIERS} | {"name": name}
    known = {field: value for field, value in sent.items() if value is not None and getattr(lead, field) == value}
    return RegisteredLeadOut(id=lead.id, **known)


def _stored_answer(answer: idempotency.StoredAnswer, *, replayed: bool) -> FlaskResponse:
    response = FlaskResponse(answer.body, answer.status_code, mimetype="application/json")
    if answer.location:
        response.headers["Location"] = answer.location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/contacts/")
@allow(SUPERVISOR, INTAKE)
def list_contacts() -> Response:
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
@allow(SUPERVISOR, INTAKE)
def get_contact(contact_id: int) -> Response:
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return dump(ContactOut, contact)


@bp.get("/contacts/<id:contact_id>/events")
@allow(SUPERVISOR, INTAKE)
def get_contact_events(contact_id: int) -> Response:
    if db.session.get(Contact, contact_id) is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return [dump(EventOut, event) for event in queries.contact_events(db.session, contact_id)]


@bp.post("/contacts/<id:contact_id>/assign")
@allow(SUPERVISOR)
def assign_contact(contact_id: int) -> Response:
    """Give an open contact to a chosen operator (past its limit only with override)."""
    body = parse(AssignIn, json_body())
    begin_write(db.session)
    contact = distribution.assign_by_hand(db.session, contact_id, body.operator_id, override=body.override)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.post("/contacts/<id:contact_id>/reopen")
@allow(SUPERVISOR)
def reopen_contact(contact_id: int) -> Response:
    begin_write(db.session)
    contact = distribution.reopen_contact(db.session, contact_id)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.get("/contacts/export.csv")
@allow(SUPERVISOR)
def export_contacts() -> FlaskResponse:
    """The contacts matching the list's filters, as CSV, streamed (the contacts page links here)."""
    filters = query_args(ContactFilter)
    query = queries.contacts_query(**filters.model_dump(exclude={"page", "per_page"}))
    rows = stream_with_context(export.contacts_csv(db.session, query))
    response = FlaskResponse(rows, mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@bp.post("/contacts/<id:contact_id>/close")
@allow(SUPERVISOR, INTAKE)
def close_contact(contact_id: int) -> Response:
    begin_write(db.session)
    contact = distribution.close_contact(db.session, contact_id)
    db.session.commit()
    return dump(ContactOut, contact)
