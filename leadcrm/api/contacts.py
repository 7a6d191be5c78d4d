"""Contacts: register (the hot path), list, read, history, assign, reopen, close, export."""

from typing import Any
from zoneinfo import ZoneInfo

from flask import Response as FlaskResponse
from flask import current_app, request, stream_with_context, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import Forbidden

from leadcrm import distribution, export, idempotency, leads, offers, queries, schedules, sources
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args
from leadcrm.api.openapi import Answer, created, operation
from leadcrm.api.schemas import (
    AcceptArgs,
    AssignIn,
    ContactExport,
    ContactFilter,
    ContactOut,
    ContactPage,
    EventOut,
    RegisteredLeadOut,
    RegisterHeaders,
    RegisterIn,
    RegistrationOut,
)
from leadcrm.auth import allow, caller_may, check_own_contact, current_caller, operator_user, own_operator_id
from leadcrm.database import begin_write
from leadcrm.distribution import Registration
from leadcrm.errors import Conflict, InvalidInput, LeadConflict, Message, NotFound
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity, parse_identity
from leadcrm.models import Contact, utcnow
from leadcrm.outbox import contact_json, lead_json, operator_json
from leadcrm.storage import LeadRecord
from leadcrm.units import on_driver_connection, request_unit
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
@on_driver_connection  # the hot path: no ORM session, one transaction from the token check to the commit
def register_contact() -> Response:
    """Register a contact and distribute it."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key.strip()) <= IDEMPOTENCY_KEY_MAX:
        message = f"An Idempotency-Key has 1 to {IDEMPOTENCY_KEY_MAX} characters."
        raise InvalidInput(message, {"Idempotency-Key": message})
    if key is not None and "\x00" in key:  # as in any text: PostgreSQL cannot store it
        message = "An Idempotency-Key must not contain the NUL character."
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
    # The input is valid: now the write (on SQLite, the lock), on the request's driver connection.
    unit = request_unit()
    unit.begin_write()
    if key is not None:
        replay = idempotency.claim_key(unit, caller, key.strip(), idempotency.request_hash(data))
        if replay is not None:
            return _stored_answer(replay, replayed=True)
    source = sources.find_source(unit, source_id=body.source_id, source_name=body.source_name)
    try:
        registration = distribution.register_contact(
            unit,
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
    lead = registration.lead
    if caller_may("api.get_lead"):
        lead_answer = lead_json(lead)
    else:
        lead_answer = _registered_lead(lead, identity, body.name or None)
    answer = idempotency.StoredAnswer(
        status_code=201,
        body=current_app.json.dumps(registration_json(registration, lead_answer)),
        location=url_for("api.get_contact", contact_id=registration.contact.id),
    )
    if key is not None:
        idempotency.remember_answer(unit, caller, key.strip(), answer)
    unit.commit()
    return _stored_answer(answer, replayed=False)


def _registered_lead(lead: LeadRecord, identity: LeadIdentity, name: str | None) -> dict[str, Any]:
    """The lead as a caller that may not read leads sees it: only what it sent that the lead holds."""
    sent = {field: getattr(identity, field) for field in leads.IDENTIFIERS} | {"name": name}
    known = {
        field: value
        for field, value in sent.items()
        if value is not None and (lead.name == value if field == "name" else leads.holds_identifier(lead, field, value))
    }
    return RegisteredLeadOut(id=lead.id, **known).model_dump(mode="json", exclude_unset=True)


# The registration's answer is built straight from the engine's records, not
# validated through the pydantic models first: it is the hot path, and the
# records are typed already. Its shape is RegistrationOut's (the OpenAPI
# document says so), and tests/test_api.py checks the two agree on any record.


def registration_json(registration: Registration, lead: dict[str, Any]) -> dict[str, Any]:
    """RegistrationOut of a registration, with the lead as the caller may see it."""
    operator = registration.operator
    return {
        "contact": contact_json(registration.contact),
        "lead": lead,
        "lead_created": registration.lead_created,
        "assigned_operator": operator_json(operator, utcnow()) if operator is not None else None,
    }


def _stored_answer(answer: idempotency.StoredAnswer, *, replayed: bool) -> FlaskResponse:
    response = FlaskResponse(answer.body, answer.status_code, mimetype="application/json")
    if answer.location:
        response.headers["Location"] = answer.location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/contacts/")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
@operation(
    "listContacts",
    Answer("A page of contacts.", ContactPage),
    query=ContactFilter,
    operator_access="its own contacts only",
)
def list_contacts() -> Response:
    """List contacts, newest first.

    An operator user gets its own contacts: `operator_id` is its operator's (another is a 403),
    and `unassigned=true` is a 403 (waiting contacts are nobody's yet).
    """
    args = query_args(ContactFilter)
    operator_id = args.operator_id
    if operator_user():
        own = own_operator_id()
        if own is None:
            raise Forbidden(_l("Your user is linked to no operator: it has no contacts."))
        if operator_id is not None and operator_id != own:
            raise Forbidden(_l("An operator user sees only its own contacts: leave operator_id out, or give its own."))
        if args.unassigned:
            raise Forbidden(_l("An operator user sees only its own contacts, not those waiting for an operator."))
        operator_id = own
    query = queries.contacts_query(
        status=args.status,
        operator_id=operator_id,
        source_id=args.source_id,
        lead_id=args.lead_id,
        unassigned=args.unassigned,
    )
    return page_of(query, args, ContactOut)


def _own_contact(contact_id: int) -> Contact:
    """The contact, if the caller may reach it (an operator user: only its own); NotFound if unknown."""
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    check_own_contact(contact.operator_id)
    return contact


@bp.get("/contacts/<id:contact_id>")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
@operation("getContact", Answer("The contact.", ContactOut), errors=(404,), operator_access="its own contacts only")
def get_contact(contact_id: int) -> Response:
    """Get a contact."""
    return dump(ContactOut, _own_contact(contact_id))


@bp.get("/contacts/<id:contact_id>/events")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
@operation(
    "listContactEvents", Answer("The events.", list[EventOut]), errors=(404,), operator_access="its own contacts only"
)
def get_contact_events(contact_id: int) -> Response:
    """A contact's history: every change of its assignment and why, oldest first."""
    _own_contact(contact_id)
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
@allow(Role.SUPERVISOR, Role.OPERATOR)
@operation(
    "reopenContact", Answer("The contact.", ContactOut), errors=(404, 409), operator_access="its own contacts only"
)
def reopen_contact(contact_id: int) -> Response:
    """Reopen a closed contact: back to its operator if it still can take it, else distributed again."""
    _own_contact(contact_id)
    begin_write(db.session)
    contact = distribution.reopen_contact(db.session(), contact_id, held_by=own_operator_id())
    db.session.commit()
    return dump(ContactOut, contact)


@bp.get("/contacts/export.csv")
@allow(Role.SUPERVISOR)
@operation("exportContacts", Answer("CSV, one contact a row.", media_type="text/csv"), query=ContactExport)
def export_contacts() -> FlaskResponse:
    """The contacts matching the filters, as CSV for spreadsheets: UTF-8 with a byte-order mark, times
    (``2026-12-01 18:31:00``) in the organisation's time zone, cells split by ``sep``."""
    # Streamed; the contacts page links here with its filters (and the separator its language wants).
    args = query_args(ContactExport)
    query = queries.contacts_query(**args.model_dump(exclude={"page", "per_page", "sep"}))
    zone = ZoneInfo(schedules.organisation_timezone(db.session(), current_app.config["LEADCRM_TIMEZONE"]))
    csv = export.contacts_csv(db.session, query, zone=zone, separator=export.SEPARATORS[args.sep])
    response = FlaskResponse(stream_with_context(csv), mimetype="text/csv")
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@bp.post("/contacts/<id:contact_id>/close")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
@operation(
    "closeContact",
    Answer("The closed contact.", ContactOut),
    errors=(404, 409),
    operator_access="its own contacts only",
)
def close_contact(contact_id: int) -> Response:
    """Close a contact (closing a closed one changes nothing)."""
    _own_contact(contact_id)
    begin_write(db.session)
    contact = distribution.close_contact(db.session(), contact_id, held_by=own_operator_id())
    db.session.commit()
    return dump(ContactOut, contact)


@bp.post("/contacts/<id:contact_id>/accept")
@allow(Role.SUPERVISOR, Role.OPERATOR)
@operation(
    "acceptContact",
    Answer("The contact, taken (accepted_at set, offered_until null).", ContactOut),
    query=AcceptArgs,
    errors=(404, 409),
    operator_access="its own contacts only",
)
def accept_contact(contact_id: int) -> Response:
    """Take a contact offered to its operator before the deadline (taking a taken one changes nothing).

    A supervisor (or a token) takes it for the operator it is offered to, or for the one named by
    ``operator_id`` (an integration acting for that operator: if the offer went to someone else
    meanwhile, a 409 rather than taking the other one's). After the deadline: 409, and the contact
    is being offered to someone else (also once it was taken back from the operator).
    """
    args = query_args(AcceptArgs)
    stored = db.session.get(Contact, contact_id)
    own = own_operator_id()
    if own is not None and args.operator_id not in (None, own):
        raise Forbidden("An operator user takes offers for its own operator only.")
    if stored is not None and own is not None and stored.operator_id != own:
        # Taken back a moment ago from this operator: the clock, not a contact of someone else's.
        if queries.missed_offer(db.session(), contact_id, own):
            raise Conflict(Message("The time to take this contact ran out; it is being offered to someone else."))
    _own_contact(contact_id)
    begin_write(db.session)
    contact = offers.accept(db.session(), contact_id, own if own is not None else args.operator_id)
    db.session.commit()
    return dump(ContactOut, contact)
