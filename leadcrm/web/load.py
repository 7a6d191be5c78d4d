"""The load table: every operator's open contacts against its limit, live."""

from flask import Blueprint
from flask.typing import ResponseReturnValue

from leadcrm.distribution import distribution_status, waiting_by_source
from leadcrm.extensions import db
from leadcrm.web.rendering import render

bp = Blueprint("load", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    status = distribution_status(db.session)
    waiting = waiting_by_source(db.session)
    sources = {s.source.id: s.source for s in status.sources}
    return render(
        "load/index.html",
        block="load_table",
        operators=status.operators,
        unassigned_open=status.unassigned_open,
        waiting=[(sources[source_id], w) for source_id, w in sorted(waiting.items())],
        sources_count=len(status.sources),
    )
