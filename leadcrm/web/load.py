"""The load table: every operator's open contacts against its limit, live."""

from datetime import datetime

import sqlalchemy as sa
from flask import Blueprint
from flask.typing import ResponseReturnValue
from flask_babel import format_timedelta

from leadcrm.auth import allow
from leadcrm.extensions import db
from leadcrm.models import INTAKE, SUPERVISOR, Source, utcnow
from leadcrm.queries import Waiting, operator_loads, unassigned_open, waiting_by_source
from leadcrm.web.rendering import render

bp = Blueprint("load", __name__)


def _waited(now: datetime, waiting: Waiting) -> str:
    """How long the oldest contact of a queue has waited, in words."""
    assert waiting.oldest_created_at is not None  # waiting_by_source lists only sources with a queue
    return format_timedelta(now - waiting.oldest_created_at, threshold=1.1)


@bp.get("/")
@allow(SUPERVISOR, INTAKE)
def index() -> ResponseReturnValue:
    waiting = waiting_by_source(db.session())
    now = utcnow()
    names = dict(db.session.execute(sa.select(Source.id, Source.name)).all())
    return render(
        "load/index.html",
        block="load_table",
        operators=operator_loads(db.session()),
        unassigned_open=unassigned_open(db.session()),
        waiting=[(names[source_id], w, _waited(now, w)) for source_id, w in sorted(waiting.items())],
        sources_count=len(names),
    )
