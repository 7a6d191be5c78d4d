"""Leads: search by phone, e-mail, external id or name; one lead with all its contacts."""

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from leadcrm import leads as domain
from leadcrm import queries
from leadcrm.auth import allow, check_own_lead, others_summary_ids
from leadcrm.extensions import db
from leadcrm.models import Lead
from leadcrm.vocabulary import NAME_MAX, PAGE_NUMBER_MAX, PER_PAGE, Role
from leadcrm.web.rendering import render

bp = Blueprint("leads", __name__, url_prefix="/leads")


@bp.get("/")
@allow(Role.SUPERVISOR, Role.INTAKE)
def index() -> ResponseReturnValue:
    q = request.args.get("q", "").strip()[:NAME_MAX]
    page_number = min(max(request.args.get("page", 1, type=int), 1), PAGE_NUMBER_MAX)
    query = domain.search_leads_query(q, current_app.config["LEADCRM_PHONE_REGION"])
    page = db.paginate(query, page=page_number, per_page=PER_PAGE, error_out=False)
    return render("leads/index.html", block="results", q=q, page=page)


@bp.get("/<id:lead_id>")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def detail(lead_id: int) -> ResponseReturnValue:
    """The lead and its contacts; an operator user sees its own in full, the others' as summary lines."""
    lead = db.get_or_404(Lead, lead_id)
    check_own_lead(lead_id)
    contacts = list(db.session.scalars(queries.contacts_query(lead_id=lead_id)))
    summary_ids = others_summary_ids(contacts)
    events, event_operators = queries.history_of(db.session(), [c.id for c in contacts if c.id not in summary_ids])
    return render(
        "leads/detail.html",
        block="lead_contacts",
        lead=lead,
        contacts=contacts,
        summary_ids=summary_ids,
        events=events,
        event_operators=event_operators,
        **queries.names_for(db.session(), contacts),
    )
