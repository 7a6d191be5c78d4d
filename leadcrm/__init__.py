"""leadcrm: distributes leads' contacts across operators by weights and limits."""

import os
from typing import Any

import sqlalchemy as sa
from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import NotFound, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter, ValidationError

from leadcrm.config import PROJECT_ROOT, Config, instance_path
from leadcrm.database import (
    configure_engine,
    end_request,
    end_session,
    keep_private,
    prepare_sqlite_file,
    reads_only,
    sqlite_connect_args,
    sqlite_file,
)
from leadcrm.extensions import babel, csrf, db, migrate
from leadcrm.i18n import select_locale
from leadcrm.schedules import known_timezones
from leadcrm.vocabulary import INT_MAX


class IdConverter(IntegerConverter):
    """A database id in a URL: 1 .. INT_MAX; anything else is simply not found."""

    def __init__(self, map: Any) -> None:  # noqa: A002 - werkzeug's name
        super().__init__(map, min=1, max=INT_MAX)

    def to_python(self, value: str) -> int:
        try:
            return super().to_python(value)
        except ValidationError:
            # Not "try the next rule": that could end as a misleading 405.
            raise NotFound() from None


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` overrides the environment (tests use it)."""
    app = Flask(
        __name__,
        instance_path=instance_path(),
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    app.config.from_object(Config)
    if config:
        app.config.update(config)
    # The instance folder holds the database and the secret key: its owner's only.
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    keep_private(app.instance_path)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        path = os.path.join(app.instance_path, "leadcrm.sqlite3")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        database_file = sqlite_file(app.config["SQLALCHEMY_DATABASE_URI"])
        if database_file:
            prepare_sqlite_file(database_file)
        app.config.setdefault(
            "SQLALCHEMY_ENGINE_OPTIONS",
            {"connect_args": sqlite_connect_args(app.config["LEADCRM_SQLITE_BUSY_TIMEOUT"])},
        )
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # A sync gunicorn worker serves one request at a time: a small pool per
        # process (total = workers x pool) keeps PostgreSQL's connection count in
        # check. Connections the server closed are refused at checkout without a
        # round trip (database.configure_engine), and none is kept past an hour
        # (idle-connection timeouts of proxies and firewalls).
        # A server that drops packets instead of refusing them fails a connection in 5 s (and
        # /healthz answers), not after the system's TCP timeout.
        app.config.setdefault(
            "SQLALCHEMY_ENGINE_OPTIONS",
            {"pool_recycle": 3600, "pool_size": 2, "max_overflow": 2, "connect_args": {"connect_timeout": 5}},
        )
    if app.config["LEADCRM_TIMEZONE"] not in known_timezones():
        raise RuntimeError(
            f"LEADCRM_TIMEZONE={app.config['LEADCRM_TIMEZONE']!r} is not a time zone zoneinfo knows: "
            "use an IANA name such as Europe/Moscow or UTC"
        )
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path)
    app.url_map.converters["id"] = IdConverter
    json_provider = app.json
    assert isinstance(json_provider, DefaultJSONProvider)  # Flask's own, which has these two settings
    json_provider.sort_keys = False  # keep fields in schema order
    json_provider.ensure_ascii = False  # names in Cyrillic stay readable

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    csrf.init_app(app)
    babel.init_app(
        app, locale_selector=select_locale, default_translation_directories=os.path.join(PROJECT_ROOT, "translations")
    )
    with app.app_context():
        configure_engine(db.engine)

    # Runs before Flask-SQLAlchemy's own teardown (reverse order), which then has nothing left to do.
    @app.teardown_appcontext
    def end_database_session(_exc: BaseException | None) -> None:
        end_session(db.session, app.logger)

    from leadcrm.auth import init_auth, public
    from leadcrm.distribution import limit_drains
    from leadcrm.units import init_units, request_unit

    # Before anything reads the body: one sent without Content-Length must not be cut to the limit.
    app.before_request(_refuse_streamed_bodies_over_the_limit)

    @app.before_request
    def read_until_the_view_declares_a_write() -> None:
        # A view that writes says so with begin_write() once its input is checked
        # (invalid input never waits for SQLite's write lock); until then the
        # database refuses writes, so a forgotten declaration fails at once.
        reads_only(db.session)
        limit_drains(db.session(), app.config["LEADCRM_DRAIN_BATCH"])

    @app.teardown_request
    def forget_the_declaration(_exc: BaseException | None) -> None:
        end_request(db.session)

    # Then: who is asking and may they (reads only; ends its transaction).
    init_auth(app)
    init_units(app)

    from leadcrm import demo  # noqa: F401  (adds `flask leadcrm demo`)
    from leadcrm.api import bp as api_bp
    from leadcrm.api.docs import bp as docs_bp
    from leadcrm.cli import cli
    from leadcrm.web import register_web
    from leadcrm.web.errors import register_error_handlers

    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(docs_bp)
    register_error_handlers(app)
    register_web(app)
    app.cli.add_command(cli)

    from leadcrm.worker import health

    @app.get("/healthz")
    @public
    def healthz() -> dict[str, Any]:
        """200 while the web process answers, whatever the database says; with the workers' last
        heartbeat and whether they are silent (``worker``: null when the database cannot be read)."""
        try:
            unit = request_unit()
        except (sa.exc.SQLAlchemyError, db.engine.dialect.loaded_dbapi.Error):  # no connection to be had
            return {"status": "ok", "worker": None}
        return {"status": "ok", "worker": health(unit)}

    return app


def _refuse_streamed_bodies_over_the_limit() -> None:
    """A body sent without Content-Length (chunked) over MAX_CONTENT_LENGTH gets the 413 a declared one gets.

    werkzeug stops reading such a body at the limit without an error: the
    first MiB alone would be parsed (a misleading 400, a form's fields cut
    short). The body is read once here, up to the limit, and kept for the view.
    """
    limit = request.max_content_length
    if limit is None or request.content_length is not None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def _instance_secret(instance_path: str) -> str:
    """A random secret kept in the instance folder, shared by all workers of this install."""
    path = os.path.join(instance_path, "secret_key")
    if not os.path.exists(path):
        # Write it whole under another name, then link it into place: a worker
        # starting at the same moment reads either no file or the full key.
        tmp = f"{path}.{os.getpid()}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(os.urandom(32).hex())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    keep_private(path)
    with open(path) as f:
        return f.read().strip()
