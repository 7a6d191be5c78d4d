"""Operators: create, list, read, change limit and active flag."""

from flask import url_for

from leadcrm import operators
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args
from leadcrm.api.schemas import (
    OperatorCreate,
    OperatorOut,
    OperatorUpdate,
    PageArgs,
)
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.models import SUPERVISOR


@bp.post("/operators/")
@allow(SUPERVISOR)
def create_operator() -> Response:
    body = parse(OperatorCreate, json_body())
    begin_write(db.session)
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
    begin_write(db.session)
    operators.update_operator(db.session, operator, body.model_dump(include=body.model_fields_set))
    db.session.commit()
    return dump(OperatorOut, operator)
