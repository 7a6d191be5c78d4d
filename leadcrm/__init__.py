"""leadcrm: distributes leads' contacts across operators by weights and limits."""

import os
from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter

from leadcrm.config import Config
from leadcrm.database import configure_engine
from leadcrm.extensions import db, migrate
from leadcrm.models import INT_MAX

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class IdConverter(IntegerConverter):
    """A database id in a URL: 1 .. INT_MAX; anything else is simply not found."""

    def __init__(self, map: Any) -> None:  # noqa: A002 - werkzeug's name
        super().__init__(map, min=1, max=INT_MAX)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` overrides the environment (tests use it)."""
    app = Flask(
        __name__,
        instance_path=os.environ.get("LEADCRM_INSTANCE_PATH") or os.path.join(PROJECT_ROOT, "instance"),
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    app.config.from_object(Config)
    if config:
        app.config.update(config)
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        path = os.path.join(app.instance_path, "leadcrm.sqlite3")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    app.url_map.converters["id"] = IdConverter
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep fields in schema order

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    with app.app_context():
        configure_engine(db.engine, app.config["LEADCRM_SQLITE_BUSY_TIMEOUT"])

    from leadcrm.api import bp as api_bp
    from leadcrm.api.docs import bp as docs_bp
    from leadcrm.api.errors import register_error_handlers

    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(docs_bp)
    register_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
