"""Operators: create, list, read, change limit and active flag."""

from flask import url_for

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
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.vocabulary import Role


@bp.post("/operators/")
@allow(Role.SUPERVISOR)
@operation("createOperator", created(OperatorOut, "Operator"), body=OperatorCreate, errors=(409,))
def create_operator() -> Response:
    """Create an operator."""
    body = parse(OperatorCreate, json_body())
    begin_write(db.session)
    operator = operators.create_operator(
        db.session(), name=body.name, max_active_leads=body.max_active_leads, is_active=body.is_active
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
@allow(Role.SUPERVISOR)
@operation("getOperator", Answer("The operator.", OperatorOut), errors=(404,))
def get_operator(operator_id: int) -> Response:
    """Get an operator."""
    return dump(OperatorOut, operators.get_operator(db.session(), operator_id))


@bp.patch("/operators/<id:operator_id>")
@allow(Role.SUPERVISOR)
@operation("updateOperator", Answer("The changed operator.", OperatorOut), body=OperatorUpdate, errors=(404, 409))
def update_operator(operator_id: int) -> Response:
    """Change an operator (a limit below its load only stops new assignments)."""
    operators.get_operator(db.session(), operator_id)
    body = parse(OperatorUpdate, json_body())
    begin_write(db.session)
    operator = operators.update_operator(db.session(), operator_id, body.model_dump(include=body.model_fields_set))
    db.session.commit()
    return dump(OperatorOut, operator)
