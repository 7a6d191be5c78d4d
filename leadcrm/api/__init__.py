"""JSON API v1 for integrations: /api/v1, one module per resource (as web/ has one per page area)."""

from flask import Blueprint

bp = Blueprint("api", __name__)

# Importing the modules registers their routes.
from leadcrm.api import (  # noqa: E402,F401
    contacts,
    events,
    leads,
    openapi,
    operators,
    schedules,
    settings,
    sources,
    status,
    webhooks,
)
