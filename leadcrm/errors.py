"""Domain exceptions. Views map them to HTTP statuses or inline form errors."""

from typing import Any


class DomainError(Exception):
    """Base of every error the domain raises on purpose.

    ``code`` is a stable machine-readable name; ``fields`` maps an input field
    to what is wrong with it, when the error is about particular fields.
    """

    code = "domain_error"

    # Messages may be lazily translated strings (flask_babel.lazy_gettext):
    # they take the reader's language when rendered, and str() gives the text.
    def __init__(self, message: Any, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class NotFound(DomainError):
    code = "not_found"


class UnknownSource(NotFound):
    code = "unknown_source"


class UnknownOperator(NotFound):
    code = "unknown_operator"


class Conflict(DomainError):
    code = "conflict"


class NameTaken(Conflict):
    code = "name_taken"


class LeadConflict(Conflict):
    code = "lead_conflict"


class InvalidInput(DomainError):
    code = "validation_error"
