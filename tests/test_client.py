"""A client generated from the served OpenAPI document runs the README's API walk-through.

openapi-python-client (pinned in requirements-dev.txt) writes a Python package
from /api/v1/openapi.json, offline, into the test's folder; the test imports it
and follows "Walk-through with curl" in README.md against the real app under
gunicorn, through the generated functions (named after the operationIds) and
models, checking every answer.
"""

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import requests

from tests.servers import create_token, gunicorn

pytestmark = pytest.mark.slow

PACKAGE = "leadcrm_client"
# No post-hooks: the generated code is not formatted (nor linted) by a tool found on PATH.
GENERATOR_CONFIG: dict[str, list[str]] = {"post_hooks": []}


@pytest.fixture
def served(backend, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL of the API, a full-scope token) of the app under gunicorn on an empty database."""
    url = backend.empty_url(tmp_path)
    with gunicorn(url, tmp_path, workers=2) as base:
        yield f"{base}/api/v1", create_token(url)


def generate_client(document: dict, workdir: Path) -> ModuleType:
    """The client package openapi-python-client generates from ``document``, imported."""
    (workdir / "openapi.json").write_text(json.dumps(document))
    (workdir / "generator.json").write_text(json.dumps(GENERATOR_CONFIG))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(workdir / "openapi.json"),
            "--config",
            str(workdir / "generator.json"),
            "--meta",
            "none",
            "--output-path",
            str(workdir / PACKAGE),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(workdir))
    importlib.invalidate_caches()
    return importlib.import_module(PACKAGE)


def operations(package: ModuleType) -> SimpleNamespace:
    """Every generated operation's module (api/<tag>/<operation>.py), by name: ``op.register_contact.sync(...)``."""
    assert package.__file__ is not None
    root = Path(package.__file__).parent / "api"
    return SimpleNamespace(
        **{
            path.stem: importlib.import_module(f"{PACKAGE}.api.{path.parent.name}.{path.stem}")
            for path in sorted(root.glob("*/*.py"))
            if path.stem != "__init__"
        }
    )


@pytest.fixture
def client_package(served: tuple[str, str], tmp_path: Path) -> Iterator[ModuleType]:
    api, token = served
    document = requests.get(f"{api}/openapi.json", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    workdir = tmp_path / "client"
    workdir.mkdir()
    try:
        yield generate_client(document, workdir)
    finally:
        sys.path.remove(str(workdir))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_a_generated_client_runs_the_readme_walk_through(served: tuple[str, str], client_package: ModuleType) -> None:
    api_base, token = served
    m = importlib.import_module(f"{PACKAGE}.models")
    op = operations(client_package)
    client = client_package.AuthenticatedClient(base_url=api_base, token=token)

    # two operators and a source
    created = op.create_operator.sync_detailed(client=client, body=m.OperatorCreate(name="Anna", max_active_leads=2))
    assert created.status_code == 201
    assert created.headers["Location"].endswith("/api/v1/operators/1")
    anna = created.parsed
    assert (anna.id, anna.name, anna.is_active, anna.max_active_leads, anna.active_leads) == (1, "Anna", True, 2, 0)
    boris = op.create_operator.sync(client=client, body=m.OperatorCreate(name="Boris", max_active_leads=5))
    assert isinstance(boris, m.OperatorOut) and boris.id == 2
    source = op.create_source.sync(client=client, body=m.SourceCreate(name="telegram_bot"))
    assert isinstance(source, m.SourceOut)
    assert (source.id, source.strategy, source.sticky) == (1, m.Strategy.RANDOM, False)
    # The same name again: the documented 409, parsed as the error model.
    taken = op.create_operator.sync_detailed(client=client, body=m.OperatorCreate(name="Anna", max_active_leads=1))
    assert taken.status_code == 409 and isinstance(taken.parsed, m.ErrorOut)

    # weights 10 / 30
    weights = [m.WeightIn(operator_id=anna.id, weight=10), m.WeightIn(operator_id=boris.id, weight=30)]
    config = op.set_source_config.sync(source_id=source.id, client=client, body=weights)
    assert [(w.operator_id, w.weight) for w in config] == [(1, 10), (2, 30)]
    one = op.set_source_config.sync(source_id=source.id, client=client, body=m.WeightIn(operator_id=1, weight=20))
    assert [(w.operator_id, w.weight) for w in one] == [(1, 20), (2, 30)]
    assert [w.weight for w in op.get_source_config.sync(source_id=source.id, client=client)] == [20, 30]

    # register contacts; the same phone in another format is the same lead
    first = op.register_contact.sync_detailed(
        client=client,
        body=m.RegisterIn(
            source_name="telegram_bot", external_id="tg:1001", phone="8 900 123-45-67", name="Ivan", message="Hello"
        ),
        idempotency_key="walk-through-1",
    )
    assert first.status_code == 201
    registration = first.parsed
    assert isinstance(registration, m.RegistrationOut) and registration.lead_created is True
    assert isinstance(registration.lead, m.LeadOut)
    assert (registration.lead.external_id, registration.lead.phone, registration.lead.name) == (
        "tg:1001",
        "+79001234567",
        "Ivan",
    )
    contact = registration.contact
    assert (contact.id, contact.source_id, contact.status, contact.message) == (1, 1, m.ContactStatus.OPEN, "Hello")
    assert registration.assigned_operator.id == contact.operator_id in (1, 2)
    replay = op.register_contact.sync_detailed(
        client=client,
        body=m.RegisterIn(
            source_name="telegram_bot", external_id="tg:1001", phone="8 900 123-45-67", name="Ivan", message="Hello"
        ),
        idempotency_key="walk-through-1",
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.parsed.contact.id == 1
    second = op.register_contact.sync(
        client=client, body=m.RegisterIn(source_id=1, phone="+79001234567", email="ivan@example.com")
    )
    assert second.lead_created is False and second.lead.id == registration.lead.id
    assert second.lead.email == "ivan@example.com" and second.contact.id == 2
    neither = op.register_contact.sync_detailed(client=client, body=m.RegisterIn(phone="+79001234567"))
    assert neither.status_code == 422 and set(neither.parsed.error.fields.to_dict()) == {"source_id", "source_name"}

    # load of every operator, shares of every source, contacts waiting
    report = op.get_distribution_status.sync(client=client)
    assert isinstance(report, m.DistributionStatusOut)
    assert sum(o.active_leads for o in report.operators) == 2 and report.unassigned_open == 0
    (telegram,) = report.sources
    assert [(s.operator_id, s.weight, s.target_share) for s in telegram.operators] == [(1, 20, 0.4), (2, 30, 0.6)]
    assert telegram.waiting == 0 and telegram.oldest_waiting_at is None

    # close contact 1: its operator's load falls by one
    holder = contact.operator_id
    load_before = op.get_operator.sync(operator_id=holder, client=client).active_leads
    closed = op.close_contact.sync(contact_id=1, client=client)
    assert closed.status == m.ContactStatus.CLOSED and closed.closed_at is not None
    assert op.get_operator.sync(operator_id=holder, client=client).active_leads == load_before - 1

    # Anna goes away: she keeps her contacts and gets no new ones; back, she takes waiting ones at once
    away = op.update_operator.sync(operator_id=1, client=client, body=m.OperatorUpdate(presence=m.Presence.AWAY))
    assert (away.presence, away.at_work) == (m.Presence.AWAY, False)
    while_away = op.register_contact.sync(client=client, body=m.RegisterIn(source_id=1, phone="+79005550000"))
    assert while_away.contact.operator_id == 2  # Boris: the only one at work
    back = op.update_operator.sync(operator_id=1, client=client, body=m.OperatorUpdate(presence=m.Presence.AVAILABLE))
    assert (back.presence, back.at_work, back.idle_away_minutes, back.last_seen_at) == (
        m.Presence.AVAILABLE,
        True,
        None,
        None,
    )

    # and the reads the walk-through's answers point at
    assert op.get_contact.sync(contact_id=2, client=client).status == m.ContactStatus.OPEN
    page = op.list_contacts.sync(client=client, status=m.ContactStatus.OPEN)
    assert isinstance(page, m.ContactPage) and [c.id for c in page.items] == [3, 2] and page.total == 2
    reasons = [e.reason for e in op.list_contact_events.sync(contact_id=1, client=client)]
    assert reasons[0] in (m.EventReason.REGISTERED, m.EventReason.STICKY) and reasons[-1] == m.EventReason.CLOSED
    lead = op.get_lead.sync(lead_id=registration.lead.id, client=client)
    assert isinstance(lead, m.LeadDetailOut) and [c.id for c in lead.contacts] == [2, 1]
    found = op.list_leads.sync(client=client, q="+7 900 123 45 67")
    assert isinstance(found, m.LeadPage) and [item.id for item in found.items] == [registration.lead.id]
    csv = op.export_contacts.sync(client=client, status=m.ContactStatus.CLOSED)
    header, row = csv.splitlines()
    assert header.startswith("\ufeffcontact_id,") and row.startswith("1,")

    # A change names only what changes: the generated model leaves out (never nulls) the rest.
    changed = op.update_operator.sync(operator_id=1, client=client, body=m.OperatorUpdate(max_active_leads=3))
    assert (changed.name, changed.is_active, changed.max_active_leads) == ("Anna", True, 3)
    switched = op.update_source.sync(source_id=1, client=client, body=m.SourceUpdate(strategy=m.Strategy.DETERMINISTIC))
    assert (switched.name, switched.strategy, switched.sticky) == ("telegram_bot", m.Strategy.DETERMINISTIC, False)
    missing = op.get_contact.sync_detailed(contact_id=999, client=client)
    assert missing.status_code == 404 and missing.parsed.error.code == "not_found"
