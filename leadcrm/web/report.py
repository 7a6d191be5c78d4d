"""Distribution report: per source, the share each operator should get and the share it got."""

from dataclasses import dataclass

from flask import Blueprint
from flask.typing import ResponseReturnValue

from leadcrm.auth import allow
from leadcrm.extensions import db
from leadcrm.queries import distribution_status, waiting_by_source
from leadcrm.vocabulary import Role
from leadcrm.web.rendering import render

bp = Blueprint("report", __name__, url_prefix="/report")


@dataclass(frozen=True)
class ShareRow:
    name: str
    weight: int
    target: float
    actual: float
    assigned_total: int


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    status = distribution_status(db.session())
    waiting = waiting_by_source(db.session())
    names = {op.id: op.name for op in status.operators}
    cards = []
    for source_status in status.sources:
        assigned = sum(share.assigned_total for share in source_status.operators)
        rows = [
            ShareRow(
                name=names[share.operator_id],
                weight=share.weight,
                target=share.target_share,
                actual=share.assigned_total / assigned if assigned else 0.0,
                assigned_total=share.assigned_total,
            )
            for share in source_status.operators
        ]
        cards.append((source_status.source, rows, assigned, waiting.get(source_status.source.id)))
    return render("report/index.html", block="report", cards=cards)
