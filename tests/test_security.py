"""Accounts, login and its throttle, API tokens, CSRF, cookies, security headers and escaping."""

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import click
import pytest
import requests
import sqlalchemy as sa
from flask import Flask, current_app
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from leadcrm import accounts, create_app
from leadcrm.cli import ensure_first_admin
from leadcrm.errors import Conflict
from leadcrm.extensions import db
from leadcrm.models import ApiToken, LoginFailure, LoginSession, User, utcnow
from leadcrm.vocabulary import Role, TokenScope
from tests.helpers import PASSWORD, add_token, add_user, csrf_token_of, json_of, login_client, password_hash
from tests.servers import api_session, create_token, gunicorn
from tests.test_web import HTMX, post_form, text

API = "/api/v1"


def log_in(client: FlaskClient, username: str, password: str = PASSWORD, **kw):
    page = text(client.get("/login"))
    csrf = csrf_token_of(page)
    return client.post("/login", data={"csrf_token": csrf, "username": username, "password": password}, **kw)


@pytest.fixture
def people(app: Flask) -> dict[str, User]:
    with app.app_context():
        return {"vera": add_user("vera", Role.SUPERVISOR), "irina": add_user("irina", Role.INTAKE)}


# --- login and logout -------------------------------------------------------------------------


def test_login_takes_the_user_back_where_they_were_going(anonymous: FlaskClient, people) -> None:
    response = anonymous.get("/sources/")
    assert response.status_code == 302 and response.location == "/login?next=/sources/"
    response = log_in(anonymous, "Vera", query_string={"next": "/sources/"})  # usernames ignore case
    assert response.status_code == 302 and response.location == "/sources/"
    assert anonymous.get("/sources/").status_code == 200


def test_login_never_redirects_off_site_and_sends_intake_staff_to_intake(anonymous: FlaskClient, people) -> None:
    response = log_in(anonymous, "irina", query_string={"next": "//evil.example/"})
    assert response.location == "/intake/"


# Known ways past a naive "starts with one slash" check, as the server receives them (decoded).
REDIRECT_BYPASSES = [
    "//evil.example/",
    "///evil.example/",
    "/\t/evil.example/phish",
    "/\n/evil.example/",
    "/\r/evil.example/",
    "/\r\n/evil.example/",
    "/\n",
    "\t//evil.example/",
    " //evil.example/",
    "/\\evil.example/",
    "\\/evil.example/",
    "\\\\evil.example/",
    "/\\/evil.example/",
    "/%2F/evil.example/",
    "/%2f%2fevil.example/",
    "%2F%2Fevil.example/",
    "/%5Cevil.example/",
    "/%09/evil.example/",
    "/%0a/evil.example/",
    "javascript:alert(1)",
    "JavaScript:alert(document.domain)//",
    "\x01javascript:alert(1)",
    "http:evil.example",
    "http:/evil.example",
    "https://evil.example/",
    "https:\\\\evil.example",
    "evil.example",
    "/\u3000/evil.example/",
    "/\u00a0/evil.example/",
    "/\u200b/evil.example/",
    "/\u2028/evil.example/",
    "/\ufeff/evil.example/",
    "/%E3%80%80/evil.example/",
    "/\x7f/evil.example/",
    "/" + "a" * 5000,
    "/" + "/" * 5000 + "evil.example",
]


def redirects_on_this_site(response) -> bool:
    """A redirect whose Location a browser resolves to this site (browsers drop tabs and newlines, read \\ as /)."""
    location = response.headers.get("Location", "")
    seen_by_browser = re.sub(r"[\t\r\n]", "", location).replace("\\", "/").strip("\x00- ")
    resolved = urlsplit(urljoin("http://leadcrm.test/here", seen_by_browser))
    return (
        response.status_code in (302, 303)
        and location.startswith("/")
        and not location.startswith("//")
        and (resolved.scheme, resolved.netloc) == ("http", "leadcrm.test")
    )


def test_no_next_target_leads_off_site_or_fails(app: Flask, client: FlaskClient, people) -> None:
    operators = [json_of(client.post(f"{API}/operators/", json={"name": n, "max_active_leads": 5})) for n in "AB"]
    client.post(f"{API}/sources/", json={"name": "web_form"})
    client.post(f"{API}/sources/1/config", json={"operator_id": operators[0]["id"], "weight": 1})
    registered = [
        client.post(f"{API}/contacts/register", json={"source_id": 1, "phone": f"+7900123456{n}"}) for n in range(2)
    ]
    contact_id, moved_id = (json_of(response)["contact"]["id"] for response in registered)
    csrf = csrf_token_of(text(client.get("/")))
    anonymous = app.test_client()
    for n, target in enumerate(REDIRECT_BYPASSES):
        answers = {
            "language switch": anonymous.get("/language/en", query_string={"next": target}),
            "login page when logged in": client.get("/login", query_string={"next": target}),
            "close": client.post(f"/contacts/{contact_id}/close", data={"csrf_token": csrf, "next": target}),
            "bulk": client.post(
                "/contacts/bulk",
                data={"csrf_token": csrf, "action": "close", "contact_id": str(contact_id), "next": target},
            ),
            "assign": client.post(
                f"/contacts/{moved_id}/assign",
                data={"csrf_token": csrf, "operator_id": operators[(n + 1) % 2]["id"], "next": target},
            ),
        }
        if target in REDIRECT_BYPASSES[:6] or len(target) > 1000:
            # Logging in hashes a password: a few of the targets are enough.
            answers["login"] = log_in(app.test_client(), "vera", query_string={"next": target})
        for place, response in answers.items():
            assert redirects_on_this_site(response), (place, target, response.status_code, response.location)


@pytest.mark.parametrize(
    "target", ["/sources/", "/contacts/?status=open&operator_id=2", "/leads/?q=%D0%98%D0%B2%D0%B0%D0%BD+x", "/"]
)
def test_next_targets_on_this_site_are_kept(client: FlaskClient, target: str) -> None:
    assert client.get("/language/en", query_string={"next": target}).location == target
    assert client.get("/login", query_string={"next": target}).location == target


def test_wrong_password_or_unknown_user_shows_one_message_and_keeps_the_username(
    anonymous: FlaskClient, people
) -> None:
    for username in ("vera", "nobody"):
        response = log_in(anonymous, username, "wrong password")
        assert response.status_code == 401
        html = text(response)
        assert "Wrong username or password." in html and f'value="{username}"' in html
    assert anonymous.get("/").status_code == 302


def test_login_form_needs_its_csrf_token(anonymous: FlaskClient, people) -> None:
    response = anonymous.post("/login", data={"username": "vera", "password": PASSWORD})
    assert response.status_code == 400
    assert anonymous.get("/").status_code == 302


def test_logout_ends_the_session(anonymous: FlaskClient, people) -> None:
    log_in(anonymous, "vera")
    assert anonymous.get("/").status_code == 200
    assert anonymous.post("/logout").status_code == 400  # a cross-site form cannot log you out
    assert post_form(anonymous, "/logout", {}).location == "/login"
    assert anonymous.get("/").status_code == 302


def copy_of_session(app: Flask, client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie (a stolen or shared cookie)."""
    other = app.test_client()
    cookie = client.get_cookie("session")
    assert cookie is not None
    other.set_cookie("session", cookie.value)
    return other


def test_a_cookie_copied_before_logout_opens_nothing_afterwards(app: Flask, people) -> None:
    vera = app.test_client()
    assert log_in(vera, "vera").status_code == 302
    copy = copy_of_session(app, vera)
    assert copy.get("/users/").status_code == 200
    assert post_form(vera, "/logout", {}).location == "/login"
    assert copy.get("/users/").status_code == 302
    assert vera.get("/users/").status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession)) == 0


def test_log_out_everywhere_ends_every_session_of_the_user_only(app: Flask, people) -> None:
    laptop, phone = app.test_client(), app.test_client()
    for browser in (laptop, phone):
        assert log_in(browser, "vera").status_code == 302
    irina = login_client(app, people["irina"])
    assert 'action="/account/logout-everywhere"' in text(phone.get("/account"))
    assert phone.post("/account/logout-everywhere").status_code == 400  # a cross-site form cannot
    assert post_form(phone, "/account/logout-everywhere", {}).location == "/login"
    for browser in (laptop, phone, copy_of_session(app, laptop)):
        assert browser.get("/users/").status_code == 302
    assert irina.get("/intake/").status_code == 200
    assert log_in(laptop, "vera").status_code == 302  # logging in again works


def test_login_sessions_expire_and_are_deleted_later(ctx, people) -> None:
    vera = db.session.get_one(User, people["vera"].id)
    max_age = timedelta(days=31)
    old = accounts.start_session(db.session(), vera, max_age, now=utcnow() - max_age - timedelta(seconds=1))
    current = accounts.start_session(db.session(), vera, max_age)
    assert accounts.user_of_session(db.session(), old, max_age) is None
    assert accounts.user_of_session(db.session(), current, max_age) is vera
    assert accounts.user_of_session(db.session(), "", max_age) is None
    assert accounts.user_of_session(db.session(), "x" * 5000, max_age) is None
    accounts.start_session(db.session(), vera, max_age)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession)) == 2  # the old one is gone


def test_deactivated_user_is_logged_out_and_cannot_log_in(app: Flask, client: FlaskClient, people) -> None:
    irina = login_client(app, people["irina"])
    assert irina.get("/intake/").status_code == 200
    response = post_form(client, f"/users/{people['irina'].id}/active", {"is_active": "0"})
    assert response.status_code == 302
    assert irina.get("/intake/").status_code == 302
    assert log_in(app.test_client(), "irina").status_code == 401
    # Her sessions ended for good: reactivating her does not bring the old cookie back.
    assert post_form(client, f"/users/{people['irina'].id}/active", {"is_active": "1"}).status_code == 302
    assert irina.get("/intake/").status_code == 302
    assert log_in(app.test_client(), "irina").status_code == 302


def test_new_password_ends_other_sessions(app: Flask, client: FlaskClient, people) -> None:
    irina = login_client(app, people["irina"])
    assert post_form(client, f"/users/{people['irina'].id}/password", {"password": "short"}).status_code == 422
    assert irina.get("/intake/").status_code == 200
    assert post_form(client, f"/users/{people['irina'].id}/password", {"password": "a new long one"}).status_code == 302
    assert irina.get("/intake/").status_code == 302
    assert log_in(app.test_client(), "irina").status_code == 401
    assert log_in(app.test_client(), "irina", "a new long one").status_code == 302


def test_a_login_racing_a_new_password_does_not_outlive_it(app: Flask, people, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone logging in with the old password while it is being changed gets no session that survives the change.

    The change commits right after the login's password check (measured under gunicorn: logins looping with the
    old password kept a working session after the owner changed it).
    """
    checked = accounts.authenticate

    def authenticate_then_password_changes(*args, **kwargs):
        user = checked(*args, **kwargs)
        with sa.orm.Session(db.engine) as other:  # the owner's change, in another request
            accounts.set_password_hash(
                other, other.get_one(User, people["vera"].id), generate_password_hash("brand new one")
            )
            other.commit()
        return user

    monkeypatch.setattr(accounts, "authenticate", authenticate_then_password_changes)
    intruder = app.test_client()
    log_in(intruder, "vera")  # with the old password, PASSWORD
    assert intruder.get("/users/").status_code == 302


def test_a_supervisor_who_changes_their_own_password_stays_logged_in(app: Flask, people) -> None:
    vera = app.test_client()
    log_in(vera, "vera")
    other_session = login_client(app, people["vera"])
    assert post_form(vera, f"/users/{people['vera'].id}/password", {"password": "my new passphrase"}).status_code == 302
    assert vera.get("/users/").status_code == 200
    assert other_session.get("/users/").status_code == 302


def test_anyone_changes_their_own_password_after_proving_the_current_one(app: Flask, people) -> None:
    irina = app.test_client()
    log_in(irina, "irina")
    other_session = login_client(app, people["irina"])
    assert 'href="/account"' in text(irina.get("/intake/"))
    wrong = post_form(irina, "/account", {"current_password": "guess", "new_password": "a brand new one"})
    assert wrong.status_code == 422 and "This is not your current password." in text(wrong)
    short = post_form(irina, "/account", {"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422 and "Use 10 to 256 characters." in text(short)
    done = post_form(irina, "/account", {"current_password": PASSWORD, "new_password": "a brand new one"})
    assert done.status_code == 200 and "Password changed." in text(done)
    assert irina.get("/intake/").status_code == 200
    assert other_session.get("/intake/").status_code == 302
    assert log_in(app.test_client(), "irina", "a brand new one").status_code == 302
    # Wrong current passwords count like failed logins.
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS):
        post_form(irina, "/account", {"current_password": "guess", "new_password": "another new one"})
    throttled = post_form(irina, "/account", {"current_password": "a brand new one", "new_password": "another new one"})
    assert throttled.status_code == 429 and "Too many failed attempts" in text(throttled)


def test_htmx_requests_without_a_session_are_sent_to_the_login_page(anonymous: FlaskClient) -> None:
    response = anonymous.get("/", headers=HTMX)
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=/"


# --- throttling -------------------------------------------------------------------------------


def test_an_account_is_refused_from_an_address_after_five_failures_there_but_not_elsewhere(app: Flask, people) -> None:
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS):
        assert log_in(attacker, "vera", "guess").status_code == 401
    response = log_in(attacker, "vera")  # even the right password, from there
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60
    assert "Too many failed attempts" in text(response)
    # Other accounts from the same address still work ...
    assert log_in(attacker, "irina").status_code == 302
    # ... and so does this account from anywhere else: nobody can lock it out for everyone.
    vera = app.test_client()
    vera.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert log_in(vera, "vera").status_code == 302


def test_an_account_failing_from_many_addresses_is_slowed_down_for_browsers_without_a_device_cookie(
    ctx, people
) -> None:
    start = utcnow()
    for n in range(accounts.ACCOUNT_SLOWDOWN_AFTER):
        assert accounts.authenticate(db.session(), "vera", "guess", f"10.0.0.{n}", now=start) is None
    # From now on every attempt, from any address, waits a moment after the latest failure ...
    with pytest.raises(accounts.LoginThrottled) as refused:
        accounts.authenticate(db.session(), "vera", PASSWORD, "10.9.9.9", now=start)
    assert refused.value.retry_after <= 2 and "try again in" in str(refused.value.message)
    # ... a moment that grows with every further failure, up to half a minute at most.
    now, delays = start, []
    for n in range(12):
        while True:
            try:
                assert accounts.authenticate(db.session(), "vera", "guess", f"10.1.0.{n}", now=now) is None
                break
            except accounts.LoginThrottled as exc:
                delays.append(exc.retry_after)
                now += timedelta(seconds=exc.retry_after)
    assert delays == sorted(delays) and delays[-1] <= accounts.ACCOUNT_DELAY_MAX.total_seconds() + 1
    # The right password from a fresh address gets in once the short wait is over.
    with pytest.raises(accounts.LoginThrottled) as refused:
        accounts.authenticate(db.session(), "vera", PASSWORD, "10.9.9.9", now=now)
    later = now + timedelta(seconds=refused.value.retry_after)
    assert accounts.authenticate(db.session(), "vera", PASSWORD, "10.9.9.9", now=later) is not None


def test_an_address_is_throttled_across_accounts(app: Flask, people) -> None:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    for n in range(accounts.MAX_FAILURES_PER_ADDRESS):
        assert log_in(client, f"user{n}", "guess").status_code == 401
    assert log_in(client, "vera").status_code == 429
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "203.0.113.10"
    assert log_in(other, "vera").status_code == 302


def test_throttle_forgets_old_failures_and_success_clears_the_account(ctx, people) -> None:
    start = utcnow()
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS):
        assert accounts.authenticate(db.session(), "vera", "guess", "a", now=start) is None
    with pytest.raises(accounts.LoginThrottled):
        accounts.authenticate(db.session(), "vera", PASSWORD, "a", now=start + timedelta(minutes=14))
    later = start + accounts.THROTTLE_WINDOW + timedelta(seconds=1)
    assert accounts.authenticate(db.session(), "vera", PASSWORD, "a", now=later) == db.session.get(User, 1)
    assert db.session.scalar(sa.select(sa.func.count()).where(LoginFailure.key == "user:vera")) == 0
    db.session.commit()
    assert accounts.authenticate(db.session(), "vera", PASSWORD, "a", now=later) is not None  # and again


# --- known devices ----------------------------------------------------------------------------


def device_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("leadcrm_device")
    return cookie.value if cookie else None


def slow_down_account(app: Flask, name: str) -> None:
    """Fail ``name`` from fresh addresses, as an attacker following Retry-After, until it waits the longest.

    The latest failure is a few seconds old: the account stays slowed down for about 25 s more.
    """
    now = utcnow() - timedelta(seconds=40)
    with app.app_context():
        for n in range(accounts.ACCOUNT_SLOWDOWN_AFTER + 5):
            while True:
                try:
                    assert accounts.authenticate(db.session(), name, "guess", f"10.7.{n}.1", now=now) is None
                    break
                except accounts.LoginThrottled as exc:
                    now += timedelta(seconds=exc.retry_after)
    assert now < utcnow()


def test_many_addresses_slow_an_account_down_but_never_lock_out_a_known_device(ctx, people) -> None:
    """The reviewer's attack: 5 failures per address, fired the moment each Retry-After is over."""
    key = current_app.secret_key
    assert key is not None  # the app always has one
    vera = db.session.get_one(User, people["vera"].id)
    start = utcnow()
    known = accounts.DeviceCookie(accounts.issue_device_cookie(key, vera, start), key)
    db.session.commit()
    now, address, failures = start, 0, 0
    refused_without_cookie = logged_in_with_cookie = 0
    while now < start + timedelta(seconds=90):
        try:
            assert accounts.authenticate(db.session(), "vera", "guess", f"10.3.{address}.1", now=now) is None
            failures += 1
            if failures % accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS == 0:
                address += 1
        except accounts.LoginThrottled as exc:
            now += timedelta(seconds=exc.retry_after)
            continue
        if failures < accounts.ACCOUNT_SLOWDOWN_AFTER:
            continue
        # Right after the attacker's failure: a new browser is slowed down, vera's own browser is not.
        with pytest.raises(accounts.LoginThrottled):
            accounts.authenticate(db.session(), "vera", PASSWORD, "198.51.100.7", now=now)
        refused_without_cookie += 1
        assert accounts.authenticate(db.session(), "vera", PASSWORD, "198.51.100.7", now=now, device=known) is not None
        logged_in_with_cookie += 1
    assert address <= 8 and refused_without_cookie >= 6 and logged_in_with_cookie == refused_without_cookie


def test_a_known_device_keeps_the_limits_of_its_address_and_its_own(ctx, people) -> None:
    key = current_app.secret_key
    assert key is not None  # the app always has one
    vera = db.session.get_one(User, people["vera"].id)
    start = utcnow()
    device = accounts.DeviceCookie(accounts.issue_device_cookie(key, vera, start), key)
    db.session.commit()
    # Its address may fail this account 5 times, as any browser there.
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS):
        assert accounts.authenticate(db.session(), "vera", "guess", "192.0.2.1", now=start, device=device) is None
    with pytest.raises(accounts.LoginThrottled):
        accounts.authenticate(db.session(), "vera", PASSWORD, "192.0.2.1", now=start, device=device)
    # The device itself may fail 5 times, from any addresses.
    other = accounts.DeviceCookie(accounts.issue_device_cookie(key, vera, start), key)
    for n in range(accounts.MAX_FAILURES_PER_DEVICE):
        assert accounts.authenticate(db.session(), "vera", "guess", f"192.0.3.{n}", now=start, device=other) is None
    with pytest.raises(accounts.LoginThrottled) as refused:
        accounts.authenticate(db.session(), "vera", PASSWORD, "192.0.4.1", now=start, device=other)
    assert refused.value.retry_after > 60
    # A known device's failures are its own: they do not slow the account down for anyone else.
    assert db.session.scalar(sa.select(sa.func.count()).where(LoginFailure.key == "user:vera")) == 0
    db.session.commit()
    assert accounts.authenticate(db.session(), "vera", PASSWORD, "192.0.5.1", now=start) is not None


def test_a_device_cookie_is_bound_to_its_account_its_password_and_a_year(ctx, people) -> None:
    key = current_app.secret_key
    assert key is not None  # the app always has one
    vera, irina = db.session.get_one(User, people["vera"].id), db.session.get_one(User, people["irina"].id)
    start = utcnow()
    genuine = accounts.issue_device_cookie(key, vera, start)
    db.session.commit()
    for n in range(accounts.ACCOUNT_SLOWDOWN_AFTER):
        assert accounts.authenticate(db.session(), "vera", "guess", f"10.0.0.{n}", now=start) is None
    refused = {
        "no cookie": "",
        "garbage": "not a cookie",
        "tampered": genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),
        "another key": accounts.issue_device_cookie("not our secret key", vera, start),
        "another account": accounts.issue_device_cookie(key, irina, start),
        "older than a year": accounts.issue_device_cookie(key, vera, start - timedelta(days=366)),
        "huge": genuine + "x" * 5000,
    }
    for case, cookie in refused.items():
        with pytest.raises(accounts.LoginThrottled):
            accounts.authenticate(
                db.session(), "vera", PASSWORD, "10.9.9.9", now=start, device=accounts.DeviceCookie(cookie, key)
            )
            pytest.fail(f"{case} was exempt from the slowdown")
    assert accounts.authenticate(
        db.session(), "vera", PASSWORD, "10.9.9.9", now=start, device=accounts.DeviceCookie(genuine, key)
    )
    # A new password (the account is still slowed down): the devices that knew the old one are new browsers again.
    accounts.set_password(db.session(), vera, "a brand new passphrase")
    renewed = accounts.issue_device_cookie(key, vera, start)
    db.session.commit()
    with pytest.raises(accounts.LoginThrottled):
        accounts.authenticate(
            db.session(),
            "vera",
            "a brand new passphrase",
            "10.9.9.9",
            now=start,
            device=accounts.DeviceCookie(genuine, key),
        )
    new_device = accounts.DeviceCookie(renewed, key)
    assert accounts.authenticate(
        db.session(), "vera", "a brand new passphrase", "10.9.9.9", now=start, device=new_device
    )


def test_a_browser_that_logged_in_before_skips_the_slowdown_a_new_one_or_a_forged_cookie_does_not(
    app: Flask, people
) -> None:
    vera = app.test_client()
    vera.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert log_in(vera, "vera").status_code == 302
    genuine = device_cookie(vera)
    assert genuine
    irina = app.test_client()
    assert log_in(irina, "irina").status_code == 302
    post_form(vera, "/logout", {})
    slow_down_account(app, "vera")
    # A new browser, even from vera's address, waits like the attacker ...
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    refused = log_in(stranger, "vera")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 1
    assert "Many failed attempts for this account" in text(refused)
    # ... and so does a browser whose cookie is forged, tampered with or another account's.
    forged = {
        "tampered": genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),
        "another key": accounts.issue_device_cookie("not our secret key", people["vera"]),
        "another account": device_cookie(irina),
    }
    for case, cookie in forged.items():
        assert cookie is not None, case
        browser = app.test_client()
        browser.set_cookie("leadcrm_device", cookie)
        assert log_in(browser, "vera").status_code == 429, case
    # vera's own browser logs in at once, and its cookie is renewed.
    assert log_in(vera, "vera").status_code == 302
    assert device_cookie(vera) not in (None, genuine)


def test_device_cookie_is_httponly_lax_long_lived_and_secure_over_https(app: Flask, people) -> None:
    for base, secure in (("http://localhost", False), ("https://localhost", True)):
        client = app.test_client()
        page = text(client.get("/login", base_url=base))
        assert client.get_cookie("leadcrm_device") is None
        csrf = csrf_token_of(page)
        data = {"csrf_token": csrf, "username": "vera", "password": PASSWORD}
        # Over HTTPS, Flask-WTF wants a same-origin Referer, as browsers send.
        response = client.post("/login", data=data, base_url=base, headers={"Referer": f"{base}/login"})
        assert response.status_code == 302
        (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("leadcrm_device=")]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        assert f"Max-Age={365 * 24 * 3600}" in cookie
        assert ("Secure" in cookie) == secure
    # A failed login sets none.
    client = app.test_client()
    assert log_in(client, "vera", "guess").status_code == 401
    assert device_cookie(client) is None


def test_a_known_device_changes_its_password_during_the_slowdown_and_gets_a_cookie_for_the_new_one(
    app: Flask, people
) -> None:
    irina = app.test_client()
    assert log_in(irina, "irina").status_code == 302
    before = device_cookie(irina)
    assert before is not None
    slow_down_account(app, "irina")
    done = post_form(irina, "/account", {"current_password": PASSWORD, "new_password": "a brand new one"})
    assert done.status_code == 200 and "Password changed." in text(done)
    assert device_cookie(irina) not in (None, before)
    # A browser without it proving the current password is slowed down ...
    stranger = login_client(app, people["irina"])
    refused = post_form(
        stranger, "/account", {"current_password": "a brand new one", "new_password": "another new one"}
    )
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 1
    # ... and so is one holding the cookie from before the new password.
    old_device = app.test_client()
    old_device.set_cookie("leadcrm_device", before)
    assert log_in(old_device, "irina", "a brand new one").status_code == 429
    post_form(irina, "/logout", {})
    assert log_in(irina, "irina", "a brand new one").status_code == 302


# --- users ------------------------------------------------------------------------------------


def test_supervisor_creates_users_with_hashed_passwords(client: FlaskClient) -> None:
    response = post_form(client, "/users/", {"username": "Olga", "role": "intake", "password": "short"})
    assert response.status_code == 422
    html = text(response)
    assert 'value="Olga"' in html and "Use 10 to 256 characters." in html
    assert (
        post_form(client, "/users/", {"username": "Olga", "role": "intake", "password": "long enough!"}).status_code
        == 302
    )
    again = post_form(client, "/users/", {"username": "olga", "role": "intake", "password": "long enough!"})
    assert again.status_code == 422 and "The username is taken." in text(again)
    bad = post_form(client, "/users/", {"username": "o l g a", "role": "boss", "password": "long enough!"})
    assert bad.status_code == 422 and "Not a valid choice" in text(bad)
    with client.application.app_context():
        olga = db.session.scalar(sa.select(User).where(User.username == "olga"))
        assert olga is not None
        assert (
            olga.role == Role.INTAKE
            and olga.password_hash.startswith("scrypt:")
            and "long enough" not in olga.password_hash
        )
    assert log_in(client.application.test_client(), "olga", "long enough!").location == "/intake/"


def test_role_changes_take_effect_at_once(app: Flask, client: FlaskClient, people) -> None:
    irina = login_client(app, people["irina"])
    assert irina.get("/operators/").status_code == 403
    assert post_form(client, f"/users/{people['irina'].id}/role", {"role": "supervisor"}).status_code == 302
    assert irina.get("/operators/").status_code == 200


def test_users_page_keeps_the_last_supervisor(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        boss_id = db.session.scalar(sa.select(User.id).where(User.username == "boss"))
    for change, data in (("role", {"role": "intake"}), ("active", {"is_active": "0"})):
        response = post_form(client, f"/users/{boss_id}/{change}", data)
        assert response.status_code == 422
        assert "boss is the last active supervisor" in text(response)
    assert client.get("/operators/").status_code == 200


def test_the_last_active_supervisor_can_be_neither_demoted_nor_deactivated(ctx) -> None:
    boss = add_user("boss", Role.SUPERVISOR)
    with pytest.raises(Conflict):
        accounts.update_user(db.session(), boss, role=Role.INTAKE)
    with pytest.raises(Conflict):
        accounts.update_user(db.session(), boss, is_active=False)
    second = add_user("second", Role.SUPERVISOR)
    accounts.update_user(db.session(), boss, role=Role.INTAKE)
    with pytest.raises(Conflict):
        accounts.update_user(db.session(), second, is_active=False)


def test_first_start_creates_admin_once_with_a_random_or_given_password(app: Flask) -> None:
    lines: list[str] = []
    with app.app_context():
        ensure_first_admin(lines.append)
        ensure_first_admin(lines.append)
        assert len(lines) == 1
        password = lines[0].split("password: ")[1].split()[0]
        assert len(password) >= 16
        admin = accounts.authenticate(db.session(), "admin", password, "-")
        assert admin is not None and admin.role == Role.SUPERVISOR
    app.config["LEADCRM_ADMIN_PASSWORD"] = "from the environment"
    with app.app_context():
        db.session.execute(sa.delete(User))
        db.session.commit()
        ensure_first_admin(lines.append)
        assert len(lines) == 1  # a given password is not printed
        assert accounts.authenticate(db.session(), "admin", "from the environment", "-") is not None
    app.config["LEADCRM_ADMIN_PASSWORD"] = "short"
    with app.app_context():
        db.session.execute(sa.delete(User))
        db.session.commit()
        with pytest.raises(click.ClickException, match="LEADCRM_ADMIN_PASSWORD: Use 10 to 256 characters."):
            ensure_first_admin(lines.append)


def test_users_cli_creates_and_changes_passwords(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["leadcrm", "users", "create", "Anna", "--role", "supervisor"], input="pass phrase 1\n" * 2
    )
    assert result.exit_code == 0, result.output
    assert "Created supervisor 'anna'" in result.output
    result = runner.invoke(args=["leadcrm", "users", "create", "anna"], input="pass phrase 1\n" * 2)
    assert result.exit_code == 1 and "taken" in result.output
    result = runner.invoke(args=["leadcrm", "users", "set-password", "anna"], input="pass phrase 2\n" * 2)
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["leadcrm", "users", "set-password", "anna", "--password", "short"])
    assert result.exit_code == 1 and "Use 10 to 256 characters." in result.output
    assert "anna\tsupervisor\tactive" in runner.invoke(args=["leadcrm", "users", "list"]).output
    with app.app_context():
        assert accounts.authenticate(db.session(), "anna", "pass phrase 2", "-") is not None


# --- API tokens -------------------------------------------------------------------------------


def test_token_is_shown_once_and_only_its_hash_is_kept(client: FlaskClient) -> None:
    response = post_form(client, "/tokens/", {"name": "Website form", "scope": "register"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    shown = re.search(r'value="(lcrm_[^"]+)"', text(response))
    assert shown
    secret = shown.group(1)
    assert secret not in text(client.get("/tokens/"))
    with client.application.app_context():
        token = db.session.scalar(sa.select(ApiToken).where(ApiToken.name == "Website form"))
        assert token is not None
        assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert token.scope == TokenScope.REGISTER and token.last_used_at is None
        stored = " ".join(str(v) for v in db.session.execute(sa.select(ApiToken.__table__)).all())
        assert secret not in stored
    headers = {"Authorization": f"Bearer {secret}"}
    anonymous = client.application.test_client()
    assert anonymous.get(f"{API}/distribution_status/", headers=headers).status_code == 200
    with client.application.app_context():
        assert db.session.get_one(ApiToken, token.id).last_used_at is not None
    found = re.search(rf'<tr id="token-{token.id}".*?</tr>', text(client.get("/tokens/")), re.S)
    assert found
    row = found.group(0)
    assert row.count("<time") == 2  # created, last used


def test_scopes_revocation_and_bad_credentials(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        register = add_token("form", TokenScope.REGISTER)
        full = add_token("crm", TokenScope.FULL)
        register_id = db.session.scalar(sa.select(ApiToken.id).where(ApiToken.name == "form"))
    anonymous = app.test_client()
    body = {"source_name": "nowhere", "phone": "+79001234567"}

    def call(method: str, path: str, secret: str | None, **kw):
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return anonymous.open(f"{API}{path}", method=method, headers=headers, **kw)

    assert call("POST", "/contacts/register", register, json=body).status_code == 404  # in scope: unknown source
    denied = call("POST", "/operators/", register, json={"name": "X", "max_active_leads": 1})
    assert denied.status_code == 403 and "scope 'register'" in denied.json["error"]["message"]
    assert call("POST", "/operators/", full, json={"name": "X", "max_active_leads": 1}).status_code == 201
    for header in ("Bearer", "Bearer nonsense", f"Basic {full}", f"Bearer {full}x", "Bearer " + "a" * 5000):
        response = anonymous.get(f"{API}/contacts/", headers={"Authorization": header})
        assert response.status_code == 401 and json_of(response)["error"]["code"] == "unauthorized", header
    assert post_form(client, f"/tokens/{register_id}/revoke", {}).status_code == 302
    assert call("GET", "/distribution_status/", register).status_code == 401
    assert "revoked" in text(client.get("/tokens/"))


def test_browser_session_may_call_the_api_with_its_csrf_token(app: Flask, people) -> None:
    boss = login_client(app, people["vera"])
    assert boss.get(f"{API}/operators/").status_code == 200
    refused = boss.post(f"{API}/operators/", json={"name": "X", "max_active_leads": 1})
    assert refused.status_code == 400 and json_of(refused)["error"]["code"] == "csrf_failed"
    page = text(boss.get("/"))
    csrf = csrf_token_of(page)
    created = boss.post(f"{API}/operators/", json={"name": "X", "max_active_leads": 1}, headers={"X-CSRFToken": csrf})
    assert created.status_code == 201


def test_history_names_the_user_or_token_behind_each_change(app: Flask, client: FlaskClient, people) -> None:
    operator = json_of(client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 5}))
    source = json_of(client.post(f"{API}/sources/", json={"name": "web_form"}))
    client.post(f"{API}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    registered = client.post(f"{API}/contacts/register", json={"source_id": 1, "phone": "+79001234567"})
    contact = json_of(registered)["contact"]
    irina = login_client(app, people["irina"])
    page = text(irina.get("/"))
    csrf = csrf_token_of(page)
    assert irina.post(f"/contacts/{contact['id']}/close", data={"csrf_token": csrf}).status_code == 302
    events = json_of(client.get(f"{API}/contacts/{contact['id']}/events"))
    assert [(e["reason"], e["actor"]) for e in events] == [("registered", "token:tests (#1)"), ("closed", "user:irina")]
    assert "user:irina" in text(client.get(f"/contacts/{contact['id']}"))


# --- headers and cookies ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/login", "/healthz", "/static/app.js", f"{API}/contacts/", "/nowhere", "/docs"])
def test_every_response_carries_the_security_headers(client: FlaskClient, path: str) -> None:
    with client.get(path) as response:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert (response.headers.get("Cache-Control") == "no-store") == (not path.startswith("/static/"))


def test_pages_have_no_inline_script_and_htmx_needs_no_eval(client: FlaskClient) -> None:
    html = text(client.get("/"))
    assert re.findall(r"<script(?![^>]*\ssrc=)", html) == []
    assert " style=" not in html and "hx-on" not in html
    assert '"allowEval": false' in html and '"includeIndicatorStyles": false' in html


def test_session_cookie_is_httponly_lax_and_secure_over_https(app: Flask, people) -> None:
    for base, secure in (("http://localhost", False), ("https://localhost", True)):
        client = app.test_client()
        page = text(client.get("/login", base_url=base))
        csrf = csrf_token_of(page)
        data = {"csrf_token": csrf, "username": "vera", "password": PASSWORD}
        response = client.post("/login", data=data, base_url=base, headers={"Referer": f"{base}/login"})
        assert response.status_code == 302  # logged in (not a 400 that happens to set a session cookie)
        (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) == secure
        assert ("Strict-Transport-Security" in response.headers) == secure


# --- escaping ---------------------------------------------------------------------------------

EVIL = "<script>alert(1)</script>"


def test_user_text_is_escaped_on_every_page(app: Flask, client: FlaskClient) -> None:
    operator = json_of(client.post(f"{API}/operators/", json={"name": f"op {EVIL}", "max_active_leads": 5}))
    source = json_of(client.post(f"{API}/sources/", json={"name": f"src {EVIL}"}))
    client.post(f"{API}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    body = {"source_id": source["id"], "phone": "+79001234567", "name": f"lead {EVIL}", "message": f"msg {EVIL}"}
    assert client.post(f"{API}/contacts/register", json=body).status_code == 201
    refused = post_form(client, "/users/", {"username": EVIL, "role": "intake", "password": "long enough!"})
    assert refused.status_code == 422 and EVIL not in text(refused) and "&lt;script&gt;" in text(refused)
    post_form(client, "/tokens/", {"name": f"tok {EVIL}", "scope": "full"})
    pages = ["/", "/intake/", "/contacts/", "/contacts/1", "/leads/", "/leads/1", "/operators/", "/sources/"]
    pages += [f"/sources/{source['id']}", "/report/", "/tokens/"]
    for path in pages:
        html = text(client.get(path))
        assert EVIL not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_intake_staff_are_not_offered_what_they_may_not_do(app: Flask, client: FlaskClient, people) -> None:
    operator = json_of(client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 5}))
    source = json_of(client.post(f"{API}/sources/", json={"name": "web_form"}))
    client.post(f"{API}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    client.post(f"{API}/contacts/register", json={"source_id": 1, "phone": "+79001234567"})
    client.post(f"{API}/contacts/register", json={"source_id": 1, "phone": "+79001234568"})
    client.post(f"{API}/contacts/2/close")
    irina = login_client(app, people["irina"])
    supervisor_only = ["/operators/", "/sources/", "/report/", "/users/", "/tokens/", "/docs", "/assign", "/reopen"]
    for path in ("/", "/intake/", "/contacts/", "/contacts/1", "/contacts/2", "/leads/", "/leads/1"):
        html = text(irina.get(path))
        assert not [link for link in supervisor_only if f'"{link}' in html or f'{link}"' in html], path
        assert 'id="bulk-form"' not in html, path
    assert 'action="/contacts/1/close"' in text(irina.get("/contacts/1"))
    # A supervisor sees them all.
    assert 'action="/contacts/1/assign"' in text(client.get("/contacts/1"))
    assert 'action="/contacts/2/reopen"' in text(client.get("/contacts/2"))
    assert 'id="bulk-form"' in text(client.get("/contacts/"))


def test_nul_characters_are_refused_everywhere_before_the_database_sees_them(app: Flask, client: FlaskClient) -> None:
    # PostgreSQL cannot store or search text with NUL; the fuzz test found the 500 this prevents.
    for body in ({"name": "a\x00b", "max_active_leads": 1}, {"name": "\x00", "max_active_leads": 1}):
        assert client.post(f"{API}/operators/", json=body).status_code == 422
    register = {"source_id": 1, "phone": "+79001234567", "message": "hi\x00"}
    assert client.post(f"{API}/contacts/register", json=register).status_code == 422
    assert client.get(f"{API}/leads/", query_string={"q": "a\x00"}).status_code == 422
    assert client.get("/leads/", query_string={"q": "a\x00"}).status_code == 400
    response = post_form(client, "/operators/", {"name": "a\x00b", "max_active_leads": "1"})
    assert response.status_code == 400 and "NUL character" in text(response)
    anonymous = app.test_client()
    assert log_in(anonymous, "boss\x00").status_code == 400


# --- under real servers -----------------------------------------------------------------------


def store_user(database_url: str, username: str, password_hash: str) -> None:
    """A supervisor stored straight into a served (migrated) database."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        db.session.add(User(username=username, password_hash=password_hash, role=Role.SUPERVISOR))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


def login_page(base: str, address: str) -> tuple[requests.Session, str]:
    """A browser at ``address`` (behind the trusted proxy) that has opened the login page: (session, CSRF token)."""
    browser = requests.Session()
    browser.headers["X-Forwarded-For"] = address
    page = browser.get(f"{base}/login", timeout=30).text
    return browser, csrf_token_of(page)


def post_login(base: str, browser: requests.Session, csrf: str, username: str, password: str) -> requests.Response:
    data = {"csrf_token": csrf, "username": username, "password": password}
    return browser.post(f"{base}/login", data=data, allow_redirects=False, timeout=60)


@pytest.fixture
def served(backend, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """(database URL, base URLs): one gunicorn on SQLite, two sharing the database on PostgreSQL, behind one proxy."""
    url = backend.empty_url(tmp_path)
    layout = [4] if backend.name == "sqlite" else [3, 3]
    with ExitStack() as stack:
        bases = [
            stack.enter_context(
                gunicorn(url, tmp_path, workers=workers, name=f"gunicorn{i}", env={"LEADCRM_PROXY_COUNT": "1"})
            )
            for i, workers in enumerate(layout)
        ]
        yield url, bases


@pytest.mark.slow
def test_parallel_wrong_passwords_are_counted_exactly_and_lock_out_only_their_address(served) -> None:
    database_url, bases = served
    store_user(database_url, "vera", password_hash())
    attempts = 30
    browsers = [login_page(bases[n % len(bases)], "203.0.113.66") for n in range(attempts)]
    start = threading.Barrier(attempts)

    def guess(n: int) -> int:
        browser, csrf = browsers[n]
        start.wait()
        return post_login(bases[n % len(bases)], browser, csrf, "vera", f"guess {n}").status_code

    with ThreadPoolExecutor(attempts) as pool:
        statuses = list(pool.map(guess, range(attempts)))
    assert sorted(statuses) == [401] * accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS + [429] * (
        attempts - accounts.MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS
    )
    # The guessing address is refused even the right password; anyone else logs in.
    assert post_login(bases[0], *login_page(bases[0], "203.0.113.66"), "vera", PASSWORD).status_code == 429
    for base in bases:
        assert post_login(base, *login_page(base, "198.51.100.7"), "vera", PASSWORD).status_code == 302


@pytest.mark.slow
def test_a_login_hashing_its_password_does_not_hold_the_write_lock(backend, served) -> None:
    if backend.name != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock")
    database_url, (base,) = served
    # A password hash that takes seconds to check: the login is still hashing while we register.
    store_user(database_url, "slow", generate_password_hash(PASSWORD, "pbkdf2:sha256:3000000"))
    token = create_token(database_url)
    api = api_session(token)
    operator = api.post(f"{base}/api/v1/operators/", json={"name": "Anna", "max_active_leads": 100}).json()
    source = api.post(f"{base}/api/v1/sources/", json={"name": "web_form"}).json()
    api.post(f"{base}/api/v1/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    browser, csrf = login_page(base, "192.0.2.1")
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(post_login, base, browser, csrf, "slow", "a wrong password")
        time.sleep(0.5)  # the login request is past its first query and hashing
        took = []
        for n in range(5):
            started = time.monotonic()
            body = {"source_id": source["id"], "phone": f"+7900555000{n}"}
            assert api.post(f"{base}/api/v1/contacts/register", json=body, timeout=60).status_code == 201
            took.append(time.monotonic() - started)
        # Today's registrations take milliseconds; behind the lock they would wait seconds for the hash.
        assert max(took) < 1.0, took
        assert not login.done(), "the login finished before the registrations: its hash was not slow enough"
        assert login.result().status_code == 401
