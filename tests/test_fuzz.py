"""The whole JSON API fuzzed from its own OpenAPI document (schemathesis + Hypothesis).

For every operation, generated requests (valid and invalid) go through the
real app on a real database: no answer may be a 500, and every answer must
match the status codes, headers and schemas the document declares.
"""

import os
from collections.abc import Iterable, Iterator
from hashlib import sha256
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from leadcrm import create_app
from leadcrm.api.openapi import openapi_document
from leadcrm.extensions import db
from leadcrm.models import ApiToken
from leadcrm.vocabulary import TokenScope
from tests.helpers import add_operator, add_source


class CurrentApp:
    """A WSGI app that forwards to the current test's app (each test has its own database)."""

    app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert self.app is not None
        return self.app(environ, start_response)


current_app = CurrentApp()
# The document the app serves (tests/test_api.py checks it covers every route).
# A schema-valid request may still name an id that does not exist (404) or a
# name already taken (409). Two operations also check what JSON Schema cannot
# say (422): registration, that the phone and e-mail are real ones and that
# exactly one source and at least one identifier are given; replacing a
# source's weights, that no operator is listed twice; a schedule, that its
# time zone is one zoneinfo knows, that no interval is empty or overlaps
# another and that no absence ends before it starts; the settings, the time
# zone; a webhook, that its URL parses and does not name a private address.
# Everything else must be accepted.
FUZZ_TOKEN = "lcrm_" + "fuzz" * 10 + "abc"
CONFIG = SchemathesisConfig.from_dict(
    {
        # Schemathesis sends the token itself, so it also knows when it leaves it out on purpose.
        "auth": {"openapi": {"bearerAuth": {"bearer": FUZZ_TOKEN}}},
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409"]}},
        "operations": [
            {
                "include-path": path,
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]}},
            }
            for path in (
                "/contacts/register",
                "/sources/{source_id}/config",
                "/operators/{operator_id}/schedule",
                "/settings",
                "/webhooks/",
                "/webhooks/{webhook_id}",
            )
        ],
    }
)
# The document is the same for every app: build it from one without a database.
DOCUMENT = openapi_document(create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}))
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
schema.app = current_app


@pytest.fixture
def token(app: Flask) -> Iterator[str]:
    """FUZZ_TOKEN as a full token of this test's app, and a little data so that generated ids sometimes exist."""
    with app.app_context():
        anna, boris = add_operator("Anna", 2), add_operator("Boris", 1)
        add_source("telegram_bot", {anna: 10, boris: 30})
        db.session.commit()
        token = ApiToken(
            name="fuzz", scope=TokenScope.FULL, token_hash=sha256(FUZZ_TOKEN.encode()).hexdigest(), prefix="x"
        )
        db.session.add(token)
        db.session.commit()
    current_app.app = app
    yield FUZZ_TOKEN
    current_app.app = None


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("LEADCRM_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_as_documented(case: schemathesis.Case, token: str) -> None:  # noqa: ARG001 - sets up the app
    case.call_and_validate()


def test_the_documented_blank_pattern_means_what_the_validator_strips() -> None:
    """JSON Schema's \\s is not Python's: the pattern spells out exactly the characters str.strip() removes,
    so a name of separators alone ("\\x1d") is documented as invalid, as the API answers it."""
    import re

    from leadcrm.api.schemas import NOT_BLANK, WHITESPACE

    spaces = re.compile(f"[{WHITESPACE}]")
    assert [c for c in range(0x110000) if bool(spaces.fullmatch(chr(c))) != chr(c).isspace()] == []
    assert re.match(NOT_BLANK, "\x1d") is None and re.match(NOT_BLANK, " Anna ") is not None
