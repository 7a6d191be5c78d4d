"""`flask leadcrm ...`: maintenance commands for cron, systemd timers and people."""

import click
from flask.cli import AppGroup

from leadcrm.database import begin_write
from leadcrm.distribution import drain_all
from leadcrm.extensions import db

cli = AppGroup("leadcrm", help="leadcrm maintenance and demo commands.")


@cli.command("drain")
def drain() -> None:
    """Give waiting contacts an operator wherever one has room.

    Every change that frees capacity already does this in its own
    transaction; this sweep is a safety net (for example after editing the
    database by hand). Safe to run at any time, as often as you like.
    """
    begin_write(db.session)
    assigned = drain_all(db.session)
    db.session.commit()
    click.echo(f"Assigned {assigned} waiting contact{'s' if assigned != 1 else ''}.")
