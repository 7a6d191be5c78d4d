"""Refresh docs/screenshots/ from the demo data: `make screenshots`.

Starts the app under gunicorn on a fresh SQLite file filled by
`flask leadcrm demo`, logs in as the first supervisor, and photographs the
main pages in headless Chromium.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.receiver import Receiver  # noqa: E402
from tests.servers import gunicorn  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
PAGES = [
    ("load", "/", "en"),
    ("intake", "/intake/", "en"),
    ("weights", "/sources/1", "en"),
    ("report", "/report/", "en"),
    ("contacts", "/contacts/", "en"),
    ("operators", "/operators/", "en"),
    ("users", "/users/", "en"),
    ("operator", "/operators/3", "en"),
    ("settings", "/settings/", "en"),
    ("tokens", "/tokens/", "en"),
    ("webhook", "/webhooks/1", "en"),
    ("load-ru", "/", "ru"),
]
PASSWORD = "screenshots only"
OPERATOR, OPERATOR_PASSWORD = "Анна Смирнова", "operator desk 1"


def set_the_clock(url: str) -> None:
    """The organisation in Moscow, an operator's week and absence, another one absent now, and offers
    on the Telegram bot, with one made to Anna (registered until she gets one)."""
    from datetime import timedelta

    from leadcrm import create_app, distribution, schedules, storage
    from leadcrm.database import begin_write
    from leadcrm.extensions import db
    from leadcrm.identity import LeadIdentity
    from leadcrm.models import Operator, Source, utcnow

    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        begin_write(db.session)
        schedules.set_organisation_timezone(db.session(), "Europe/Moscow")
        week = [schedules.Hours(day, 9 * 60, 18 * 60) for day in range(1, 6)] + [schedules.Hours(6, 10 * 60, 14 * 60)]
        today = utcnow().date()
        holiday = [schedules.Absence(today + timedelta(days=20), today + timedelta(days=30), "holiday")]
        schedules.replace_schedule(
            db.session(), 3, timezone=None, hours=week, absences=holiday, organisation="Europe/Moscow"
        )
        sick = [schedules.Absence(today - timedelta(days=1), today + timedelta(days=2), "sick leave")]
        schedules.replace_schedule(
            db.session(), 4, timezone=None, hours=[], absences=sick, organisation="Europe/Moscow"
        )
        source = db.session.scalars(db.select(Source).order_by(Source.id)).first()
        anna = db.session.scalar(db.select(Operator).where(Operator.name == OPERATOR))
        assert source is not None and anna is not None
        source.offer_timeout_seconds = 600
        db.session.commit()
        record = storage.source_by_id(storage.Tx.of(db.session()), source.id)
        assert record is not None
        for n in range(40):
            begin_write(db.session)
            got = distribution.register_contact(
                db.session(), source=record, identity=LeadIdentity(phone=f"+7901555{n:04d}"), name="Пётр Орлов"
            )
            db.session.commit()
            if got.operator is not None and got.operator.id == anna.id:
                break
        db.session.remove()
        db.engine.dispose()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/demo.sqlite3"
        # Webhooks go to a receiver on this machine (a LAN install's setting).
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "LEADCRM_INSTANCE_PATH": f"{tmp}/instance",
            "FLASK_APP": "app.py",
            "LEADCRM_WEBHOOKS_ALLOW_PRIVATE": "1",
        }
        flask = [sys.executable, "-m", "flask"]
        subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
        subprocess.run([*flask, "leadcrm", "demo"], cwd=ROOT, env=env, check=True)
        for user, role, password in (("admin", "supervisor", PASSWORD), ("irina", "intake", "intake desk 1")):
            subprocess.run(
                [*flask, "leadcrm", "users", "create", user, "--role", role, "--password", password],
                cwd=ROOT, env=env, check=True, capture_output=True,
            )  # fmt: skip
        # An operator user, for the inbox.
        subprocess.run(
            [*flask, "leadcrm", "users", "create", "anna", "--role", "operator", "--operator", OPERATOR,
             "--password", OPERATOR_PASSWORD],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        os.environ["LEADCRM_INSTANCE_PATH"] = f"{tmp}/instance"
        set_the_clock(url)
        # The worker beside the app, as `make run` starts it: the load page shows no warning.
        worker = subprocess.Popen([*flask, "leadcrm", "worker"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        receiver = Receiver().start()
        try:
            shoot(url, tmp, receiver)
        finally:
            receiver.stop()
            worker.terminate()
            worker.wait(timeout=20)
    print(f"wrote {len(PAGES) + 2} screenshots to {OUT}")


def shoot(url: str, tmp: str, receiver: Receiver) -> None:
    """Photograph the pages, logged in as the supervisor and as the operator user."""
    env = {"LEADCRM_WEBHOOKS_ALLOW_PRIVATE": "1"}
    with gunicorn(url, Path(tmp), workers=2, env=env) as base, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("LEADCRM_CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        OUT.mkdir(parents=True, exist_ok=True)
        context = browser.new_context(viewport={"width": 1200, "height": 760})
        page = context.new_page()
        page.goto(f"{base}/login")
        page.screenshot(path=str(OUT / "login.png"))
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{base}/")
        # A webhook for the sales CRM, sent what follows (and a test ping).
        page.goto(f"{base}/webhooks/")
        page.get_by_label("URL").fill(receiver.url.replace("127.0.0.1", "localhost"))
        page.get_by_label("Description").fill("Sales CRM")
        for kind in ("contact.assigned", "contact.closed", "operator.updated"):
            page.locator(f"input[name=events][value='{kind}']").check()
        page.get_by_role("button", name="Create webhook").click()
        page.goto(f"{base}/webhooks/1")
        page.get_by_role("button", name="Send a test").click()
        page.goto(f"{base}/")
        # Two operators away, set from the load table as a supervisor does.
        for operator_id in (2, 5):
            page.locator(f"#presence-toggle-{operator_id}").click()
            page.wait_for_selector(f"[data-testid=presence-{operator_id}]:has-text('away')")
        page.wait_for_timeout(3000)  # the worker sends those changes to the webhook
        for name, path, language in PAGES:
            if name == "tokens":
                page.goto(f"{base}/tokens/")
                page.get_by_label("Name", exact=True).fill("Website form")
                page.get_by_role("button", name="Create token").click()
                page.screenshot(path=str(OUT / f"{name}.png"))
                continue
            page.goto(f"{base}/language/{language}?next={path}")
            page.screenshot(path=str(OUT / f"{name}.png"))
        context.close()
        desk = browser.new_context(viewport={"width": 1200, "height": 760}).new_page()
        desk.goto(f"{base}/login")
        desk.get_by_label("Username").fill("anna")
        desk.get_by_label("Password").fill(OPERATOR_PASSWORD)
        desk.get_by_role("button", name="Log in").click()
        desk.wait_for_url(f"{base}/inbox/")
        desk.screenshot(path=str(OUT / "inbox.png"))
        browser.close()


if __name__ == "__main__":
    main()
