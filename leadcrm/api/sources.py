"""Sources: create, list, read, change; their weights (the config)."""

from typing import Any

from flask import url_for

from leadcrm import sources
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args, weight_list
from leadcrm.api.schemas import (
    PageArgs,
    SourceCreate,
    SourceOut,
    SourceUpdate,
    WeightIn,
    WeightOut,
)
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import SUPERVISOR


@bp.post("/sources/")
@allow(SUPERVISOR)
def create_source() -> Response:
    body = parse(SourceCreate, json_body())
    begin_write(db.session)
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
    begin_write(db.session)
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
        begin_write(db.session)
        sources.set_weights(db.session, source, {r.operator_id: r.weight for r in rows}, replace=True)
    else:
        row = parse(WeightIn, data)
        begin_write(db.session)
        sources.set_weight(db.session, source, row.operator_id, row.weight)
    db.session.commit()
    return _weights_response(source_id)
