"""The load table: every operator's open contacts against its limit, live."""

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from flask import Blueprint, make_response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from leadcrm import worker
from leadcrm.auth import allow, operator_user
from leadcrm.extensions import db
from leadcrm.models import Source, utcnow
from leadcrm.queries import OperatorLoad, absent_until, operator_loads, unassigned_open, waiting_by_source
from leadcrm.vocabulary import AwayReason, Role
from leadcrm.web import times
from leadcrm.web.rendering import is_htmx, render

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


def state_notes(operators: list[OperatorLoad], now: datetime) -> dict[int, str]:
    """What the presence column says instead of the bare state, by operator id: "absent until 2 Jan",
    "off shift until Mon 09:00" (on the organisation's clock), "away — missed offers"."""
    off_shift = [op for op in operators if op.state == "off_shift"]
    absent = absent_until(db.session(), now, times.organisation_timezone()) if off_shift else {}
    today = times.local(now).date()
    # Many operators share a shift's end: each moment is formatted once.
    said: dict[datetime, str] = {}
    notes: dict[int, str] = {}
    for op in off_shift:
        if op.id in absent:
            notes[op.id] = _("absent until %(day)s", day=times.day(absent[op.id], today))
        elif op.next_shift_change_at is not None:
            at = op.next_shift_change_at
            if at not in said:
                said[at] = times.shift_change(at, now)
            notes[op.id] = _("off shift until %(time)s", time=said[at])
        else:
            notes[op.id] = _("off shift")
    missed = _("away — missed offers")
    for op in operators:
        if op.state == "away" and op.away_reason == AwayReason.MISSED_OFFERS:
            notes[op.id] = missed
    return notes


def is_worker_silent(now: datetime) -> bool:
    return worker.is_silent(worker.last_beat(db.session()), now)


def worker_warning(silent: bool) -> ResponseReturnValue:
    """The warning's own poll (``?part=worker&shown=0|1``): 204, nothing to swap, while it would say
    what it shows, so that a screen reader does not read the alert out again every few seconds."""
    if request.args.get("shown") == ("1" if silent else "0"):
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    return render("load/index.html", block="worker_warning", worker_silent=silent)


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def index() -> ResponseReturnValue:
    """The load table; "/" is everyone's first address, so an operator user (who may not see the table)
    is sent to its inbox instead."""
    if operator_user():
        return redirect(url_for("inbox.index"))
    now = utcnow()
    if request.args.get("part") == "worker" and is_htmx():
        return worker_warning(is_worker_silent(now))
    waiting = waiting_by_source(db.session())
    names = dict(db.session.execute(sa.select(Source.id, Source.name)).all())
    operators = operator_loads(db.session())
    return render(
        "load/index.html",
        block="load_table",
        # The table's own poll (htmx) leaves the warning alone: it has its own.
        worker_silent=False if is_htmx() else is_worker_silent(now),
        operators=operators,
        state_notes=state_notes(operators, now),
        totals=at_work_totals(operators),
        unassigned_open=unassigned_open(db.session()),
        waiting=[
            (names[source_id], w, now - w.oldest_created_at)
            for source_id, w in sorted(waiting.items())
            if w.oldest_created_at is not None  # always, for a source with a queue
        ],
        sources_count=len(names),
    )
