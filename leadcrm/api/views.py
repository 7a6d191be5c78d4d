"""JSON API v1 views: parse the request, call the domain, commit, answer."""

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Response as FlaskResponse
from flask import current_app, request, stream_with_context, url_for
from pydantic import BaseModel, TypeAdapter
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from leadcrm import distribution, export, idempotency, leads, operators, sources
from leadcrm.api import bp
from leadcrm.api.openapi import openapi_document
from leadcrm.api.schemas import (
    AssignIn,
    ContactFilter,
    ContactOut,
    EventOut,
    LeadDetailOut,
    LeadOut,
    LeadSearch,
    OperatorCreate,
    OperatorOut,
    OperatorUpdate,
    PageArgs,
    RegisteredLeadOut,
    RegisterIn,
    RegistrationOut,
    SourceCreate,
    SourceOut,
    SourceUpdate,
    WeightIn,
    WeightOut,
)
from leadcrm.auth import allow, caller_may, current_caller
from leadcrm.errors import InvalidInput, LeadConflict, NotFound
from leadcrm.extensions import db
from leadcrm.identity import parse_identity
from leadcrm.models import IDEMPOTENCY_KEY_MAX, INTAKE, SUPERVISOR, Contact

M = TypeVar("M", bound=BaseModel)
Response = tuple[Any, int] | tuple[Any, int, dict[str, str]] | Any

weight_list = TypeAdapter(list[WeightIn])


# An integer literal this long is larger than any id, limit or weight: it
# parses as this stand-in, which every integer field refuses as out of range
# (a 422 naming the field) instead of Python's own error about "4300 digits".
INTEGER_DIGITS_MAX = 100
TOO_LARGE = 10**INTEGER_DIGITS_MAX


class _BodyRefused(ValueError):
    """The body parses as JSON but is not one we accept (a key given twice)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Plain JSON would keep the last of two equal keys: a typo or a smuggling
    # attempt either way, so it is refused rather than guessed at.
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _BodyRefused(f"The key {name!r} appears twice in one object.")
        obj[name] = value
    return obj


def _integer(digits: str) -> int:
    if len(digits) > INTEGER_DIGITS_MAX:
        return -TOO_LARGE if digits.startswith("-") else TOO_LARGE
    return int(digits)


def json_body() -> Any:
    """The request's JSON; 415 if it is not JSON, 400 if it does not parse or repeats a key in an object."""
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as JSON, with Content-Type: application/json.")
    try:
        # Fractions exactly, as Decimal: a float would round 0.000...01 to 0 (a weight
        # removed) and 1.0000000000000001 to 1; every number field here is an integer.
        return json.loads(
            request.get_data(cache=True), object_pairs_hook=_no_duplicate_keys, parse_int=_integer, parse_float=Decimal
        )
    except _BodyRefused as exc:
        raise BadRequest(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None


def parse(model: type[M], data: Any) -> M:
    return model.model_validate(data)


def query_args(model: type[M]) -> M:
    """The query string as ``model``. An unknown or repeated parameter is a 422, like a typo in a body."""
    unknown = [name for name in request.args if name not in model.model_fields]
    if unknown:
        raise InvalidInput(
            "Unknown query parameter.",
            {name or "(empty name)": "Not a parameter of this endpoint." for name in unknown},
        )
    repeated = [name for name, values in request.args.lists() if len(values) > 1]
    if repeated:
        raise InvalidInput("A query parameter is given twice.", dict.fromkeys(repeated, "Give it once."))
    # Query strings carry text: lax mode converts "2" to 2 and "true" to True.
    return model.model_validate(request.args.to_dict())


def dump(model: type[BaseModel], obj: Any) -> dict[str, Any]:
    return model.model_validate(obj).model_dump(mode="json")


def page_of(query: sa.Select[Any], args: PageArgs, model: type[BaseModel]) -> dict[str, Any]:
    page = db.paginate(query, page=args.page, per_page=args.per_page, max_per_page=500, error_out=False)
    return {
        "items": [dump(model, item) for item in page.items],
        "page": args.page,
        "per_page": args.per_page,
        "total": page.total,
    }


@bp.get("/openapi.json")
@allow(SUPERVISOR, INTAKE, register_token=True)
def openapi_json() -> Response:
    return openapi_document()


# --- operators ---------------------------------------------------------------


@bp.post("/operators/")
@allow(SUPERVISOR)
def create_operator() -> Response:
    body = parse(OperatorCreate, json_body())
    operator = operators.create_operator(
        db.session, name=body.name, max_active_leads=body.max_active_leads, is_active=body.is_active
    )
    db.session.commit()
    return dump(OperatorOut, operator), 201, {"Location": url_for("api.get_operator", operator_id=operator.id)}


@bp.get("/operators/")
@allow(SUPERVISOR)
def list_operators() -> Response:
    return page_of(operators.list_operators_query(), query_args(PageArgs), OperatorOut)


@bp.get("/operators/<id:operator_id>")
@allow(SUPERVISOR)
def get_operator(operator_id: int) -> Response:
    return dump(OperatorOut, operators.get_operator(db.session, operator_id))


@bp.patch("/operators/<id:operator_id>")
@allow(SUPERVISOR)
def update_operator(operator_id: int) -> Response:
    operator = operators.get_operator(db.session, operator_id)
    body = parse(OperatorUpdate, json_body())
    operators.update_operator(db.session, operator, body.model_dump(include=body.model_fields_set))
    db.session.commit()
    return dump(OperatorOut, operator)


# --- sources -----------------------------------------------------------------


@bp.post("/sources/")
@allow(SUPERVISOR)
def create_source() -> Response:
    body = parse(SourceCreate, json_body())
    source = sources.create_source(db.session, name=body.name, strategy=body.strategy, sticky=body.sticky)
    db.session.commit()
    return dump(SourceOut, source), 201, {"Location": url_for("api.get_source", source_id=source.id)}


@bp.get("/sources/")
@allow(SUPERVISOR)
def list_sources() -> Response:
    return page_of(sources.list_sources_query(), query_args(PageArgs), SourceOut)


@bp.get("/sources/<id:source_id>")
@allow(SUPERVISOR)
def get_source(source_id: int) -> Response:
    return dump(SourceOut, sources.get_source(db.session, source_id))


@bp.patch("/sources/<id:source_id>")
@allow(SUPERVISOR)
def update_source(source_id: int) -> Response:
    source = sources.get_source(db.session, source_id)
    body = parse(SourceUpdate, json_body())
    sources.update_source(db.session, source, body.model_dump(include=body.model_fields_set))
    db.session.commit()
    return dump(SourceOut, source)


def _weights_response(source_id: int) -> list[dict[str, Any]]:
    return [dump(WeightOut, row) for row in sources.source_weights(db.session, source_id)]


@bp.get("/sources/<id:source_id>/config")
@allow(SUPERVISOR)
def get_source_config(source_id: int) -> Response:
    sources.get_source(db.session, source_id)
    return _weights_response(source_id)


@bp.post("/sources/<id:source_id>/config")
@allow(SUPERVISOR)
def set_source_config(source_id: int) -> Response:
    """An object sets one operator's weight; an array replaces the whole config."""
    source = sources.get_source(db.session, source_id)
    data = json_body()
    if isinstance(data, list):
        rows = weight_list.validate_python(data)
        seen: dict[int, int] = {}
        for index, row in enumerate(rows):
            if row.operator_id in seen:
                raise InvalidInput(
                    "An operator appears twice in the config.",
                    {f"{index}.operator_id": f"Operator {row.operator_id} also at index {seen[row.operator_id]}."},
                )
            seen[row.operator_id] = index
        sources.set_weights(db.session, source, {r.operator_id: r.weight for r in rows}, replace=True)
    else:
        row = parse(WeightIn, data)
        sources.set_weight(db.session, source, row.operator_id, row.weight)
    db.session.commit()
    return _weights_response(source_id)


# --- contacts ----------------------------------------------------------------


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
    query = distribution.contacts_query(
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
    return [dump(EventOut, event) for event in distribution.contact_events(db.session, contact_id)]


@bp.post("/contacts/<id:contact_id>/assign")
@allow(SUPERVISOR)
def assign_contact(contact_id: int) -> Response:
    """Give an open contact to a chosen operator (past its limit only with override)."""
    body = parse(AssignIn, json_body())
    contact = distribution.assign_by_hand(db.session, contact_id, body.operator_id, override=body.override)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.post("/contacts/<id:contact_id>/reopen")
@allow(SUPERVISOR)
def reopen_contact(contact_id: int) -> Response:
    contact = distribution.reopen_contact(db.session, contact_id)
    db.session.commit()
    return dump(ContactOut, contact)


@bp.get("/contacts/export.csv")
@allow(SUPERVISOR)
def export_contacts() -> FlaskResponse:
    """The contacts matching the list's filters, as CSV, streamed (the contacts page links here)."""
    filters = query_args(ContactFilter)
    query = distribution.contacts_query(**filters.model_dump(exclude={"page", "per_page"}))
    rows = stream_with_context(export.contacts_csv(db.session, query))
    response = FlaskResponse(rows, mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@bp.post("/contacts/<id:contact_id>/close")
@allow(SUPERVISOR, INTAKE)
def close_contact(contact_id: int) -> Response:
    contact = distribution.close_contact(db.session, contact_id)
    db.session.commit()
    return dump(ContactOut, contact)


# --- leads -------------------------------------------------------------------


@bp.get("/leads/")
@allow(SUPERVISOR, INTAKE)
def list_leads() -> Response:
    args = query_args(LeadSearch)
    return page_of(leads.search_leads_query(args.q, current_app.config["LEADCRM_PHONE_REGION"]), args, LeadOut)


@bp.get("/leads/<id:lead_id>")
@allow(SUPERVISOR, INTAKE)
def get_lead(lead_id: int) -> Response:
    lead = leads.get_lead(db.session, lead_id)
    contacts = db.session.scalars(distribution.contacts_query(lead_id=lead_id)).all()
    return LeadDetailOut(
        **LeadOut.model_validate(lead).model_dump(),
        contacts=[ContactOut.model_validate(c) for c in contacts],
    ).model_dump(mode="json")


# --- status ------------------------------------------------------------------


def _utc_text(value: datetime | None) -> str | None:
    # As pydantic writes the other timestamps: ISO 8601 with a Z.
    return value.isoformat().replace("+00:00", "Z") if value else None


@bp.get("/distribution_status/")
@allow(SUPERVISOR, INTAKE, register_token=True)
def distribution_status() -> Response:
    # Plain dicts, not pydantic models: with 1,000 operators and 30 sources the
    # answer has tens of thousands of fields. Its shape is DistributionStatusOut
    # (the tests check it).
    status = distribution.distribution_status(db.session)
    return {
        "operators": [
            {
                "operator_id": o.id,
                "name": o.name,
                "is_active": bool(o.is_active),
                "active_leads": o.active_leads,
                "max_active_leads": o.max_active_leads,
            }
            for o in status.operators
        ],
        "sources": [
            {
                "source_id": s.source.id,
                "name": s.source.name,
                "strategy": s.source.strategy,
                "operators": [
                    {
                        "operator_id": share.operator_id,
                        "weight": share.weight,
                        "target_share": share.target_share,
                        "assigned_total": share.assigned_total,
                    }
                    for share in s.operators
                ],
                "waiting": s.waiting.count,
                "oldest_waiting_at": _utc_text(s.waiting.oldest_created_at),
            }
            for s in status.sources
        ],
        "unassigned_open": status.unassigned_open,
    }
