"""The supervisor's pages for operators at work: operator users on the Users page, presence, idle setting and
history on the Operators page, presence and the totals of those at work on the load table, and the shell."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts, distribution, queries
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, OperatorEvent, User, utcnow
from leadcrm.vocabulary import Role
from tests.helpers import add_operator, add_source, add_user, csrf_token_of, login_client, phone

HTMX = {"HX-Request": "true"}


def post_form(client: FlaskClient, path: str, data: dict, htmx: bool = False, **kw):
    token = csrf_token_of(client.get("/").get_data(as_text=True))
    if htmx:
        return client.post(path, data=data, headers={"X-CSRFToken": token, **HTMX}, **kw)
    return client.post(path, data={"csrf_token": token, **data}, **kw)


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def team(app: Flask, client: FlaskClient) -> dict[str, int]:
    """Anna (limit 3) and Boris (limit 2), no users yet."""
    with app.app_context():
        anna = add_operator("Anna Smirnova", 3)
        boris = add_operator("Boris", 2)
        db.session.commit()
        return {"anna": anna.id, "boris": boris.id}


def user_named(name: str) -> User | None:
    return db.session.scalar(sa.select(User).where(User.username == name))


# --- the Users page ----------------------------------------------------------------------------


def test_users_page_creates_an_operator_user_linked_to_its_operator(
    app: Flask, client: FlaskClient, team: dict
) -> None:
    page = text(client.get("/users/"))
    assert 'name="operator_id"' in page and "Anna Smirnova" in page and "for operator users" in page
    response = post_form(
        client,
        "/users/",
        {"username": "anna", "password": "long enough!", "role": "operator", "operator_id": str(team["anna"])},
    )
    assert response.status_code == 302, text(response)
    with app.app_context():
        anna = user_named("anna")
        assert anna is not None and anna.role == Role.OPERATOR and anna.operator_id == team["anna"]
    page = text(client.get("/users/"))
    # Anna's row shows the operator it works as; the create form marks that operator as taken.
    assert f'<option value="{team["anna"]}" selected>Anna Smirnova</option>' in page
    assert f'<option value="{team["anna"]}" disabled>Anna Smirnova (has a user)</option>' in page


def test_an_operator_user_needs_a_free_operator_and_the_error_is_next_to_the_field(
    app: Flask, client: FlaskClient, team: dict
) -> None:
    none_chosen = post_form(
        client, "/users/", {"username": "Nobody", "password": "long enough!", "role": "operator", "operator_id": ""}
    )
    assert none_chosen.status_code == 422
    html = text(none_chosen)
    assert '<p class="error" id="operator_id-error">Choose the operator this user works as.</p>' in html
    assert 'value="Nobody"' in html
    with app.app_context():
        accounts.create_user(
            db.session(), username="first", password="long enough!", role="operator", operator_id=team["anna"]
        )
        db.session.commit()
    taken = post_form(
        client,
        "/users/",
        {"username": "Second", "password": "long enough!", "role": "operator", "operator_id": str(team["anna"])},
    )
    assert taken.status_code == 422
    html = text(taken)
    assert '<p class="error" id="operator_id-error">This operator already has a user.</p>' in html
    assert 'value="Second"' in html
    for bad in ("abc", "99999999999999999999", str(team["boris"] + 100)):
        odd = post_form(
            client, "/users/", {"username": "Third", "password": "long enough!", "role": "operator", "operator_id": bad}
        )
        assert odd.status_code == 422 and 'id="operator_id-error"' in text(odd) and 'value="Third"' in text(odd)
    intake_with_operator = post_form(
        client,
        "/users/",
        {"username": "Irina", "password": "long enough!", "role": "intake", "operator_id": str(team["boris"])},
    )
    assert intake_with_operator.status_code == 422 and 'id="operator_id-error"' in text(intake_with_operator)
    with app.app_context():
        assert {u.username for u in accounts.list_users(db.session())} == {"boss", "first"}


def test_link_unlink_and_role_changes_leave_the_operator_and_its_contacts(
    app: Flask, client: FlaskClient, team: dict
) -> None:
    with app.app_context():
        source = add_source("bot", {db.session.get_one(Operator, team["anna"]): 1})
        db.session.commit()
        distribution.register_contact(db.session(), source=source, identity=phone(1))
        db.session.commit()
        irina = add_user("irina", Role.INTAKE)
        irina_id = irina.id
    # Becoming an operator user takes its operator.
    no_operator = post_form(client, f"/users/{irina_id}/role", {"role": "operator", "operator_id": ""})
    assert no_operator.status_code == 422 and "Choose the operator this user works as." in text(no_operator)
    assert (
        post_form(client, f"/users/{irina_id}/role", {"role": "operator", "operator_id": str(team["anna"])}).status_code
        == 302
    )
    with app.app_context():
        assert db.session.get_one(User, irina_id).operator_id == team["anna"]
    # Relink to Boris, then unlink.
    assert post_form(client, f"/users/{irina_id}/operator", {"operator_id": str(team["boris"])}).status_code == 302
    with app.app_context():
        assert db.session.get_one(User, irina_id).operator_id == team["boris"]
    assert post_form(client, f"/users/{irina_id}/operator", {"operator_id": ""}).status_code == 302
    with app.app_context():
        assert db.session.get_one(User, irina_id).operator_id is None
        other = add_user("other", Role.OPERATOR)
        accounts.link_operator(db.session(), other, team["anna"])
        db.session.commit()
    taken = post_form(client, f"/users/{irina_id}/operator", {"operator_id": str(team["anna"])})
    assert taken.status_code == 422
    assert f'id="password-{irina_id}-error">This operator already has a user; unlink it first.' in text(taken)
    assert post_form(client, f"/users/{irina_id}/operator", {"operator_id": str(team["boris"])}).status_code == 302
    # Leaving the operator role unlinks; the operator and its contacts stay.
    assert post_form(client, f"/users/{irina_id}/role", {"role": "intake"}).status_code == 302
    with app.app_context():
        assert db.session.get_one(User, irina_id).operator_id is None
        assert db.session.get(Operator, team["boris"]) is not None
        other_id = user_named("other").id  # type: ignore[union-attr]
    # Deactivating an operator user leaves its operator and its open contact as they are.
    assert post_form(client, f"/users/{other_id}/active", {"is_active": "0"}).status_code == 302
    with app.app_context():
        other = db.session.get_one(User, other_id)
        assert not other.is_active and other.operator_id == team["anna"]
        anna = db.session.get_one(Operator, team["anna"])
        assert anna.is_active and anna.active_leads == 1
        assert db.session.scalar(sa.select(Contact.operator_id)) == team["anna"]


# --- the Operators page ------------------------------------------------------------------------


def test_presence_toggle_is_recorded_with_its_actor_and_shown_in_the_row(
    app: Flask, client: FlaskClient, team: dict
) -> None:
    response = post_form(client, f"/operators/{team['anna']}", {"presence": "away"}, htmx=True)
    assert response.status_code == 200 and response.headers["HX-Trigger"] == "operators-changed"
    row = text(response)
    assert row.lstrip().startswith(f'<tr id="operator-{team["anna"]}"')
    assert "boss: presence → away" in row
    with app.app_context():
        event = db.session.scalar(sa.select(OperatorEvent))
        assert event is not None
        assert (event.operator_id, event.field, event.value, event.actor) == (
            team["anna"],
            "presence",
            "away",
            "user:boss",
        )
        assert db.session.get_one(Operator, team["anna"]).presence == "away"
    assert post_form(client, f"/operators/{team['anna']}", {"presence": "available"}).location == "/operators/"
    page = text(client.get("/operators/"))
    assert "boss: presence → available" in page and "boss: presence → away" in page
    assert post_form(client, f"/operators/{team['anna']}", {"presence": "asleep"}).status_code == 422


def test_operators_page_names_the_linked_user(app: Flask, client: FlaskClient, team: dict) -> None:
    with app.app_context():
        accounts.create_user(
            db.session(), username="anna", password="long enough!", role="operator", operator_id=team["anna"]
        )
        db.session.commit()
    assert "user: anna" in text(client.get("/operators/"))


def test_idle_setting_is_saved_and_turned_off(app: Flask, client: FlaskClient, team: dict) -> None:
    response = post_form(client, f"/operators/{team['boris']}", {"idle_away_minutes": "15"}, htmx=True)
    assert response.status_code == 200 and 'value="15"' in text(response)
    with app.app_context():
        assert db.session.get_one(Operator, team["boris"]).idle_away_minutes == 15
    assert post_form(client, f"/operators/{team['boris']}", {"idle_away_minutes": ""}).status_code == 302
    with app.app_context():
        assert db.session.get_one(Operator, team["boris"]).idle_away_minutes is None
        fields = db.session.scalars(sa.select(OperatorEvent.value).order_by(OperatorEvent.id)).all()
        assert fields == ["15", None]
    assert "boss: away after minutes idle → off" in text(client.get("/operators/"))


@pytest.mark.parametrize("typed", ["0", "-1", "99999999", "abc"])
def test_a_bad_idle_setting_is_an_error_next_to_the_field(
    app: Flask, client: FlaskClient, team: dict, typed: str
) -> None:
    op = team["boris"]
    for htmx in (True, False):
        response = post_form(client, f"/operators/{op}", {"idle_away_minutes": typed}, htmx=htmx)
        assert response.status_code == 422
        html = text(response)
        assert f'id="idle-{op}-error"' in html and f'value="{typed}"' in html
    with app.app_context():
        assert db.session.get_one(Operator, op).idle_away_minutes is None
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OperatorEvent)) == 0


# --- the load table ----------------------------------------------------------------------------


def test_load_table_shows_presence_and_the_totals_of_those_at_work(app: Flask, client: FlaskClient, team: dict) -> None:
    with app.app_context():
        source = add_source("bot", {db.session.get_one(Operator, team["anna"]): 1})
        db.session.commit()
        distribution.register_contact(db.session(), source=source, identity=phone(1))
        db.session.commit()
        idle = add_operator("Idle Ivan", 4)
        idle.idle_away_minutes = 5
        idle.last_seen_at = utcnow() - timedelta(minutes=6)
        away = add_operator("Away Vera", 5)
        away.presence = "away"
        gone = add_operator("Gone Gleb", 6, active=False)
        db.session.commit()
        ids = {"idle": idle.id, "away": away.id, "gone": gone.id}
    page = text(client.get("/"))

    def presence(op_id: int) -> str:
        start = page.index(f'<td data-testid="presence-{op_id}">') + len(f'<td data-testid="presence-{op_id}">')
        return page[start : page.index("</td>", start)].strip()

    assert presence(team["anna"]) == "available" and presence(team["boris"]) == "available"
    assert presence(ids["idle"]) == "away (idle)"
    assert presence(ids["away"]) == "away"
    assert presence(ids["gone"]) == "inactive"
    assert f'<tr id="load-operator-{ids["away"]}" class="away">' in page
    assert f'<tr id="load-operator-{ids["idle"]}" class="away">' in page
    assert f'<tr id="load-operator-{ids["gone"]}" class="inactive">' in page
    # At work: Anna (1 of 3) and Boris (0 of 2).
    assert "At work now (can take contacts): 2" in page
    assert '<span data-testid="totals-load">1 / 5</span>' in page and 'data-testid="totals-free">4</td>' in page
    # The idle operator opens the inbox (a sign of life): at work again.
    with app.app_context():
        db.session.get_one(Operator, ids["idle"]).last_seen_at = utcnow()
        db.session.commit()
    page = text(client.get("/", headers=HTMX))
    assert "At work now (can take contacts): 3" in page and 'data-testid="totals-free">8</td>' in page


def test_supervisor_sets_presence_from_the_load_table(app: Flask, client: FlaskClient, team: dict) -> None:
    page = text(client.get("/"))
    assert f'id="presence-toggle-{team["anna"]}"' in page and 'name="next" value="/"' in page
    response = post_form(client, f"/operators/{team['anna']}", {"presence": "away", "next": "/"}, htmx=True)
    assert response.status_code == 200 and response.headers["HX-Trigger"] == "operators-changed"
    assert '<td data-testid="presence-{}">away</td>'.format(team["anna"]) in text(client.get("/"))
    plain = post_form(client, f"/operators/{team['anna']}", {"presence": "available", "next": "/"})
    assert plain.status_code == 302 and plain.location == "/"
    assert '<td data-testid="presence-{}">available</td>'.format(team["anna"]) in text(client.get("/"))
    elsewhere = post_form(client, f"/operators/{team['anna']}", {"presence": "away", "next": "https://evil.example/"})
    assert elsewhere.location == "/operators/"
    with app.app_context():
        actors = db.session.scalars(sa.select(OperatorEvent.actor)).all()
        assert actors == ["user:boss"] * 3


def test_intake_sees_presence_but_cannot_change_it(app: Flask, client: FlaskClient, team: dict) -> None:
    with app.app_context():
        irina = add_user("irina", Role.INTAKE)
    intake = login_client(app, irina)
    page = text(intake.get("/"))
    assert f'<td data-testid="presence-{team["anna"]}">available</td>' in page
    assert "presence-toggle-" not in page


# --- the assign picker -------------------------------------------------------------------------


def test_assign_picker_offers_first_only_operators_at_work(app: Flask, client: FlaskClient, team: dict) -> None:
    with app.app_context():
        anna = db.session.get_one(Operator, team["anna"])
        boris = db.session.get_one(Operator, team["boris"])
        source = add_source("bot", {anna: 1, boris: 1})
        anna.presence = "away"
        boris.idle_away_minutes = 1
        boris.last_seen_at = utcnow() - timedelta(minutes=2)
        db.session.commit()
        first, rest = queries.operator_choices(db.session(), source.id)
        assert first == [] and [op.name for op in rest] == ["Anna Smirnova", "Boris"]
        waiting = distribution.register_contact(db.session(), source=source, identity=phone(1))
        db.session.commit()
        contact_id = db.session.scalar(sa.select(Contact.id))
        assert db.session.get_one(Contact, contact_id).operator_id is None, waiting
        boris.last_seen_at = utcnow()
        db.session.commit()
        first, rest = queries.operator_choices(db.session(), source.id)
        assert [op.name for op in first] == ["Boris"] and [op.name for op in rest] == ["Anna Smirnova"]
    page = text(client.get(f"/contacts/{contact_id}"))
    assert "Anna Smirnova (0 / 3, away)" in page


# --- the shell ---------------------------------------------------------------------------------


def test_users_cli_creates_operator_users_by_name_or_id(app: Flask, team: dict) -> None:
    runner = app.test_cli_runner()
    by_name = runner.invoke(
        args=["leadcrm", "users", "create", "anna", "--role", "operator", "--operator", "Anna Smirnova"],
        input="pass phrase 1\n" * 2,
    )
    assert by_name.exit_code == 0, by_name.output
    assert f"working as operator 'Anna Smirnova' (#{team['anna']})" in by_name.output
    by_id = runner.invoke(
        args=["leadcrm", "users", "create", "boris", "--role", "operator", "--operator", str(team["boris"])],
        input="pass phrase 1\n" * 2,
    )
    assert by_id.exit_code == 0, by_id.output
    listed = runner.invoke(args=["leadcrm", "users", "list"]).output
    assert f"anna\toperator\tactive\toperator 'Anna Smirnova' (#{team['anna']})" in listed
    assert f"boris\toperator\tactive\toperator 'Boris' (#{team['boris']})" in listed
    unknown = runner.invoke(
        args=["leadcrm", "users", "create", "vera", "--role", "operator", "--operator", "Vera"],
        input="pass phrase 1\n" * 2,
    )
    assert unknown.exit_code == 1 and "No operator named or numbered “Vera”." in unknown.output
    assert "Traceback" not in unknown.output and isinstance(unknown.exception, SystemExit)  # a ClickException
    taken = runner.invoke(
        args=["leadcrm", "users", "create", "anna2", "--role", "operator", "--operator", "Anna Smirnova"],
        input="pass phrase 1\n" * 2,
    )
    assert taken.exit_code == 1
    # Said once: the field's message repeats the error's (the Users page shows it next to the field instead).
    assert taken.output.strip().splitlines()[-1] == "Error: This operator already has a user; unlink it first."
    missing = runner.invoke(
        args=["leadcrm", "users", "create", "gleb", "--role", "operator"], input="pass phrase 1\n" * 2
    )
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines()[-1] == "Error: Choose the operator this user works as."
    with app.app_context():
        assert {u.username for u in accounts.list_users(db.session())} == {"boss", "anna", "boris"}
