"""Operators: create, list, read, change limit, active flag, presence and idle setting."""

from flask import url_for
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import Forbidden

from leadcrm import operators
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args
from leadcrm.api.openapi import Answer, created, operation
from leadcrm.api.schemas import (
    OperatorCreate,
    OperatorOut,
    OperatorPage,
    OperatorUpdate,
    PageArgs,
)
from leadcrm.auth import allow, check_own_operator, operator_user
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.vocabulary import Role

# What an operator user may change of its own operator.
OPERATOR_USER_FIELDS = {"presence"}


@bp.post("/operators/")
@allow(Role.SUPERVISOR)
@operation("createOperator", created(OperatorOut, "Operator"), body=OperatorCreate, errors=(409,))
def create_operator() -> Response:
    """Create an operator."""
    body = parse(OperatorCreate, json_body())
    begin_write(db.session)
    operator = operators.create_operator(
        db.session(),
        name=body.name,
        max_active_leads=body.max_active_leads,
        is_active=body.is_active,
        presence=body.presence,
        idle_away_minutes=body.idle_away_minutes,
    )
    db.session.commit()
    return dump(OperatorOut, operator), 201, {"Location": url_for("api.get_operator", operator_id=operator.id)}


@bp.get("/operators/")
@allow(Role.SUPERVISOR)
@operation("listOperators", Answer("A page of operators.", OperatorPage), query=PageArgs)
def list_operators() -> Response:
    """List operators."""
    return page_of(operators.list_operators_query(), query_args(PageArgs), OperatorOut)


@bp.get("/operators/<id:operator_id>")
@allow(Role.SUPERVISOR, Role.OPERATOR)
@operation("getOperator", Answer("The operator.", OperatorOut), errors=(404,), operator_access="its own operator only")
def get_operator(operator_id: int) -> Response:
    """Get an operator."""
    check_own_operator(operator_id)
    return dump(OperatorOut, operators.get_operator(db.session(), operator_id))


@bp.patch("/operators/<id:operator_id>")
@allow(Role.SUPERVISOR, Role.OPERATOR)
@operation(
    "updateOperator",
    Answer("The changed operator.", OperatorOut),
    body=OperatorUpdate,
    errors=(404, 409),
    operator_access="its own operator's presence only",
)
def update_operator(operator_id: int) -> Response:
    """Change an operator (a limit below its load only stops new assignments; away keeps its open contacts).

    Available again, activated, a limit raised: waiting contacts of the sources it serves go to it at once.
    """
    check_own_operator(operator_id)
    operators.get_operator(db.session(), operator_id)
    data = json_body()
    if operator_user() and isinstance(data, dict) and set(data) - OPERATOR_USER_FIELDS:
        raise Forbidden(_l("An operator user may change only its own presence."))
    body = parse(OperatorUpdate, data)
    begin_write(db.session)
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    operator = operators.update_operator(db.session(), operator_id, changes)
    db.session.commit()
    return dump(OperatorOut, operator)
