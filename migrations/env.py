"""Alembic environment for leadcrm: migrates the Flask app's database engine."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

config = context.config
# Keep the app's own loggers (gunicorn's master runs migrations too).
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_db = current_app.extensions["migrate"].db
engine = target_db.engine
config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`flask db upgrade --sql`)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_db.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    def process_revision_directives(context, revision, directives):  # noqa: ARG001 - Alembic's signature
        # An autogenerate that finds no change writes no empty revision.
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            run_sqlite_migrations(connection, conf_args)
            return
        context.configure(connection=connection, target_metadata=target_db.metadata, **conf_args)
        with context.begin_transaction():
            context.run_migrations()


def run_sqlite_migrations(connection, conf_args) -> None:
    """Run the migrations on SQLite with foreign keys off, in one transaction, checked before commit.

    A batch migration rebuilds a table (create a copy, move the rows, drop the
    old one, rename): with foreign keys on (the app's connect hook sets them),
    dropping a table that other rows point at fails, or would cascade. SQLite
    ignores the pragma inside a transaction, so it is set on the migration's
    own connection before the transaction begins; what the rebuilt tables
    hold is then checked with PRAGMA foreign_key_check, and any violation
    rolls the whole upgrade back.
    """
    driver = connection.connection.driver_connection
    driver.execute("PRAGMA foreign_keys = OFF")
    try:
        if driver.execute("PRAGMA foreign_keys").fetchone()[0] != 0:
            raise RuntimeError("cannot migrate: foreign keys could not be turned off (a transaction is open)")
        # SQLite's DDL is transactional: all revisions commit together or not at all.
        context.configure(
            connection=connection, target_metadata=target_db.metadata, transactional_ddl=True, **conf_args
        )
        with context.begin_transaction():
            before = set(context.get_context().get_current_heads())
            context.run_migrations()
            if set(context.get_context().get_current_heads()) != before:
                check_foreign_keys(connection)
    finally:
        driver.execute("PRAGMA foreign_keys = ON")


def check_foreign_keys(connection) -> None:
    """Refuse to commit migrations that leave rows pointing at nothing."""
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        columns = {}  # (table, foreign key id) -> its column(s)
        for table in {row[0] for row in violations}:
            for fk in connection.exec_driver_sql(f'PRAGMA foreign_key_list("{table}")').mappings():
                columns.setdefault((table, fk["id"]), []).append(fk["from"])
        shown = "; ".join(
            f"{table} row {rowid}: {', '.join(columns.get((table, fk), ['?']))} -> {parent}"
            for table, rowid, parent, fk in violations[:20]
        )
        more = f" and {len(violations) - 20} more" if len(violations) > 20 else ""
        raise RuntimeError(
            f"migration aborted, nothing was changed: {len(violations)} row(s) violate foreign keys: {shown}{more}. "
            "Fix or delete those rows, then start again."
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
