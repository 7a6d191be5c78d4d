"""The load table: every operator's open contacts against its limit, live."""

from typing import NamedTuple

import sqlalchemy as sa
from flask import Blueprint, redirect, url_for
from flask.typing import ResponseReturnValue

from leadcrm.auth import allow, operator_user
from leadcrm.extensions import db
from leadcrm.models import Source, utcnow
from leadcrm.queries import OperatorLoad, operator_loads, unassigned_open, waiting_by_source
from leadcrm.vocabulary import Role
from leadcrm.web.rendering import render

bp = Blueprint("load", __name__)


class AtWork(NamedTuple):
    """The load table's totals, of the operators who can take contacts now (active, available, not idle)."""

    working: int  # how many
    open: int  # their open contacts
    limits: int  # the sum of their limits
    free: int  # their free slots


def at_work_totals(operators: list[OperatorLoad]) -> AtWork:
    working = [op for op in operators if op.at_work]
    return AtWork(
        working=len(working),
        open=sum(op.active_leads for op in working),
        limits=sum(op.max_active_leads for op in working),
        free=sum(max(op.max_active_leads - op.active_leads, 0) for op in working),
    )


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def index() -> ResponseReturnValue:
    """The load table; "/" is everyone's first address, so an operator user (who may not see the table)
    is sent to its inbox instead."""
    if operator_user():
        return redirect(url_for("inbox.index"))
    waiting = waiting_by_source(db.session())
    now = utcnow()
    names = dict(db.session.execute(sa.select(Source.id, Source.name)).all())
    operators = operator_loads(db.session())
    return render(
        "load/index.html",
        block="load_table",
        operators=operators,
        totals=at_work_totals(operators),
        unassigned_open=unassigned_open(db.session()),
        waiting=[
            (names[source_id], w, now - w.oldest_created_at)
            for source_id, w in sorted(waiting.items())
            if w.oldest_created_at is not None  # always, for a source with a queue
        ],
        sources_count=len(names),
    )
