"""`flask leadcrm demo`: a believable setup to try leadcrm on, and a simulator that keeps it moving."""

import random
import time

import click
import sqlalchemy as sa
from flask import current_app

from leadcrm import distribution, operators, sources
from leadcrm.cli import cli
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity
from leadcrm.models import Contact, Operator, Source
from leadcrm.sources import find_source
from leadcrm.vocabulary import ContactStatus, Strategy

OPERATORS = [
    ("Анна Смирнова", 8),
    ("Борис Кузнецов", 5),
    ("Вера Попова", 10),
    ("Глеб Васильев", 4),
    ("Дарья Новикова", 6),
    ("Егор Морозов", 3),
    ("Alice Johnson", 7),
    ("Ben Carter", 5),
    ("Chloe Martin", 6),
    ("David Brown", 4),
    ("Emma Wilson", 9),
    ("Frank Miller", 2),
]
# name, strategy, {operator index: weight}
SOURCES = [
    ("telegram_sales_bot", Strategy.RANDOM, {0: 30, 1: 10, 2: 20, 6: 20, 10: 20}),
    ("telegram_support_bot", Strategy.DETERMINISTIC, {2: 10, 3: 10, 4: 20, 7: 10, 8: 10}),
    ("web_form", Strategy.RANDOM, {0: 10, 5: 10, 6: 30, 9: 10, 11: 5}),
    ("phone_line", Strategy.DETERMINISTIC, {1: 20, 3: 10, 8: 30, 10: 10}),
]
FIRST_NAMES = ["Иван", "Мария", "Пётр", "Ольга", "Сергей", "Наталья", "John", "Sarah", "Michael", "Laura"]
MESSAGES = [
    "Здравствуйте, хочу узнать цену.",
    "Когда будет доставка?",
    "Нужна консультация по тарифу.",
    "Hello, is the offer still valid?",
    "Please call me back.",
    "Не приходит код подтверждения.",
]


def _customer(n: int) -> tuple[LeadIdentity, str]:
    """Customer n; every fifth one also writes through Telegram with the same phone."""
    phone = f"+7916{n:07d}"
    identity = LeadIdentity(
        phone=phone,
        external_id=f"tg:{100000 + n}" if n % 5 == 0 else None,
        email=f"customer{n}@example.com" if n % 3 == 0 else None,
    )
    return identity, f"{FIRST_NAMES[n % len(FIRST_NAMES)]} #{n}"


@cli.command("demo")
@click.option("--leads", "lead_count", default=300, show_default=True, help="How many customers to register.")
@click.option("--simulate", is_flag=True, help="Then keep registering and closing contacts until Ctrl+C.")
@click.option("--rate", default=2.0, show_default=True, help="Registrations per second while simulating.")
@click.option("--seed", default=2026, show_default=True, help="Random seed, for a repeatable demo.")
@click.option("--steps", default=0, show_default=True, help="Stop simulating after this many registrations (0: never).")
def demo(lead_count: int, simulate: bool, rate: float, seed: int, steps: int) -> None:
    """Fill an empty database with operators, sources, weights and contacts."""
    rng = random.Random(seed)
    begin_write(db.session)
    if db.session.scalar(sa.select(sa.func.count()).select_from(Operator)):
        click.echo("The database already has operators; leaving it as it is.")
    else:
        ops = [operators.create_operator(db.session(), name=n, max_active_leads=limit) for n, limit in OPERATORS]
        for name, strategy, weights in SOURCES:
            source = sources.create_source(db.session(), name=name, strategy=strategy)
            sources.set_weights(db.session(), source, {ops[i].id: w for i, w in weights.items()}, replace=True)
        all_sources = db.session.scalars(sa.select(Source).order_by(Source.id)).all()
        for n in range(lead_count):
            identity, name = _customer(n)
            # Some customers write through two sources: they stay one lead.
            for source in rng.sample(all_sources, 2 if n % 4 == 0 else 1):
                distribution.register_contact(
                    db.session(), source=source, identity=identity, name=name, message=rng.choice(MESSAGES), rng=rng
                )
            # Most contacts get handled: the load stays near, not far past, the limits.
            for _ in range(2 if n % 4 == 0 else 1):
                if rng.random() < 0.9:
                    _close_random(rng)
        click.echo(f"Created {len(ops)} operators, {len(all_sources)} sources and {lead_count} leads.")
    db.session.commit()
    if simulate:
        _simulate(rng, rate, steps)


def _close_random(rng: random.Random) -> bool:
    ids = db.session.scalars(
        sa.select(Contact.id).where(Contact.status == ContactStatus.OPEN, Contact.operator_id.is_not(None)).limit(50)
    ).all()
    if not ids:
        return False
    distribution.close_contact(db.session(), rng.choice(ids))
    return True


def _simulate(rng: random.Random, rate: float, steps: int) -> None:
    click.echo(f"Simulating about {rate:g} registrations a second; Ctrl+C stops.")
    source_ids = db.session.scalars(sa.select(Source.id).order_by(Source.id)).all()
    db.session.commit()  # each step below is a write transaction of its own
    if not source_ids:
        raise click.ClickException("No sources to register contacts through.")
    registered = closed = 0
    try:
        while not steps or registered < steps:
            begin_write(db.session)
            # Read the source inside the step: a supervisor may change its strategy meanwhile.
            source = find_source(db.session(), source_id=rng.choice(source_ids), source_name=None)
            identity, name = _customer(rng.randrange(1000))
            distribution.register_contact(
                db.session(), source=source, identity=identity, name=name, message=rng.choice(MESSAGES), rng=rng
            )
            registered += 1
            # Close slightly less often than we register, so the load drifts up and down.
            if rng.random() < 0.9 and _close_random(rng):
                closed += 1
            db.session.commit()
            if registered % 20 == 0:
                current_app.logger.info("simulated %s registrations, %s closes", registered, closed)
            time.sleep(rng.expovariate(rate))
    except KeyboardInterrupt:
        db.session.rollback()
    click.echo(f"Stopped after {registered} registrations and {closed} closes.")
