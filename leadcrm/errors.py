"""Domain exceptions, and the messages they carry. Views map them to HTTP statuses or inline form errors."""

from collections.abc import Mapping
from typing import Any


class Message:
    """A text for people, said in the reader's language by the edge that shows it.

    ``msgid`` is the English text (the catalog's key, marked for ``pybabel
    extract`` by the keyword ``Message``), ``params`` fill its ``%(name)s``
    placeholders. ``str()`` gives the English text with them filled in;
    ``leadcrm.i18n.translate`` gives the current request's language.
    """

    __slots__ = ("msgid", "params")

    def __init__(self, msgid: str, **params: Any) -> None:
        self.msgid = msgid
        self.params = params

    def __str__(self) -> str:
        # As gettext does: placeholders are filled only when there are parameters.
        return self.msgid % self.params if self.params else self.msgid

    def __repr__(self) -> str:
        return f"Message({self.msgid!r}, **{self.params!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return (self.msgid, self.params) == (other.msgid, other.params)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.msgid, tuple(sorted(self.params.items()))))


# What an error says: a Message from the domain, or text an edge already wrote in the reader's language.
Text = Message | str


class DomainError(Exception):
    """Base of every error the domain raises on purpose.

    ``code`` is a stable machine-readable name; ``fields`` maps an input field
    to what is wrong with it, when the error is about particular fields.
    """

    code = "domain_error"

    def __init__(self, message: Text, fields: Mapping[str, Text] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Text] = dict(fields or {})

    def __str__(self) -> str:
        return str(self.message)


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
