"""The idle return, logouts and two supervisors' presence flips racing registrations and closes on two servers."""

import re
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from leadcrm import accounts, create_app
from leadcrm.extensions import db
from leadcrm.models import Operator, utcnow
from leadcrm.vocabulary import Role
from tests.helpers import csrf_token_of
from tests.servers import api_session, create_token, gunicorn
from tests.test_concurrency import fetch_all

pytestmark = pytest.mark.slow

SECONDS = 8.0
PASSWORD = "a long enough password"


def log_in(base: str, username: str) -> tuple[requests.Session, str]:
    browser = requests.Session()
    csrf = csrf_token_of(browser.get(f"{base}/login", timeout=30).text)
    answer = browser.post(
        f"{base}/login", data={"csrf_token": csrf, "username": username, "password": PASSWORD}, timeout=60
    )
    assert answer.status_code == 200 and "/inbox/" in answer.url, answer.text[:300]
    return browser, csrf_token_of(answer.text)


def test_idle_returns_logouts_and_flips_racing_registrations_and_closes_keep_the_counts(backend, tmp_path: Path):
    url = backend.empty_url(tmp_path)
    with ExitStack() as stack:
        bases = [stack.enter_context(gunicorn(url, tmp_path, workers=2, name=f"server{i}")) for i in range(2)]
        apis = [f"{base}/api/v1" for base in bases]
        token = create_token(url)
        setup = api_session(token)
        anna = setup.post(f"{apis[0]}/operators/", json={"name": "Anna", "max_active_leads": 4}).json()
        boris = setup.post(f"{apis[0]}/operators/", json={"name": "Boris", "max_active_leads": 3}).json()
        only_anna = setup.post(f"{apis[0]}/sources/", json={"name": "a"}).json()
        both = setup.post(f"{apis[0]}/sources/", json={"name": "ab"}).json()
        setup.post(f"{apis[0]}/sources/{only_anna['id']}/config", json=[{"operator_id": anna["id"], "weight": 1}])
        setup.post(
            f"{apis[0]}/sources/{both['id']}/config",
            json=[{"operator_id": anna["id"], "weight": 1}, {"operator_id": boris["id"], "weight": 1}],
        )
        assert setup.patch(f"{apis[0]}/operators/{anna['id']}", json={"idle_away_minutes": 1}).status_code == 200
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            accounts.create_user(
                db.session(), username="anna", password=PASSWORD, role=Role.OPERATOR, operator_id=anna["id"]
            )
            db.session.commit()
            db.session.remove()

        stop = threading.Event()
        statuses: Counter[tuple[str, int]] = Counter()
        lock = threading.Lock()
        numbers = iter(range(10**6))

        def note(kind: str, response: requests.Response) -> requests.Response:
            with lock:
                statuses[(kind, response.status_code)] += 1
            return response

        def registrar(k: int) -> None:
            session = api_session(token)
            i = k
            while not stop.is_set():
                with lock:
                    n = next(numbers)
                source = (only_anna, both)[i % 2]
                note(
                    "register",
                    session.post(
                        f"{apis[i % 2]}/contacts/register",
                        json={"source_id": source["id"], "phone": f"+7900{n:07d}"},
                        timeout=60,
                    ),
                )
                i += 1

        def closer() -> None:
            session = api_session(token)
            i = 0
            while not stop.is_set():
                page = session.get(f"{apis[i % 2]}/contacts/", params={"status": "open", "per_page": "5"}, timeout=60)
                for contact in page.json()["items"][:2]:
                    note("close", session.post(f"{apis[(i + 1) % 2]}/contacts/{contact['id']}/close", timeout=60))
                i += 1
                time.sleep(0.05)

        def staler() -> None:
            # Time passing: Anna's last sign of life falls 2 minutes behind, past her idle setting.
            with app.app_context():
                while not stop.is_set():
                    db.session.execute(
                        sa.update(Operator)
                        .where(Operator.id == anna["id"])
                        .values(last_seen_at=utcnow() - timedelta(minutes=2))
                    )
                    db.session.commit()
                    time.sleep(0.15)
                db.session.remove()

        def inbox(k: int) -> None:
            # Anna's inbox polls (the sign of life that drains), her own closes from the inbox, and logouts.
            base = bases[k]
            browser, csrf = log_in(base, "anna")
            i = 0
            while not stop.is_set():
                answer = note("inbox", browser.get(f"{base}/inbox/", headers={"HX-Request": "true"}, timeout=60))
                ids = [int(n) for n in re.findall(r"/contacts/(\d+)/close", answer.text)]
                if ids and i % 2 == 0:
                    note(
                        "own close",
                        browser.post(
                            f"{base}/contacts/{ids[0]}/close",
                            data={"next": "/inbox/"},
                            headers={"X-CSRFToken": csrf, "HX-Request": "true"},
                            timeout=60,
                        ),
                    )
                if i % 7 == 6:
                    note("logout", browser.post(f"{base}/logout", data={"csrf_token": csrf}, timeout=60))
                    browser, csrf = log_in(base, "anna")
                    note(
                        "presence",
                        browser.post(
                            f"{base}/inbox/presence",
                            data={"presence": "available"},
                            headers={"X-CSRFToken": csrf, "HX-Request": "true"},
                            timeout=60,
                        ),
                    )
                i += 1

        def flipper(k: int) -> None:
            # Two supervisors flip Boris (and Anna) on the two servers.
            session = api_session(token)
            i = 0
            while not stop.is_set():
                target = (anna, boris)[i % 2]
                presence = ("away", "available")[(i // 2 + k) % 2]
                note(
                    "flip",
                    session.patch(f"{apis[k]}/operators/{target['id']}", json={"presence": presence}, timeout=60),
                )
                i += 1
                time.sleep(0.03)

        threads = [threading.Thread(target=registrar, args=(k,)) for k in range(2)]
        threads += [threading.Thread(target=closer), threading.Thread(target=staler)]
        threads += [threading.Thread(target=inbox, args=(k,)) for k in range(2)]
        threads += [threading.Thread(target=flipper, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(SECONDS)
        stop.set()
        for thread in threads:
            thread.join(60)
        with app.app_context():
            db.engine.dispose()

        failed = {key: n for key, n in statuses.items() if key[1] >= 500 and key[1] != 503}
        assert not failed, statuses
        unavailable = sum(n for (_, status), n in statuses.items() if status == 503)
        assert unavailable <= sum(statuses.values()) // 50, statuses
        contacts = fetch_all(setup, apis[1], "/contacts/")
        held = Counter(c["operator_id"] for c in contacts if c["status"] == "open")
        for operator in fetch_all(setup, apis[0], "/operators/"):
            assert operator["active_leads"] == held[operator["id"]], operator
            assert operator["active_leads"] <= operator["max_active_leads"], operator
