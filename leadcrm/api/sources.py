"""Sources: create, list, read, change; their weights (the config)."""

from typing import Any

from flask import current_app, url_for

from leadcrm import sources
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, page_of, parse, query_args, weight_list
from leadcrm.api.openapi import Answer, created, operation
from leadcrm.api.schemas import (
    PageArgs,
    SourceCreate,
    SourceOut,
    SourcePage,
    SourceUpdate,
    WeightIn,
    WeightOut,
)
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.vocabulary import Role


@bp.post("/sources/")
@allow(Role.SUPERVISOR)
@operation("createSource", created(SourceOut, "Source"), body=SourceCreate, errors=(409,))
def create_source() -> Response:
    """Create a source.

    With offer_timeout_seconds, each contact routing gives an operator is an offer it must take in time.
    """
    body = parse(SourceCreate, json_body())
    timeout_min = current_app.config["LEADCRM_OFFER_TIMEOUT_MIN"]
    sources.check_offers(body.offer_timeout_seconds, body.offer_misses_away, timeout_min)
    begin_write(db.session)
    source = sources.create_source(
        db.session(),
        name=body.name,
        strategy=body.strategy,
        sticky=body.sticky,
        offer_timeout_seconds=body.offer_timeout_seconds,
        offer_misses_away=body.offer_misses_away,
        offer_timeout_min=timeout_min,
    )
    db.session.commit()
    return dump(SourceOut, source), 201, {"Location": url_for("api.get_source", source_id=source.id)}


@bp.get("/sources/")
@allow(Role.SUPERVISOR)
@operation("listSources", Answer("A page of sources.", SourcePage), query=PageArgs)
def list_sources() -> Response:
    """List sources."""
    return page_of(sources.list_sources_query(), query_args(PageArgs), SourceOut)


@bp.get("/sources/<id:source_id>")
@allow(Role.SUPERVISOR)
@operation("getSource", Answer("The source.", SourceOut), errors=(404,))
def get_source(source_id: int) -> Response:
    """Get a source."""
    return dump(SourceOut, sources.get_source(db.session(), source_id))


@bp.patch("/sources/<id:source_id>")
@allow(Role.SUPERVISOR)
@operation("updateSource", Answer("The changed source.", SourceOut), body=SourceUpdate, errors=(404, 409))
def update_source(source_id: int) -> Response:
    """Change a source.

    A new offer setting applies to contacts routed from now on; offers made already keep their deadline.
    """
    source = sources.get_source(db.session(), source_id)
    body = parse(SourceUpdate, json_body())
    changes = body.model_dump(include=body.model_fields_set)
    timeout_min = current_app.config["LEADCRM_OFFER_TIMEOUT_MIN"]
    sources.check_offers(
        changes.get("offer_timeout_seconds", source.offer_timeout_seconds),
        changes.get("offer_misses_away", source.offer_misses_away),
        timeout_min,
    )
    begin_write(db.session)
    sources.update_source(db.session(), source, changes, offer_timeout_min=timeout_min)
    db.session.commit()
    return dump(SourceOut, source)


def _weights_response(source_id: int) -> list[dict[str, Any]]:
    return [dump(WeightOut, row) for row in sources.source_weights(db.session(), source_id)]


@bp.get("/sources/<id:source_id>/config")
@allow(Role.SUPERVISOR)
@operation("getSourceConfig", Answer("Weights by operator_id.", list[WeightOut]), errors=(404,))
def get_source_config(source_id: int) -> Response:
    """The source's weights (operators with weight > 0)."""
    sources.get_source(db.session(), source_id)
    return _weights_response(source_id)


@bp.post("/sources/<id:source_id>/config")
@allow(Role.SUPERVISOR)
@operation(
    "setSourceConfig",
    Answer("The full config after the change.", list[WeightOut]),
    body=WeightIn | list[WeightIn],
    errors=(404,),
)
def set_source_config(source_id: int) -> Response:
    """Set one operator's weight (object; 0 removes it) or replace all weights (array)."""
    source = sources.get_source(db.session(), source_id)
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
        sources.set_weights(db.session(), source, {r.operator_id: r.weight for r in rows}, replace=True)
    else:
        row = parse(WeightIn, data)
        begin_write(db.session)
        sources.set_weight(db.session(), source, row.operator_id, row.weight)
    db.session.commit()
    return _weights_response(source_id)
