"""The OpenAPI 3.1 document of /api/v1, built from the same pydantic models the views use."""

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from leadcrm.api import bp
from leadcrm.api import schemas as s
from leadcrm.api.http import Response
from leadcrm.auth import allow
from leadcrm.vocabulary import Role

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON.",
        404: "Unknown id.",
        409: "Conflict (duplicate name, identifiers of two different leads).",
        415: "Body is not application/json.",
        422: "Validation failed; `fields` names each wrong field.",
        401: "No credentials, or a token that is unknown or revoked.",
        403: "The token's scope (or the user's role) does not allow this endpoint.",
        413: "The body is larger than 1 MiB.",
        503: "The database is busy or unreachable; nothing was written, send it again.",
    }
    return {str(code): _json(_ref(s.ErrorOut), text[code]) for code in statuses}


def _page(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "page", "per_page", "total"],
        "properties": {
            "items": {"type": "array", "items": _ref(model)},
            "page": {"type": "integer"},
            "per_page": {"type": "integer"},
            "total": {"type": "integer"},
        },
    }


def _param(name: str, schema: dict[str, Any], where: str = "query", **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "required": where == "path", **extra}


def _id(name: str) -> dict[str, Any]:
    return _param(name, {"type": "integer", "minimum": 1, "maximum": s.INT_MAX}, "path")


PAGING = [
    _param("page", {"type": "integer", "minimum": 1, "maximum": s.INT_MAX, "default": 1}),
    _param("per_page", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
]
BODY_ERRORS = (400, 415, 422)
CONTACT_FILTERS = [
    _param("status", {"type": "string", "enum": ["open", "closed"]}),
    _param("operator_id", {"type": "integer", "minimum": 1, "maximum": s.INT_MAX}),
    _param("source_id", {"type": "integer", "minimum": 1, "maximum": s.INT_MAX}),
    _param("lead_id", {"type": "integer", "minimum": 1, "maximum": s.INT_MAX}),
    _param("unassigned", {"type": "boolean"}),
]


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    tag: str,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _created(model: type[BaseModel], what: str) -> dict[str, Any]:
    response = _json(_ref(model), f"{what} created.")
    response["headers"] = {"Location": {"schema": {"type": "string"}, "description": "URL of the new resource."}}
    return response


# What a `register` token may call, and what intake staff may call with their session
# (tests/test_access.py checks both against the views' declarations).
REGISTER_SCOPE_OPERATIONS = {("/contacts/register", "post"), ("/distribution_status/", "get")}
INTAKE_OPERATIONS = {
    ("/contacts/", "get"),
    ("/contacts/{contact_id}", "get"),
    ("/contacts/{contact_id}/events", "get"),
    ("/contacts/{contact_id}/close", "post"),
    ("/leads/", "get"),
    ("/leads/{lead_id}", "get"),
}


@cache
def openapi_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        s.OperatorCreate,
        s.OperatorUpdate,
        s.OperatorOut,
        s.SourceCreate,
        s.SourceUpdate,
        s.SourceOut,
        s.WeightIn,
        s.WeightOut,
        s.AssignIn,
        s.RegisterIn,
        s.RegistrationOut,
        s.ContactOut,
        s.LeadOut,
        s.LeadDetailOut,
        s.EventOut,
        s.DistributionStatusOut,
        s.ErrorOut,
    ]
    _, schema = models_json_schema(
        [(m, "validation" if m.__name__.endswith(("Create", "Update", "In")) else "serialization") for m in models],
        ref_template=REF,
    )
    weights = {"type": "array", "items": _ref(s.WeightOut)}
    paths: dict[str, Any] = {
        "/operators/": {
            "get": _op(
                "List operators",
                {"200": _json(_page(s.OperatorOut), "A page of operators.")},
                params=PAGING,
                tag="operators",
            ),
            "post": _op(
                "Create an operator",
                {"201": _created(s.OperatorOut, "Operator"), **_errors(*BODY_ERRORS, 409)},
                body=_ref(s.OperatorCreate),
                tag="operators",
            ),
        },
        "/operators/{operator_id}": {
            "parameters": [_id("operator_id")],
            "get": _op(
                "Get an operator", {"200": _json(_ref(s.OperatorOut), "The operator."), **_errors(404)}, tag="operators"
            ),
            "patch": _op(
                "Change an operator (a limit below its load only stops new assignments)",
                {"200": _json(_ref(s.OperatorOut), "The changed operator."), **_errors(*BODY_ERRORS, 404, 409)},
                body=_ref(s.OperatorUpdate),
                tag="operators",
            ),
        },
        "/sources/": {
            "get": _op(
                "List sources", {"200": _json(_page(s.SourceOut), "A page of sources.")}, params=PAGING, tag="sources"
            ),
            "post": _op(
                "Create a source",
                {"201": _created(s.SourceOut, "Source"), **_errors(*BODY_ERRORS, 409)},
                body=_ref(s.SourceCreate),
                tag="sources",
            ),
        },
        "/sources/{source_id}": {
            "parameters": [_id("source_id")],
            "get": _op("Get a source", {"200": _json(_ref(s.SourceOut), "The source."), **_errors(404)}, tag="sources"),
            "patch": _op(
                "Change a source",
                {"200": _json(_ref(s.SourceOut), "The changed source."), **_errors(*BODY_ERRORS, 404, 409)},
                body=_ref(s.SourceUpdate),
                tag="sources",
            ),
        },
        "/sources/{source_id}/config": {
            "parameters": [_id("source_id")],
            "get": _op(
                "The source's weights (operators with weight > 0)",
                {"200": _json(weights, "Weights by operator_id."), **_errors(404)},
                tag="sources",
            ),
            "post": _op(
                "Set one operator's weight (object; 0 removes it) or replace all weights (array)",
                {"200": _json(weights, "The full config after the change."), **_errors(*BODY_ERRORS, 404)},
                body={"oneOf": [_ref(s.WeightIn), {"type": "array", "items": _ref(s.WeightIn)}]},
                tag="sources",
            ),
        },
        "/contacts/register": {
            "post": _op(
                "Register a contact and distribute it",
                {"201": _created(s.RegistrationOut, "Contact"), **_errors(*BODY_ERRORS, 404, 409)},
                body=_ref(s.RegisterIn),
                params=[
                    _param(
                        "Idempotency-Key",
                        {"type": "string", "minLength": 1, "maxLength": 200},
                        "header",
                        description="Retry-safe: the same key with the same body within 24 hours returns the "
                        "original response and stores nothing new (header Idempotent-Replayed: true); the same key "
                        "with a different body is a 409.",
                    )
                ],
                tag="contacts",
            ),
        },
        "/contacts/": {
            "get": _op(
                "List contacts, newest first",
                {"200": _json(_page(s.ContactOut), "A page of contacts."), **_errors(422)},
                params=[*CONTACT_FILTERS, *PAGING],
                tag="contacts",
            ),
        },
        "/contacts/{contact_id}": {
            "parameters": [_id("contact_id")],
            "get": _op(
                "Get a contact", {"200": _json(_ref(s.ContactOut), "The contact."), **_errors(404)}, tag="contacts"
            ),
        },
        "/contacts/{contact_id}/events": {
            "parameters": [_id("contact_id")],
            "get": _op(
                "A contact's history: every change of its assignment and why, oldest first",
                {"200": _json({"type": "array", "items": _ref(s.EventOut)}, "The events."), **_errors(404)},
                tag="contacts",
            ),
        },
        "/contacts/{contact_id}/assign": {
            "parameters": [_id("contact_id")],
            "post": _op(
                "Give an open contact to a chosen operator (past its limit only with override); "
                "the previous operator's slot goes back to the queue",
                {"200": _json(_ref(s.ContactOut), "The contact."), **_errors(*BODY_ERRORS, 404, 409)},
                body=_ref(s.AssignIn),
                tag="contacts",
            ),
        },
        "/contacts/{contact_id}/reopen": {
            "parameters": [_id("contact_id")],
            "post": _op(
                "Reopen a closed contact: back to its operator if it still can take it, else distributed again",
                {"200": _json(_ref(s.ContactOut), "The contact."), **_errors(404)},
                tag="contacts",
            ),
        },
        "/contacts/export.csv": {
            "get": _op(
                "The contacts matching the filters, as CSV",
                {
                    "200": {
                        "description": "CSV, one contact a row.",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    **_errors(422),
                },
                params=CONTACT_FILTERS,
                tag="contacts",
            ),
        },
        "/contacts/{contact_id}/close": {
            "parameters": [_id("contact_id")],
            "post": _op(
                "Close a contact (closing a closed one changes nothing)",
                {"200": _json(_ref(s.ContactOut), "The closed contact."), **_errors(404)},
                tag="contacts",
            ),
        },
        "/leads/": {
            "get": _op(
                "Search leads by external_id, phone, email or name",
                {"200": _json(_page(s.LeadOut), "A page of leads."), **_errors(422)},
                params=[_param("q", {"type": "string", "maxLength": s.NAME_MAX}), *PAGING],
                tag="leads",
            ),
        },
        "/leads/{lead_id}": {
            "parameters": [_id("lead_id")],
            "get": _op(
                "A lead with all its contacts",
                {"200": _json(_ref(s.LeadDetailOut), "The lead."), **_errors(404)},
                tag="leads",
            ),
        },
        "/distribution_status/": {
            "get": _op(
                "Load of every operator and weights and history of every source",
                {"200": _json(_ref(s.DistributionStatusOut), "The status.")},
                tag="status",
            ),
        },
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            for_register = (path, method) in REGISTER_SCOPE_OPERATIONS
            operation["description"] = (
                "Token scope: `register` or `full`." if for_register else "Token scope: `full`."
            ) + (
                " Roles: supervisor, intake."
                if (path, method) in INTAKE_OPERATIONS or for_register
                else " Role: supervisor."
            )
            extra = [401, 403, 503]
            if "requestBody" in operation:
                extra.append(413)
            if any(param["in"] == "query" for param in operation.get("parameters", [])):
                extra.append(422)
            operation["responses"].update(_errors(*extra))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadcrm API",
            "version": "1",
            "description": "Distributes leads' contacts across operators by per-source weights, "
            "never past an operator's limit of active leads.",
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": schema["$defs"],
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from the Tokens page (`lcrm_...`). "
                    "A logged-in browser session works too; its writes need the X-CSRFToken header.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


@bp.get("/openapi.json")
@allow(Role.SUPERVISOR, Role.INTAKE, register_token=True)
def openapi_json() -> Response:
    return openapi_document()
