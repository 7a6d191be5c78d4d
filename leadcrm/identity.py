"""A lead's identifiers, read and normalised the same way wherever they arrive."""

from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from leadcrm.errors import InvalidInput, Message, Text


@dataclass(frozen=True)
class LeadIdentity:
    """The identifiers one request brings for a lead; at least one is set."""

    external_id: str | None = None
    phone: str | None = None  # E.164
    email: str | None = None  # normalised, as typed; matched by its email_key


def email_key(address: str) -> str:
    """The form an e-mail address is matched and kept unique by: all of it in lower case.

    email-validator lowercases only the domain; mail systems and every CRM
    that deduplicates by address treat the local part as case-insensitive
    too, so ``Ivan.Petrov@Example.com`` and ``ivan.petrov@example.com`` are
    one customer. Computed here, not with SQL's lower(), which SQLite applies
    to ASCII letters only.
    """
    return address.lower()


def normalize_phone(raw: str, region: str) -> str:
    """Return ``raw`` as E.164, reading it in ``region`` when it has no country code."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise InvalidInput(Message("Not a phone number."), {"phone": Message("Not a phone number.")}) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput(Message("Not a valid phone number."), {"phone": Message("Not a valid phone number.")})
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    """Return ``raw`` as a normalised address; no DNS lookups."""
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        message = Message("Not a valid e-mail address.")
        raise InvalidInput(message, {"email": message}) from exc


def parse_identity(*, external_id: str | None, phone: str | None, email: str | None, region: str) -> LeadIdentity:
    """Check and normalise identifiers; blank ones count as absent.

    Raises InvalidInput naming every field that is wrong.
    """
    external_id = (external_id or "").strip() or None
    phone = (phone or "").strip() or None
    email = (email or "").strip() or None
    fields: dict[str, Text] = {}
    if phone is not None:
        try:
            phone = normalize_phone(phone, region)
        except InvalidInput as exc:
            fields.update(exc.fields)
    if email is not None:
        try:
            email = normalize_email(email)
        except InvalidInput as exc:
            fields.update(exc.fields)
    if not fields and not (external_id or phone or email):
        message = Message("Give at least one of external id, phone, e-mail.")
        fields = {"external_id": message, "phone": message, "email": message}
    if fields:
        raise InvalidInput(Message("The lead's identifiers are not valid."), fields)
    return LeadIdentity(external_id=external_id, phone=phone, email=email)
