"""One error path: every error, on a page URL and on an API URL, through leadcrm/web/errors.py.

Pages get the app's own error page (in the reader's language, with the
navigation for a logged-in user), the API its JSON error with a stable code.
Where the app has a real way to cause a status it is used; the statuses no
page or endpoint of ours can cause (a 415 on a page, a 500) come from a route
this test adds, which raises what a view would.
"""

import ast
import re
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from flask import Flask, abort
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from leadcrm import accounts
from leadcrm.auth import public
from leadcrm.errors import Conflict, InvalidInput
from leadcrm.extensions import db
from leadcrm.vocabulary import Role, TokenScope
from tests.helpers import PASSWORD, add_token, add_user, login_client

PROJECT_ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
HTMX = {"HX-Request": "true"}
RU = {"Accept-Language": "ru"}

# Each page's title in both languages, written out here independently of the app's catalog.
TITLES = {
    "bad_request": ("This request could not be understood", "Запрос не удалось понять"),
    "forbidden": ("Not allowed", "Нет доступа"),
    "not_found": ("Not found", "Не найдено"),
    "method_not_allowed": ("Not possible here", "Здесь так нельзя"),
    "conflict": ("Changed meanwhile", "Уже изменено"),
    "request_entity_too_large": ("Too large", "Слишком большой объём"),
    "unsupported_media_type": ("Not understood", "Формат не понят"),
    "validation_error": ("This cannot be saved", "Это нельзя сохранить"),
    "too_many_attempts": ("Too many attempts", "Слишком много попыток"),
    "csrf_failed": ("This form could not be accepted", "Форму не удалось принять"),
    "internal_error": ("Something went wrong", "Что-то пошло не так"),
    "database_unavailable": ("Try again in a moment", "Повторите чуть позже"),
}


def _fault(kind: str) -> NoReturn:
    """What a view might raise, by name: for the statuses nothing of ours causes on demand."""
    if kind == "conflict":
        raise Conflict("The contact changed meanwhile; look again.")
    if kind == "invalid":
        raise InvalidInput("Check the fields.", {"name": "Give a name."})
    if kind == "throttled":
        raise accounts.LoginThrottled("Too many failed attempts.", retry_after=30)
    if kind == "crash":
        raise RuntimeError("a bug")
    if kind == "database":
        raise sa.exc.OperationalError("SELECT 1", None, Exception("server closed the connection"))
    abort(int(kind))


@pytest.fixture
def faulty(app: Flask) -> Flask:
    """The app with a page route and an API route that raise on demand (added before any request)."""
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 is answered, as in production, not raised into the test
    app.add_url_rule("/faults/<kind>", "fault_page", public(_fault), methods=["GET", "POST"])
    app.add_url_rule(f"{API}/faults/<kind>", "fault_api", public(_fault), methods=["GET", "POST"])
    return app


@pytest.fixture
def people(faulty: Flask) -> dict[str, FlaskClient]:
    with faulty.app_context():
        boss = add_user("boss", Role.SUPERVISOR)
        irina = add_user("irina", Role.INTAKE)
        full = add_token("crm", TokenScope.FULL)
        register = add_token("bot", TokenScope.REGISTER)
    bot = faulty.test_client()
    bot.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {register}"
    return {
        "boss": login_client(faulty, boss, token=full),
        "irina": login_client(faulty, irina),
        "anonymous": faulty.test_client(),
        "bot": bot,
    }


def csrf_of(client: FlaskClient) -> str:
    page = client.get("/login", follow_redirects=True).get_data(as_text=True)
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def json_of(response: TestResponse) -> Any:
    return response.get_json()


def page_request(people: dict[str, FlaskClient], case: str, headers: dict[str, str]) -> TestResponse:
    """A page request that ends in the error ``case``, as a browser would send it."""
    boss = people["boss"]
    if case == "bad_request":
        return boss.get("/leads/?q=a%00b", headers=headers)
    if case == "forbidden":
        return people["irina"].get("/operators/", headers=headers)
    if case == "not_found":
        return boss.get("/no/such/page", headers=headers)
    if case == "method_not_allowed":
        return boss.get("/contacts/bulk", headers=headers)
    if case == "request_entity_too_large":
        body = {"csrf_token": csrf_of(boss), "message": "x" * (1024 * 1024 + 1)}
        return boss.post("/intake/", data=body, headers=headers)
    if case == "too_many_attempts":
        anonymous = people["anonymous"]
        for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS + 1):
            form = {"csrf_token": csrf_of(anonymous), "username": "irina", "password": "a guess"}
            response = anonymous.post("/login", data=form, headers=headers)
        return response
    if case == "csrf_failed":
        return boss.post("/operators/", data={"name": "X", "max_active_leads": "1"}, headers=headers)
    kind = {
        "conflict": "conflict",
        "unsupported_media_type": "415",
        "validation_error": "invalid",
        "internal_error": "crash",
        "database_unavailable": "database",
    }[case]
    return boss.get(f"/faults/{kind}", headers=headers)


def api_request(people: dict[str, FlaskClient], case: str) -> TestResponse:
    """An API request that ends in the error ``case``, as an integration would send it."""
    crm = people["boss"]  # a full token on /api/v1
    if case == "bad_request":
        return crm.post(f"{API}/operators/", data="{not json", content_type="application/json")
    if case == "forbidden":
        return people["bot"].get(f"{API}/operators/")
    if case == "not_found":
        return crm.get(f"{API}/contacts/99")
    if case == "method_not_allowed":
        return crm.delete(f"{API}/operators/")
    if case == "conflict":
        crm.post(f"{API}/operators/", json={"name": "Ann", "max_active_leads": 1})
        return crm.post(f"{API}/operators/", json={"name": "Ann", "max_active_leads": 1})
    if case == "request_entity_too_large":
        return crm.post(f"{API}/operators/", json={"name": "x" * (1024 * 1024 + 1), "max_active_leads": 1})
    if case == "unsupported_media_type":
        return crm.post(f"{API}/operators/", data="name=Ann", content_type="text/plain")
    if case == "validation_error":
        return crm.post(f"{API}/operators/", json={"max_active_leads": -1})
    if case == "csrf_failed":
        # A browser session on the API (no token) must send the page's CSRF token.
        irina = people["irina"]
        return irina.post(f"{API}/contacts/1/close", json={})
    kind = {"too_many_attempts": "throttled", "internal_error": "crash", "database_unavailable": "database"}[case]
    return crm.get(f"{API}/faults/{kind}")


STATUSES = {
    "bad_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "request_entity_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "too_many_attempts": 429,
    "csrf_failed": 400,
    "internal_error": 500,
    "database_unavailable": 503,
}
# Codes that differ on the API for the same status: a taken name is a kind of conflict.
API_CODES = {"conflict": "name_taken"}


@pytest.mark.parametrize("case", list(STATUSES))
def test_every_error_is_the_apps_own_page_in_both_languages(people: dict[str, FlaskClient], case: str) -> None:
    for language, headers in enumerate(({}, RU)):
        response = page_request(people, case, headers)
        html = response.get_data(as_text=True)
        assert response.status_code == STATUSES[case], (case, html[:300])
        assert response.mimetype == "text/html"
        assert f'data-error="{case}"' in html
        assert f"<h1>{TITLES[case][language]}</h1>" in html
        assert 'lang="ru"' in html if language else 'lang="en"' in html
        assert "Content-Security-Policy" in response.headers
        if case in ("too_many_attempts", "database_unavailable"):
            assert int(response.headers["Retry-After"]) > 0
        if case == "method_not_allowed":
            assert "POST" in response.headers["Allow"]
        people["anonymous"].environ_base["REMOTE_ADDR"] = "198.51.100.9"  # the next round's throttle starts afresh


@pytest.mark.parametrize("case", list(STATUSES))
def test_every_error_on_the_api_is_json_with_its_code(people: dict[str, FlaskClient], case: str) -> None:
    response = api_request(people, case)
    assert response.status_code == STATUSES[case], response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    error = json_of(response)["error"]
    assert error["code"] == API_CODES.get(case, case)
    assert isinstance(error["message"], str) and error["message"]
    if case == "validation_error":
        assert set(error["fields"]) == {"name", "max_active_leads"}
    if case in ("too_many_attempts", "database_unavailable"):
        assert int(response.headers["Retry-After"]) > 0
    if case == "method_not_allowed":
        assert "POST" in response.headers["Allow"]
    if case == "not_found":
        # The API speaks one language, whatever the caller's browser prefers.
        assert error["message"] == "No contact with id 99."
        assert json_of(people["boss"].get(f"{API}/contacts/99", headers=RU)) == json_of(response)


def test_an_unknown_caller_is_sent_to_the_login_form_on_pages_and_challenged_on_the_api(
    people: dict[str, FlaskClient],
) -> None:
    anonymous = people["anonymous"]
    page = anonymous.get("/operators/")
    assert page.status_code == 302 and page.location == "/login?next=/operators/"
    fragment = anonymous.get("/operators/", headers=HTMX)
    assert fragment.status_code == 401 and fragment.headers["HX-Redirect"] == "/login?next=/operators/"
    assert "HX-Request" in fragment.headers["Vary"]
    api = anonymous.get(f"{API}/operators/")
    assert api.status_code == 401 and json_of(api)["error"]["code"] == "unauthorized"
    assert api.headers["WWW-Authenticate"] == 'Bearer realm="leadcrm"'
    unknown = anonymous.get(f"{API}/operators/", headers={"Authorization": "Bearer lcrm_nonsense"})
    assert unknown.status_code == 401 and "unknown or revoked" in json_of(unknown)["error"]["message"]


def test_the_404_page_has_the_navigation_of_the_logged_in_user(people: dict[str, FlaskClient]) -> None:
    boss = people["boss"].get("/no/such/page").get_data(as_text=True)
    assert "<nav" in boss and 'href="/operators/"' in boss and "boss" in boss
    irina = people["irina"].get("/contacts/99", headers=RU).get_data(as_text=True)
    assert "<nav" in irina and 'href="/operators/"' not in irina and "Не найдено" in irina
    assert "<nav" not in people["anonymous"].get("/no/such/page").get_data(as_text=True)


def test_the_error_page_links_back_where_the_user_came_from(people: dict[str, FlaskClient]) -> None:
    boss = people["boss"]
    came_from = boss.get("/contacts/99", headers={"Referer": "http://localhost/contacts/?status=open"})
    assert '<a href="/contacts/?status=open">Back</a>' in came_from.get_data(as_text=True)
    elsewhere = boss.get("/contacts/99", headers={"Referer": "https://evil.example/contacts/"})
    assert '<a href="/">Back to the load table</a>' in elsewhere.get_data(as_text=True)


def test_a_csrf_failure_on_a_form_page_is_the_apps_own_400_page(people: dict[str, FlaskClient]) -> None:
    response = people["boss"].post("/intake/", data={"phone": "+79001234567"}, headers=RU)
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and 'data-error="csrf_failed"' in html
    assert "Форму не удалось принять" in html and "<nav" in html
    assert "The CSRF token is missing" not in html  # Flask-WTF's own English reason is not for users


def test_the_pages_of_an_unavailable_database_do_not_query_it(faulty: Flask, people: dict[str, FlaskClient]) -> None:
    statements: list[str] = []
    with faulty.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    response = people["boss"].get("/faults/database")
    assert response.status_code == 503 and "<nav" not in response.get_data(as_text=True)
    # Only the access check's read of the login session, before the view failed: the page read nothing.
    reads = [statement for statement in statements if statement != "BEGIN"]  # SQLite's BEGIN, sent by leadcrm
    assert len(reads) == 1 and "login_sessions" in reads[0]


def test_a_throttled_login_answers_429_through_the_error_page(people: dict[str, FlaskClient]) -> None:
    anonymous = people["anonymous"]
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS):
        form = {"csrf_token": csrf_of(anonymous), "username": "irina", "password": "a guess"}
        assert anonymous.post("/login", data=form).status_code == 401
    form = {"csrf_token": csrf_of(anonymous), "username": "irina", "password": PASSWORD}
    refused = anonymous.post("/login", data=form, headers=RU)
    html = refused.get_data(as_text=True)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert 'data-error="too_many_attempts"' in html and "Слишком много неудачных попыток" in html


# --- layers ----------------------------------------------------------------------------------

# The factory assembles the app from both edges: the one module below them that may name them.
FACTORY = "leadcrm/__init__.py"


def edge_imports(path: Path) -> list[str]:
    """Every import of leadcrm.api or leadcrm.web in ``path``, at any depth (inside functions too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import web, from .api import x
                base = "leadcrm" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if re.match(r"leadcrm\.(api|web)\b", name)]
    return [f"{path.name}:{line} {name}" for line, name in sorted(found)]


def test_no_module_below_the_edges_imports_them() -> None:
    modules = [
        p for p in sorted((PROJECT_ROOT / "leadcrm").glob("*.py")) if p.relative_to(PROJECT_ROOT).as_posix() != FACTORY
    ]
    assert len(modules) > 10
    assert [found for module in modules for found in edge_imports(module)] == []


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text(
        "def f():\n    from leadcrm.web.rendering import render\n\n"
        "def g():\n    import leadcrm.api.errors\n\n"
        "from leadcrm import web\n"
        "from leadcrm.webhooks import deliver\n"
    )
    assert edge_imports(module) == [
        "sneaky.py:2 leadcrm.web.rendering",
        "sneaky.py:2 leadcrm.web.rendering.render",
        "sneaky.py:5 leadcrm.api.errors",
        "sneaky.py:7 leadcrm.web",
    ]
