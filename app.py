"""WSGI entry point: ``gunicorn app:app``."""

from leadcrm import create_app

app = create_app()
