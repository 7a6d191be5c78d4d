"""JSON API v1 for integrations: /api/v1."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from leadcrm.api import views  # noqa: E402,F401  (registers the routes)
