"""Fixtures: a fresh app on a real, migrated database per test, on every configured backend."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import create_app
from leadcrm.extensions import db
from leadcrm.vocabulary import Role, TokenScope
from tests.backends import POSTGRES_URL, Backend, PostgresBackend, SqliteBackend
from tests.helpers import add_token, add_user, login_client


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """SQLite always; PostgreSQL when LEADCRM_TEST_POSTGRES_URL names a database to use."""
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("PostgreSQL not configured: set LEADCRM_TEST_POSTGRES_URL (.ci/run does)")
        chosen: Backend = PostgresBackend(POSTGRES_URL)
    else:
        chosen = SqliteBackend(tmp_path_factory.mktemp("sqlite"))
    yield chosen
    chosen.close()


@pytest.fixture
def database_url(backend: Backend, tmp_path: Path) -> str:
    return backend.fresh_url(tmp_path)


@pytest.fixture
def app(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A client that has not logged in and sends no token."""
    return app.test_client()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A supervisor's browser session, which also sends a full-scope API token on /api/v1.

    Pages go through the session (and need CSRF tokens on forms); the API
    through the token, as integrations call it.
    """
    with app.app_context():
        supervisor = add_user("boss", Role.SUPERVISOR)
        secret = add_token("tests", TokenScope.FULL)
    return login_client(app, supervisor, token=secret)


@pytest.fixture
def ctx(app: Flask) -> Iterator[None]:
    """An app context, for tests that call the domain directly."""
    with app.app_context():
        yield


def pytest_report_header() -> str:
    if POSTGRES_URL:
        return "databases: SQLite files and PostgreSQL (LEADCRM_TEST_POSTGRES_URL)"
    return "databases: SQLite files only; PostgreSQL runs skip (set LEADCRM_TEST_POSTGRES_URL, as .ci/run does)"
