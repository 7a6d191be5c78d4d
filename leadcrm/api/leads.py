"""Leads: search and read, with their contacts."""

from flask import current_app

from leadcrm import leads, queries
from leadcrm.api import bp
from leadcrm.api.http import Response, page_of, query_args
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import (
    ContactOut,
    LeadDetailOut,
    LeadOut,
    LeadPage,
    LeadSearch,
)
from leadcrm.auth import allow, check_own_lead, own_operator_id
from leadcrm.extensions import db
from leadcrm.vocabulary import Role


@bp.get("/leads/")
@allow(Role.SUPERVISOR, Role.INTAKE)
@operation("listLeads", Answer("A page of leads.", LeadPage), query=LeadSearch)
def list_leads() -> Response:
    """Search leads by external_id, phone, email or name."""
    args = query_args(LeadSearch)
    return page_of(leads.search_leads_query(args.q, current_app.config["LEADCRM_PHONE_REGION"]), args, LeadOut)


@bp.get("/leads/<id:lead_id>")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
@operation(
    "getLead",
    Answer("The lead.", LeadDetailOut),
    errors=(404,),
    operator_access="a lead of its own contacts, with those contacts only",
)
def get_lead(lead_id: int) -> Response:
    """A lead with all its contacts (for an operator user: those of its contacts)."""
    lead = leads.get_lead(db.session(), lead_id)
    check_own_lead(lead_id)
    # An operator user sees its own contacts of the lead; other operators' messages are not its to read.
    contacts = db.session.scalars(queries.contacts_query(lead_id=lead_id, operator_id=own_operator_id())).all()
    return LeadDetailOut(
        **LeadOut.model_validate(lead).model_dump(),
        contacts=[ContactOut.model_validate(c) for c in contacts],
    ).model_dump(mode="json")
