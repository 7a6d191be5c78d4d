"""Who may call what: every route of the URL map, as every kind of caller.

EXPECTED is written out here, independently of the views' @allow declarations.
A view added without an entry fails test_every_route_has_an_expected_rule; a
view whose declaration disagrees with this table fails test_access_rules.

An operator user reaches only its own operator's things: in the table it may
call the OWN routes with ids of its own (contact 1, lead 1, operator 1 are
Anna's, the operator it works as); test_operator_users_reach_only_their_own
calls them with the other operator's ids (2) and expects 403.
"""

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.wrappers import Response

from leadcrm import create_app, distribution, sources
from leadcrm.api.openapi import openapi_document
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity
from leadcrm.models import Contact, Operator
from leadcrm.vocabulary import Role, TokenScope
from tests.helpers import add_operator, add_source, add_token, add_user, csrf_token_of, json_of, login_client

# The operator user comes before the supervisor: a supervisor's POST may deactivate a user.
CALLERS = ("anonymous", "intake", "operator", "supervisor", "register_token", "full_token")
PUBLIC = set(CALLERS)
EVERYONE_LOGGED_IN = {"intake", "operator", "supervisor"}
STAFF = {"intake", "supervisor"}
SUPERVISORS = {"supervisor"}
OPERATORS = {"operator"}
# Its own contacts, leads and operator only (see OWN).
OWN_AND_STAFF = STAFF | OPERATORS
OWN_AND_SUPERVISORS = SUPERVISORS | OPERATORS
# On /api/v1 a full token may do what a supervisor may; a register token only what it is for.
API_SUPERVISORS = {"supervisor", "full_token"}
API_EVERYONE = {"intake", "supervisor", "full_token"}
API_REGISTER = API_EVERYONE | {"register_token"}
API_OWN_AND_EVERYONE = API_EVERYONE | OPERATORS
API_OWN_AND_SUPERVISORS = API_SUPERVISORS | OPERATORS

EXPECTED: dict[str, set[str]] = {
    "static": PUBLIC,
    "healthz": PUBLIC,
    "set_language": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": PUBLIC,
    "auth.account": EVERYONE_LOGGED_IN,
    "auth.logout_everywhere": EVERYONE_LOGGED_IN,
    "inbox.index": OPERATORS,
    "inbox.presence": OPERATORS,
    "inbox.take": OPERATORS,  # its own offers (and one it missed: the conflict in place, tests/test_offer_pages.py)
    "load.index": STAFF | OPERATORS,  # an operator user is sent to its inbox (tests/test_inbox.py)
    "intake.index": STAFF,
    "intake.register": STAFF,
    "contacts.index": STAFF,
    "contacts.detail": OWN_AND_STAFF,
    "contacts.close": OWN_AND_STAFF,
    "contacts.assign": SUPERVISORS,
    "contacts.reopen": OWN_AND_SUPERVISORS,
    "contacts.bulk": SUPERVISORS,
    "leads.index": STAFF,
    "leads.detail": OWN_AND_STAFF,
    "operators.index": SUPERVISORS,
    "operators.create": SUPERVISORS,
    "operators.update": SUPERVISORS,
    "operators.detail": SUPERVISORS,
    "operators.schedule": SUPERVISORS,
    "operators.save_schedule": SUPERVISORS,
    "settings.index": SUPERVISORS,
    "settings.save": SUPERVISORS,
    "sources.index": SUPERVISORS,
    "sources.create": SUPERVISORS,
    "sources.detail": SUPERVISORS,
    "sources.save": SUPERVISORS,
    "report.index": SUPERVISORS,
    "users.index": SUPERVISORS,
    "users.create": SUPERVISORS,
    "users.set_role": SUPERVISORS,
    "users.set_active": SUPERVISORS,
    "users.set_password": SUPERVISORS,
    "users.set_operator": SUPERVISORS,
    "tokens.index": SUPERVISORS,
    "tokens.create": SUPERVISORS,
    "tokens.revoke": SUPERVISORS,
    "webhooks.index": SUPERVISORS,
    "webhooks.create": SUPERVISORS,
    "webhooks.show": SUPERVISORS,
    "webhooks.update": SUPERVISORS,
    "webhooks.turn": SUPERVISORS,
    "webhooks.test": SUPERVISORS,
    "webhooks.redeliver": SUPERVISORS,
    "webhooks.redeliver_event": SUPERVISORS,
    "webhooks.delete": SUPERVISORS,
    "docs.docs": SUPERVISORS,
    "api.openapi_json": API_REGISTER,
    "api.register_contact": API_REGISTER,
    "api.distribution_status": API_REGISTER,
    "api.list_contacts": API_OWN_AND_EVERYONE,
    "api.get_contact": API_OWN_AND_EVERYONE,
    "api.get_contact_events": API_OWN_AND_EVERYONE,
    "api.close_contact": API_OWN_AND_EVERYONE,
    "api.list_leads": API_EVERYONE,
    "api.get_lead": API_OWN_AND_EVERYONE,
    "api.create_operator": API_SUPERVISORS,
    "api.list_operators": API_SUPERVISORS,
    "api.get_operator": API_OWN_AND_SUPERVISORS,
    "api.update_operator": API_OWN_AND_SUPERVISORS,
    "api.get_operator_schedule": API_OWN_AND_SUPERVISORS,
    "api.replace_operator_schedule": API_SUPERVISORS,
    "api.get_settings": API_SUPERVISORS,
    "api.list_events": API_SUPERVISORS,
    "api.create_webhook": API_SUPERVISORS,
    "api.list_webhooks": API_SUPERVISORS,
    "api.get_webhook": API_SUPERVISORS,
    "api.update_webhook": API_SUPERVISORS,
    "api.delete_webhook": API_SUPERVISORS,
    "api.test_webhook": API_SUPERVISORS,
    "api.list_webhook_attempts": API_SUPERVISORS,
    "api.list_webhook_deliveries": API_SUPERVISORS,
    "api.redeliver": API_SUPERVISORS,
    "api.redeliver_event": API_SUPERVISORS,
    "api.replace_settings": API_SUPERVISORS,
    "api.create_source": API_SUPERVISORS,
    "api.list_sources": API_SUPERVISORS,
    "api.get_source": API_SUPERVISORS,
    "api.update_source": API_SUPERVISORS,
    "api.get_source_config": API_SUPERVISORS,
    "api.set_source_config": API_SUPERVISORS,
    "api.assign_contact": API_SUPERVISORS,
    "api.reopen_contact": API_OWN_AND_SUPERVISORS,
    "api.accept_contact": API_OWN_AND_SUPERVISORS,
    "api.export_contacts": API_SUPERVISORS,
}
# The routes an operator user may call for its own things only, and the URL that asks for another's.
OWN = {
    "inbox.take": "/inbox/contacts/2/take",
    "contacts.detail": "/contacts/2",
    "contacts.close": "/contacts/2/close",
    "contacts.reopen": "/contacts/2/reopen",
    "leads.detail": "/leads/2",
    "api.list_contacts": "/api/v1/contacts/?operator_id=2",
    "api.get_contact": "/api/v1/contacts/2",
    "api.get_contact_events": "/api/v1/contacts/2/events",
    "api.close_contact": "/api/v1/contacts/2/close",
    "api.reopen_contact": "/api/v1/contacts/2/reopen",
    "api.accept_contact": "/api/v1/contacts/2/accept",
    "api.get_lead": "/api/v1/leads/2",
    "api.get_operator": "/api/v1/operators/2",
    "api.update_operator": "/api/v1/operators/2",
    "api.get_operator_schedule": "/api/v1/operators/2/schedule",
}
# How far an operator user reaches on each API route open to it, as the OpenAPI document must say.
OPERATOR_REACH = {
    "api.list_contacts": "its own contacts only",
    "api.get_contact": "its own contacts only",
    "api.get_contact_events": "its own contacts only",
    "api.close_contact": "its own contacts only",
    "api.reopen_contact": "its own contacts only",
    "api.accept_contact": "its own contacts only",
    "api.get_lead": "a lead of its own contacts, with those contacts only",
    "api.get_operator": "its own operator only",
    "api.update_operator": "its own operator's presence only",
    "api.get_operator_schedule": "its own operator only",
}
SAMPLE_ARGS = {"filename": "app.js", "code": "ru", "state": "off"}


URL_MAP = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}).url_map


def _routes() -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every rule and method of the real app's URL map."""
    routes = []
    for rule in URL_MAP.iter_rules():
        url = re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", lambda m: SAMPLE_ARGS.get(m.group(1), "1"), rule.rule)
        assert rule.methods is not None  # Flask gives every rule its methods
        routes += [(rule.endpoint, method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


ROUTES = _routes()


def test_every_route_has_an_expected_rule() -> None:
    assert {endpoint for endpoint, _, _ in ROUTES} == set(EXPECTED)


def test_openapi_document_states_the_same_scopes_and_roles() -> None:
    """Each operation's description names the token scopes and roles of this table (not of the views)."""
    document = openapi_document(create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}))
    operations = {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    for endpoint, method, _ in ROUTES:
        if not endpoint.startswith("api.") or endpoint == "api.openapi_json":
            continue
        (rule,) = [r for r in URL_MAP.iter_rules(endpoint) if method in (r.methods or ())]
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix("/api/v1"))
        description = operations.pop((path, method.lower()))["description"]
        scopes = "`register` or `full`" if "register_token" in EXPECTED[endpoint] else "`full`"
        named: list[str] = [role for role in ("supervisor", "intake") if role in EXPECTED[endpoint]]
        if "operator" in EXPECTED[endpoint]:
            named.append(f"operator ({OPERATOR_REACH[endpoint]})")
        roles = ("Roles: " if len(named) > 1 else "Role: ") + ", ".join(named)
        assert description.endswith(f"Token scope: {scopes}. {roles}."), (endpoint, description)
    assert not operations, "documented, but not routed"


def _two_operators_with_a_contact_each() -> None:
    """Operator 1 (Anna) holds contact 1 of lead 1; operator 2 (Boris) contact 2 of lead 2."""
    anna, boris = add_operator("Anna"), add_operator("Boris")
    source = add_source(weights={anna: 1})
    distribution.register_contact(db.session(), source=source, identity=LeadIdentity(phone="+79001112233"))
    sources.set_weights(db.session(), source, {anna.id: 0, boris.id: 1}, replace=True)
    distribution.register_contact(db.session(), source=source, identity=LeadIdentity(phone="+79004445566"))
    db.session.commit()


@pytest.fixture
def callers(app: Flask) -> dict[str, FlaskClient]:
    with app.app_context():
        intake = add_user("irina", Role.INTAKE)
        supervisor = add_user("boss", Role.SUPERVISOR)
        _two_operators_with_a_contact_each()
        operator = add_user("anna", Role.OPERATOR, operator_id=1)
        register_secret = add_token("web form", TokenScope.REGISTER)
        full_secret = add_token("crm", TokenScope.FULL)
    register_client, full_client = app.test_client(), app.test_client()
    register_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {register_secret}"
    full_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {full_secret}"
    return {
        "anonymous": app.test_client(),
        "intake": login_client(app, intake),
        "operator": login_client(app, operator),
        "supervisor": login_client(app, supervisor),
        "register_token": register_client,
        "full_token": full_client,
    }


def csrf_token(client: FlaskClient) -> str:
    """The CSRF token a page of this client's session carries (so CSRF is not what refuses)."""
    response = client.get("/login", follow_redirects=True)
    return csrf_token_of(response.get_data(as_text=True))


@pytest.mark.parametrize(("endpoint", "method", "url"), ROUTES, ids=[f"{m} {u}" for _, m, u in ROUTES])
def test_access_rules(callers: dict[str, FlaskClient], endpoint: str, method: str, url: str) -> None:
    api = url.startswith("/api/")
    for caller, client in callers.items():
        headers = {}
        if method != "GET":
            headers["X-CSRFToken"] = csrf_token(client)
        with client.open(url, method=method, headers=headers, json={} if api else None) as response:
            check(endpoint, api, caller, response)


def check(endpoint: str, api: bool, caller: str, response: Response) -> None:
    # Response, not TestResponse: werkzeug types `with response` as giving the base class.
    status = response.status_code
    assert status < 500, (caller, status)
    if caller in EXPECTED[endpoint]:
        assert status not in (401, 403), (caller, status, response.get_data(as_text=True)[:300])
        assert endpoint.startswith("auth.") or "/login" not in (response.location or ""), caller
    elif api and caller == "anonymous":
        assert status == 401, caller
        assert json_of(response)["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    elif api:
        assert status == 403, caller
        assert json_of(response)["error"]["code"] == "forbidden"
    elif caller in ("anonymous", "register_token", "full_token"):
        # Pages never take tokens: without a session, log in first (and come back after).
        assert status == 302, caller
        assert response.location.startswith("/login")
    else:
        assert status == 403, caller
        assert "Not allowed" in response.get_data(as_text=True)


OWN_ROUTES = [(endpoint, method, OWN[endpoint]) for endpoint, method, _ in ROUTES if endpoint in OWN]


def test_every_own_route_is_in_the_table() -> None:
    assert {endpoint for endpoint, audience in EXPECTED.items() if "operator" in audience} >= set(OWN)
    assert {endpoint for endpoint, _, _ in OWN_ROUTES} == set(OWN)


@pytest.mark.parametrize(("endpoint", "method", "url"), OWN_ROUTES, ids=[f"{m} {u}" for _, m, u in OWN_ROUTES])
def test_operator_users_reach_only_their_own(
    callers: dict[str, FlaskClient], app: Flask, endpoint: str, method: str, url: str
) -> None:
    """The other operator's contact, lead or operator: 403 for an operator user, nothing changed."""
    client = callers["operator"]
    headers = {"X-CSRFToken": csrf_token(client)} if method != "GET" else {}
    api = url.startswith("/api/")
    body = {"presence": "away"} if endpoint == "api.update_operator" else {}
    with client.open(url, method=method, headers=headers, json=body if api else None) as response:
        assert response.status_code == 403, (endpoint, response.get_data(as_text=True)[:300])
        if api:
            assert json_of(response)["error"]["code"] == "forbidden"
        else:
            assert "Not allowed" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.get_one(Contact, 2).status == "open"
        assert db.session.get_one(Operator, 2).presence == "available"
