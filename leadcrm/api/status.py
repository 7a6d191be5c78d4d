"""The distribution status: loads, weights, shares and queues in one answer."""

from typing import Any

from leadcrm import queries
from leadcrm.api import bp
from leadcrm.api.http import Response
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import DistributionStatusOut
from leadcrm.auth import allow
from leadcrm.extensions import db
from leadcrm.models import from_stored_time, utcnow
from leadcrm.outbox import moment
from leadcrm.storage import is_at_work
from leadcrm.vocabulary import Role


@bp.get("/distribution_status/")
@allow(Role.SUPERVISOR, Role.INTAKE, register_token=True)
@operation("getDistributionStatus", Answer("The status.", DistributionStatusOut))
def distribution_status() -> Response:
    """Load of every operator and weights and history of every source."""
    # Plain dicts built in one pass over the driver's rows, not pydantic models:
    # with 1,000 operators and 30 sources the answer has tens of thousands of
    # fields. Its shape is DistributionStatusOut (the tests check it).
    shares: dict[int, list[dict[str, Any]]] = {}
    for source_id, operator_id, weight, target_share, assigned_total in queries.share_rows(db.session()):
        share = {"operator_id": operator_id, "weight": weight, "target_share": target_share}
        share["assigned_total"] = assigned_total
        shares.setdefault(source_id, []).append(share)
    queues = queries.waiting_by_source(db.session())
    now = utcnow()
    return {
        "operators": [
            {
                "operator_id": op_id,
                "name": name,
                "is_active": bool(active),
                "active_leads": load,
                "max_active_leads": limit,
                "presence": presence,
                "at_work": is_at_work(
                    bool(active),
                    presence,
                    idle,
                    from_stored_time(seen),
                    now,
                    shift_from=from_stored_time(starts),
                    shift_until=from_stored_time(ends),
                ),
            }
            for op_id, name, active, load, limit, presence, idle, seen, _, starts, ends in queries.operator_load_rows(
                db.session()
            )
        ],
        "sources": [
            {
                "source_id": source.id,
                "name": source.name,
                "strategy": source.strategy,
                "operators": shares.get(source.id, []),
                "waiting": queues.get(source.id, queries.NO_QUEUE).count,
                "oldest_waiting_at": moment(queues.get(source.id, queries.NO_QUEUE).oldest_created_at),
            }
            for source in queries.source_rows(db.session())
        ],
        "unassigned_open": queries.unassigned_open(db.session()),
    }
