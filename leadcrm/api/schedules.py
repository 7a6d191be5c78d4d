"""Schedules: an operator's working hours, absences and time zone (the stretch on shift follows)."""

from typing import Any

from flask import current_app

from leadcrm import operators, schedules
from leadcrm.api import bp
from leadcrm.api.http import Response, json_body, parse
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import AbsenceOut, HoursOut, ScheduleIn, ScheduleOut
from leadcrm.auth import allow, check_own_operator
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.models import utcnow
from leadcrm.queries import next_shift_change
from leadcrm.schedules import Absence, Hours
from leadcrm.storage import is_on_shift
from leadcrm.vocabulary import Role


def _organisation_timezone() -> str:
    return schedules.organisation_timezone(db.session(), current_app.config["LEADCRM_TIMEZONE"])


def _schedule_answer(operator_id: int) -> dict[str, Any]:
    """ScheduleOut of the operator's stored schedule and stretch on shift."""
    schedule = schedules.get_schedule(db.session(), operator_id)
    operator = operators.get_operator(db.session(), operator_id)
    now = utcnow()
    answer = ScheduleOut(
        operator_id=operator_id,
        timezone=schedule.timezone,
        effective_timezone=schedule.timezone or _organisation_timezone(),
        hours=[
            HoursOut(weekday=h.weekday, start=schedules.clock(h.starts), end=schedules.clock(h.ends))
            for h in schedule.hours
        ],
        absences=[
            AbsenceOut.model_validate({"from": a.starts_on, "to": a.ends_on, "note": a.note}) for a in schedule.absences
        ],
        on_shift=is_on_shift(operator.shift_from, operator.shift_until, now),
        next_shift_change_at=next_shift_change(operator.shift_from, operator.shift_until, now),
    )
    return answer.model_dump(mode="json")


@bp.get("/operators/<id:operator_id>/schedule")
@allow(Role.SUPERVISOR, Role.OPERATOR)
@operation(
    "getOperatorSchedule",
    Answer("The schedule, and whether the operator is on shift now.", ScheduleOut),
    errors=(404,),
    operator_access="its own operator only",
)
def get_operator_schedule(operator_id: int) -> Response:
    """An operator's working hours, absences and time zone, and whether it is on shift now."""
    check_own_operator(operator_id)
    return _schedule_answer(operator_id)


@bp.put("/operators/<id:operator_id>/schedule")
@allow(Role.SUPERVISOR)
@operation(
    "replaceOperatorSchedule",
    Answer("The schedule as stored, and whether the operator is on shift now.", ScheduleOut),
    body=ScheduleIn,
    errors=(404,),
)
def replace_operator_schedule(operator_id: int) -> Response:
    """Replace an operator's working hours, absences and time zone.

    Recorded in the operator's history. Routing follows at once: off shift (or absent), it keeps its open
    contacts and gets no new ones; on shift again, waiting contacts of the sources it serves go to it.
    """
    operators.get_operator(db.session(), operator_id)
    body = parse(ScheduleIn, json_body())
    hours = [Hours(h.weekday, h.start, h.end) for h in body.hours]
    absences = [Absence(a.from_, a.to, a.note or None) for a in body.absences]
    schedules.check_schedule(body.timezone, hours, absences)  # before the write lock: see replace_schedule
    begin_write(db.session)
    schedules.replace_schedule(
        db.session(),
        operator_id,
        timezone=body.timezone,
        hours=hours,
        absences=absences,
        organisation=_organisation_timezone(),
    )
    db.session.commit()
    return _schedule_answer(operator_id)
