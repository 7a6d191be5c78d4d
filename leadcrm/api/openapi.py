"""The OpenAPI 3.1 document of /api/v1, generated from the views' own declarations.

Each API view carries what the document says about it:

- its path, path parameters and method: the URL map (``@bp.get("/contacts/<id:contact_id>")``);
- who may call it: ``@allow(...)`` (roles, and whether a ``register`` token may);
- what the URL map and ``@allow`` cannot know: ``@operation(...)`` below (the
  operationId, the body, query and header models, the answer, the errors the
  view raises itself);
- its summary: the first paragraph of the view's docstring (later paragraphs
  go to the description, before the access rule).

The schemas are the pydantic models the views parse and answer with. What every
operation shares is added here once: 401/403/503 on each, 400/413/415/422 with
a body, 422 with query parameters.
"""

import inspect
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin

from flask import Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule
from werkzeug.routing.converters import NumberConverter

from leadcrm.api import bp
from leadcrm.api import schemas as s
from leadcrm.api.http import Response
from leadcrm.auth import Access, access_of, allow
from leadcrm.vocabulary import Role, TokenScope

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
OPERATION = "leadcrm_operation"
DOCUMENT = "leadcrm_openapi_document"

ERROR_TEXT = {
    400: "Malformed JSON.",
    401: "No credentials, or a token that is unknown or revoked.",
    403: "The token's scope (or the user's role) does not allow this endpoint, "
    "or an operator user asks for what is not its own.",
    404: "Unknown id.",
    409: "Conflict (duplicate name, identifiers of two different leads, an offer whose time to take it ran out).",
    413: "The body is larger than 1 MiB.",
    415: "Body is not application/json.",
    422: "Validation failed; `fields` names each wrong field.",
    503: "The database is busy or unreachable; nothing was written, send it again.",
}
# Every operation: credentials and scope are checked, the database may be busy.
ALWAYS = (401, 403, 503)
WITH_BODY = (400, 413, 415, 422)
WITH_QUERY = (422,)


@dataclass(frozen=True)
class Answer:
    """An operation's answer when it succeeds.

    ``schema``: what the body is, as a type pydantic knows (a model, ``list[Model]``,
    ``Page[Model]``); None for text (``media_type`` says which). ``location``: the
    answer names the new resource in a Location header.
    """

    description: str
    schema: Any = None
    status: int = 200
    media_type: str = "application/json"
    location: bool = False


def created(schema: type[BaseModel], what: str) -> Answer:
    """201 with the new resource and its URL in Location."""
    return Answer(f"{what} created.", schema, status=201, location=True)


@dataclass(frozen=True)
class Operation:
    operation_id: str
    answer: Answer
    body: Any = None
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    operator_access: str | None = None


def operation(
    operation_id: str,
    answer: Answer,
    *,
    body: Any = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    operator_access: str | None = None,
) -> Callable[[F], F]:
    """Declare what the OpenAPI document says about an API view.

    ``operation_id``: stable and explicit (clients generated from the document
    name their functions after it), a camelCase verb: ``registerContact``.
    ``body``: the request body's type (``A | B`` for either); ``query`` and
    ``headers``: models whose fields are the parameters; ``errors``: the
    statuses the view itself may answer besides those every operation shares;
    ``operator_access``: how far an operator user's access reaches, when ``@allow`` lets
    its role in (``"its own contacts only"``): the description names it after the role.
    """
    declared = Operation(
        operation_id, answer, body=body, query=query, headers=headers, errors=errors, operator_access=operator_access
    )

    def declare(view: F) -> F:
        setattr(view, OPERATION, declared)
        return view

    return declare


def openapi_document(app: Flask) -> dict[str, Any]:
    """The document of ``app``'s API (built once per app: the URL map does not change)."""
    document = app.extensions.get(DOCUMENT)
    if document is None:
        document = app.extensions[DOCUMENT] = _build(app)
    return document


@bp.get("/openapi.json")
@allow(Role.SUPERVISOR, Role.INTAKE, register_token=True)
def openapi_json() -> Response:
    return openapi_document(current_app)


class _Schemas:
    """The components: every model an operation names, each once, with the mode it is used in."""

    def __init__(self) -> None:
        self.uses: list[tuple[type[BaseModel], JsonSchemaMode]] = []

    def models_of(self, schema_type: Any, mode: JsonSchemaMode) -> None:
        if isinstance(schema_type, type) and issubclass(schema_type, BaseModel):
            if (schema_type, mode) not in self.uses:
                self.uses.append((schema_type, mode))
            return
        for arg in get_args(schema_type):
            self.models_of(arg, mode)

    def build(self) -> None:
        """Generate every schema at once, so that models used in several places share one definition."""
        self.refs, schema = models_json_schema(self.uses, ref_template=REF)
        self.definitions: dict[str, Any] = schema.get("$defs", {})

    def of(self, schema_type: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        """The schema of a body or answer type: models by reference, lists as arrays, unions as oneOf."""
        if isinstance(schema_type, type) and issubclass(schema_type, BaseModel):
            return dict(self.refs[(schema_type, mode)])
        origin = get_origin(schema_type)
        if origin is list:
            (item,) = get_args(schema_type)
            return {"type": "array", "items": self.of(item, mode)}
        if origin in (Union, types.UnionType):
            return {"oneOf": [self.of(arg, mode) for arg in get_args(schema_type)]}
        raise TypeError(f"no schema for {schema_type!r}")

    def parameters(self, model: type[BaseModel], where: str) -> list[dict[str, Any]]:
        """Each field of ``model`` as a parameter ``in`` query or header: never null, required if it has no default."""
        name = self.refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        properties = self.definitions[name]["properties"]
        parameters = []
        for field_name, field in model.model_fields.items():
            schema = dict(properties[field.alias or field_name])
            # A parameter left out is absent, never null: the schema is the non-null branch.
            branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
            if branches:
                (branch,) = branches
                schema |= branch
            schema.pop("title", None)
            if "default" in schema and schema["default"] is None:
                del schema["default"]
            parameter: dict[str, Any] = {"name": field.alias or field_name, "in": where, "schema": schema}
            if "description" in schema:
                parameter["description"] = schema.pop("description")
            parameter["required"] = field.is_required()
            parameters.append(parameter)
        return parameters


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path(rule: Rule, prefix: str) -> str:
    """``/api/v1/contacts/<id:contact_id>`` as ``/contacts/{contact_id}``."""
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule.rule.removeprefix(prefix))


def _path_parameters(rule: Rule) -> list[dict[str, Any]]:
    parameters = []
    for name, converter in rule._converters.items():  # werkzeug keeps a rule's converters only here
        schema: dict[str, Any] = {"type": "string"}
        if isinstance(converter, NumberConverter):
            schema = {"type": "integer"}
            if converter.min is not None:
                schema["minimum"] = converter.min
            if converter.max is not None:
                schema["maximum"] = converter.max
        parameters.append({"name": name, "in": "path", "schema": schema, "required": True})
    return parameters


def _summary_and_description(view: Callable[..., Any]) -> tuple[str, str]:
    """The docstring's first paragraph (no closing period) and the rest."""
    doc = inspect.cleandoc(view.__doc__ or "")
    if not doc:
        raise RuntimeError(f"API view {view.__name__} has no docstring: its first line is the operation's summary")
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()).removesuffix("."), " ".join(rest.split())


def _access_text(access: Access, op: Operation, endpoint: str) -> str:
    """Who may call, as the description says it: ``Token scope: `full`. Role: supervisor.``, or
    ``... Roles: supervisor, intake, operator (its own contacts only).``"""
    scopes = (TokenScope.REGISTER, TokenScope.FULL) if access.register_token else (TokenScope.FULL,)
    if (Role.OPERATOR in access.roles) != (op.operator_access is not None):
        raise RuntimeError(f"API view {endpoint}: operator_access is declared exactly when @allow lets operators in")
    named = [f"{role} ({op.operator_access})" if role == Role.OPERATOR else role for role in access.roles]
    roles = ("Roles: " if len(access.roles) > 1 else "Role: ") + ", ".join(named)
    return f"Token scope: {' or '.join(f'`{scope}`' for scope in scopes)}. {roles}."


def _declared_views(app: Flask) -> list[tuple[Rule, Callable[..., Any], Operation]]:
    declared = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] != bp.name or rule.endpoint == "api.openapi_json":
            continue
        view = app.view_functions[rule.endpoint]
        op = getattr(view, OPERATION, None)
        if op is None:
            raise RuntimeError(f"API view {rule.endpoint} declares no @operation: the document cannot describe it")
        declared.append((rule, view, op))
    return declared


def _build(app: Flask) -> dict[str, Any]:
    prefix = _prefix(app)
    declared = _declared_views(app)
    schemas = _Schemas()
    schemas.models_of(s.ErrorOut, "serialization")
    for _, _, op in declared:
        schemas.models_of(op.body, "validation")
        schemas.models_of(op.query, "validation")
        schemas.models_of(op.headers, "validation")
        schemas.models_of(op.answer.schema, "serialization")
    schemas.build()
    error = schemas.of(s.ErrorOut, "serialization")

    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for rule, view, op in declared:
        if op.operation_id in operation_ids:
            raise RuntimeError(f"operationId {op.operation_id} is declared twice")
        operation_ids.add(op.operation_id)
        access = access_of(app, rule.endpoint)
        assert access is not None  # every view declares one (tests/test_access.py)
        summary, details = _summary_and_description(view)
        answer = op.answer
        content = schemas.of(answer.schema, "serialization") if answer.schema is not None else {"type": "string"}
        success: dict[str, Any] = {
            "description": answer.description,
            "content": {answer.media_type: {"schema": content}},
        }
        if answer.status == 204:
            del success["content"]  # no body
        if answer.location:
            success["headers"] = {"Location": {"schema": {"type": "string"}, "description": "URL of the new resource."}}
        statuses = [*op.errors, *ALWAYS]
        described: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": summary,
            "description": f"{details} {_access_text(access, op, rule.endpoint)}".strip(),
            "tags": [view.__module__.rsplit(".", 1)[-1]],
        }
        parameters = []
        if op.query is not None:
            parameters += schemas.parameters(op.query, "query")
            statuses += WITH_QUERY
        if op.headers is not None:
            parameters += schemas.parameters(op.headers, "header")
        if parameters:
            described["parameters"] = parameters
        if op.body is not None:
            body_schema = schemas.of(op.body, "validation")
            described["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
            statuses += WITH_BODY
        described["responses"] = {str(answer.status): success} | {
            str(status): _json(error, ERROR_TEXT[status]) for status in sorted(set(statuses))
        }
        item = paths.setdefault(_path(rule, prefix), {})
        if rule.arguments:
            item["parameters"] = _path_parameters(rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = described

    # Query and header models are parameters, not components.
    parameter_models = {model.__name__ for _, _, op in declared for model in (op.query, op.headers) if model}
    components = {name: schema for name, schema in schemas.definitions.items() if name not in parameter_models}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadcrm API",
            "version": "1",
            "description": "Distributes leads' contacts across operators by per-source weights, "
            "never past an operator's limit of active leads.",
        },
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {
            "schemas": components,
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


def _prefix(app: Flask) -> str:
    """Where the blueprint is mounted (/api/v1): the document's own URL, less its name."""
    (rule,) = app.url_map.iter_rules("api.openapi_json")
    return rule.rule.removesuffix("/openapi.json")
