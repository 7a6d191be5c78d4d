"""The distribution status: loads, weights, shares and queues in one answer."""

from datetime import datetime

from leadcrm import queries
from leadcrm.api import bp
from leadcrm.api.http import Response
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import DistributionStatusOut
from leadcrm.auth import allow
from leadcrm.extensions import db
from leadcrm.vocabulary import Role


def _utc_text(value: datetime | None) -> str | None:
    # As pydantic writes the other timestamps: ISO 8601 with a Z.
    return value.isoformat().replace("+00:00", "Z") if value else None


@bp.get("/distribution_status/")
@allow(Role.SUPERVISOR, Role.INTAKE, register_token=True)
@operation("getDistributionStatus", Answer("The status.", DistributionStatusOut))
def distribution_status() -> Response:
    """Load of every operator and weights and history of every source."""
    # Plain dicts, not pydantic models: with 1,000 operators and 30 sources the
    # answer has tens of thousands of fields. Its shape is DistributionStatusOut
    # (the tests check it).
    status = queries.distribution_status(db.session())
    return {
        "operators": [
            {
                "operator_id": o.id,
                "name": o.name,
                "is_active": bool(o.is_active),
                "active_leads": o.active_leads,
                "max_active_leads": o.max_active_leads,
            }
            for o in status.operators
        ],
        "sources": [
            {
                "source_id": s.source.id,
                "name": s.source.name,
                "strategy": s.source.strategy,
                "operators": [
                    {
                        "operator_id": share.operator_id,
                        "weight": share.weight,
                        "target_share": share.target_share,
                        "assigned_total": share.assigned_total,
                    }
                    for share in s.operators
                ],
                "waiting": s.waiting.count,
                "oldest_waiting_at": _utc_text(s.waiting.oldest_created_at),
            }
            for s in status.sources
        ],
        "unassigned_open": status.unassigned_open,
    }
