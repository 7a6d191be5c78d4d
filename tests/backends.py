"""The databases the suite runs on: SQLite files always, PostgreSQL when LEADCRM_TEST_POSTGRES_URL is set.

PostgreSQL runs use schemas of their own (the database may hold anything
else, including leftovers of earlier runs) and drop them at the end.
"""

import os
import shutil
import uuid
from pathlib import Path

import sqlalchemy as sa
from flask_migrate import upgrade

from leadcrm import create_app
from leadcrm.extensions import db
from leadcrm.models import Base

POSTGRES_URL = os.environ.get("LEADCRM_TEST_POSTGRES_URL", "")
# Every table of the models: a test's fresh PostgreSQL schema is the shared one emptied.
TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables))


def migrate(url: str) -> None:
    """Build the schema with the real Alembic migrations."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()


class SqliteBackend:
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.template = workdir / "template.sqlite3"
        migrate(f"sqlite:///{self.template}")

    def fresh_url(self, tmp_path: Path) -> str:
        """A migrated, empty database for one test."""
        path = tmp_path / "leadcrm.sqlite3"
        shutil.copy(self.template, path)
        return f"sqlite:///{path}"

    def empty_url(self, tmp_path: Path, name: str = "server") -> str:
        """A database with no schema yet, for a server that migrates it on start."""
        return f"sqlite:///{tmp_path / name}.sqlite3"

    def close(self) -> None:
        pass


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.base_url = sa.make_url(url)
        self.admin = sa.create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        self.run_id = uuid.uuid4().hex[:10]
        self.schemas: list[str] = []
        self.shared_url = self._new_schema("shared")
        migrate(self.shared_url)
        self.shared = sa.create_engine(self.shared_url)

    def _new_schema(self, label: str) -> str:
        schema = f"leadcrm_test_{self.run_id}_{label}_{len(self.schemas)}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        url = self.base_url.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def fresh_url(self, tmp_path: Path) -> str:  # noqa: ARG002 - same signature as SQLite's
        # Emptying the run's migrated schema is much faster than migrating a new one per test.
        with self.shared.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        return self.shared_url

    def empty_url(self, tmp_path: Path, name: str = "server") -> str:  # noqa: ARG002
        return self._new_schema(name)

    def close(self) -> None:
        self.shared.dispose()
        with self.admin.connect() as conn:
            for schema in self.schemas:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self.admin.dispose()


# What the `backend` fixture gives: both answer fresh_url, empty_url and close.
Backend = SqliteBackend | PostgresBackend
