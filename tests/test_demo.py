"""`flask leadcrm demo` on a real database, through Flask's CLI runner."""

from flask import Flask

from tests.test_web import text


def test_demo_fills_an_empty_database_and_leaves_a_full_one_alone(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["leadcrm", "demo", "--leads", "40"])
    assert result.exit_code == 0, result.output
    assert "Created 12 operators, 4 sources and 40 leads." in result.output
    client = app.test_client()
    status = client.get("/api/v1/distribution_status/").json
    assert len(status["operators"]) == 12 and len(status["sources"]) == 4
    assert client.get("/api/v1/leads/").json["total"] == 40  # some wrote through two sources: still 40 leads
    contacts = client.get("/api/v1/contacts/?per_page=500").json
    assert contacts["total"] > 40
    open_assigned = client.get("/api/v1/contacts/?status=open&unassigned=false").json["total"]
    assert sum(op["active_leads"] for op in status["operators"]) == open_assigned
    again = runner.invoke(args=["leadcrm", "demo"])
    assert again.exit_code == 0 and "leaving it as it is" in again.output
    assert "Нагрузка" in text(client.get("/", headers={"Accept-Language": "ru"}))


def test_simulation_registers_and_closes_and_keeps_counters_exact(app: Flask) -> None:
    runner = app.test_cli_runner()
    runner.invoke(args=["leadcrm", "demo", "--leads", "10"])
    client = app.test_client()
    before = client.get("/api/v1/contacts/").json["total"]
    result = runner.invoke(args=["leadcrm", "demo", "--simulate", "--steps", "25", "--rate", "1000"])
    assert result.exit_code == 0, result.output
    assert "Stopped after 25 registrations" in result.output
    assert client.get("/api/v1/contacts/").json["total"] == before + 25
    status = client.get("/api/v1/distribution_status/").json
    open_assigned = client.get("/api/v1/contacts/?status=open&unassigned=false").json["total"]
    assert sum(op["active_leads"] for op in status["operators"]) == open_assigned
