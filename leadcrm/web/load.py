"""The load table: every operator's open contacts against its limit, live."""

import sqlalchemy as sa
from flask import Blueprint
from flask.typing import ResponseReturnValue

from leadcrm.auth import allow
from leadcrm.extensions import db
from leadcrm.models import Source, utcnow
from leadcrm.queries import operator_loads, unassigned_open, waiting_by_source
from leadcrm.vocabulary import Role
from leadcrm.web.rendering import render

bp = Blueprint("load", __name__)


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE)
def index() -> ResponseReturnValue:
    waiting = waiting_by_source(db.session())
    now = utcnow()
    names = dict(db.session.execute(sa.select(Source.id, Source.name)).all())
    return render(
        "load/index.html",
        block="load_table",
        operators=operator_loads(db.session()),
        unassigned_open=unassigned_open(db.session()),
        waiting=[
            (names[source_id], w, now - w.oldest_created_at)
            for source_id, w in sorted(waiting.items())
            if w.oldest_created_at is not None  # always, for a source with a queue
        ],
        sources_count=len(names),
    )
