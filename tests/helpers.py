"""Small builders shared by the tests; they go through the domain functions."""

import re
from functools import cache
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash
from werkzeug.wrappers import Response

from leadcrm import accounts, operators, sources
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity
from leadcrm.models import Contact, Operator, Source, User
from leadcrm.vocabulary import ContactStatus


def add_operator(name: str, limit: int = 10, *, active: bool = True) -> Operator:
    return operators.create_operator(db.session(), name=name, max_active_leads=limit, is_active=active)


def add_source(
    name: str = "telegram_bot",
    weights: dict[Operator, int] | None = None,
    *,
    strategy: str = "random",
    sticky: bool = False,
) -> Source:
    source = sources.create_source(db.session(), name=name, strategy=strategy, sticky=sticky)
    if weights:
        sources.set_weights(db.session(), source, {op.id: w for op, w in weights.items()}, replace=True)
    return source


def phone(n: int) -> LeadIdentity:
    return LeadIdentity(phone=f"+7900{n:07d}")


def open_contacts_by_operator() -> dict[int | None, int]:
    rows = db.session.execute(
        sa.select(Contact.operator_id, sa.func.count())
        .where(Contact.status == ContactStatus.OPEN)
        .group_by(Contact.operator_id)
    )
    return {operator_id: count for operator_id, count in rows}


def assert_load_matches_open_contacts() -> None:
    """The maintained counter equals the truth in the contacts table, for every operator."""
    open_by_operator = open_contacts_by_operator()
    for operator in db.session.scalars(sa.select(Operator)):
        db.session.refresh(operator)
        assert operator.active_leads == open_by_operator.get(operator.id, 0), operator


def json_of(response: Response) -> Any:
    """The JSON body of a test response; fails the test if the response is not JSON."""
    body = response.get_json()
    assert body is not None, response.get_data(as_text=True)
    return body


def csrf_token_of(page: str) -> str:
    """The CSRF token a page carries in its <meta name="csrf-token">."""
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found, page
    return found.group(1)


PASSWORD = "correct horse battery"


@cache
def password_hash() -> str:
    # scrypt is slow on purpose: hash the test password once per run.
    return generate_password_hash(PASSWORD)


def add_user(username: str, role: str, *, active: bool = True, operator_id: int | None = None) -> User:
    """A user with PASSWORD, stored and committed (needs an app context); an operator user with its operator."""
    user = User(username=username, password_hash=password_hash(), role=role, is_active=active, operator_id=operator_id)
    db.session.add(user)
    db.session.commit()
    return user


def add_token(name: str, scope: str) -> str:
    """A new API token, committed; returns its secret."""
    secret = accounts.create_token(db.session(), name=name, scope=scope, created_by=None).secret
    db.session.commit()
    return secret


def login_client(app: Flask, user: User, token: str | None = None) -> FlaskClient:
    """A test client logged in as ``user`` (as the login form does), optionally sending a Bearer token."""
    client = app.test_client()
    with app.app_context():
        # A login session of its own, as the login form opens one.
        secret = accounts.start_session(db.session(), db.session.get_one(User, user.id), app.permanent_session_lifetime)
        db.session.commit()
    with client.session_transaction() as session:
        session["_user_id"] = secret
        session["_fresh"] = True
    if token:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client
