"""HTML forms (Flask-WTF: CSRF, and field errors that keep what was typed)."""

from typing import Protocol, TypeVar

from flask import current_app
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Field,
    IntegerField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice  # type: ignore[attr-defined]  # new in WTForms 3.3; types-WTForms is 3.2
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, ValidationError

from leadcrm.errors import DomainError, InvalidInput
from leadcrm.i18n import translate
from leadcrm.vocabulary import (
    DESCRIPTION_MAX,
    EMAIL_MAX,
    EXTERNAL_ID_MAX,
    IDLE_MINUTES_MAX,
    LIMIT_MAX,
    MESSAGE_MAX,
    NAME_MAX,
    OFFER_MISSES_DEFAULT,
    OFFER_MISSES_MAX,
    OFFER_TIMEOUT_MAX,
    PASSWORD_MAX,
    PHONE_INPUT_MAX,
    TIMEZONE_MAX,
    URL_MAX,
    USERNAME_MAX,
    EventType,
    Role,
    Strategy,
    TokenScope,
)


def show_domain_error(form: FlaskForm, exc: DomainError) -> None:
    """Put a domain error's messages next to the fields they name.

    The form-level message is shown only when no field explains the error.
    """
    if not exc.fields or not isinstance(exc, InvalidInput):
        form.form_errors.append(translate(exc.message))
    for name, message in exc.fields.items():
        field = getattr(form, name, None)
        if isinstance(field, Field):
            errors_of(field).append(translate(message))
        else:  # a field this form does not have: said at the top rather than lost
            form.form_errors.append(translate(message))


def errors_of(field: Field) -> list[str]:
    """A validated field's list of errors, to add to (WTForms types it a Sequence: a tuple before validation)."""
    if not isinstance(field.errors, list):
        raise TypeError("field errors added before the form was validated")
    return field.errors


T = TypeVar("T")


class _Holds(Protocol[T]):
    data: T | None


def required(field: _Holds[T]) -> T:
    """The value of a field that passed DataRequired or InputRequired (WTForms types all data as optional)."""
    if field.data is None:
        raise ValueError("a required field read before the form was validated")
    return field.data


def strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class OperatorForm(FlaskForm):
    name = StringField(_l("Name"), filters=[strip], validators=[DataRequired(), Length(max=NAME_MAX)])
    max_active_leads = IntegerField(
        _l("Limit of active leads"), validators=[InputRequired(), NumberRange(min=0, max=LIMIT_MAX)]
    )
    is_active = BooleanField(_l("Active"), default=True)


class OperatorLimitForm(FlaskForm):
    max_active_leads = IntegerField(
        _l("Limit of active leads"), validators=[InputRequired(), NumberRange(min=0, max=LIMIT_MAX)]
    )


class OperatorIdleForm(FlaskForm):
    # Empty turns the setting off.
    idle_away_minutes = IntegerField(
        _l("Away after N minutes without the inbox open"),
        validators=[Optional(), NumberRange(min=1, max=IDLE_MINUTES_MAX)],
    )


class SourceForm(FlaskForm):
    name = StringField(_l("Name"), filters=[strip], validators=[DataRequired(), Length(max=NAME_MAX)])
    strategy = SelectField(
        _l("Distribution"),
        choices=[
            SelectChoice(Strategy.RANDOM, _l("Random, by weights")),
            SelectChoice(Strategy.DETERMINISTIC, _l("Deterministic, by weights")),
        ],
        default=Strategy.RANDOM,
    )
    sticky = BooleanField(_l("Returning leads go back to their operator"), default=False)


def offer_timeout_min() -> int:
    """The shortest offer timeout a source may have (``LEADCRM_OFFER_TIMEOUT_MIN``; tests lower it)."""
    return int(current_app.config["LEADCRM_OFFER_TIMEOUT_MIN"])


class OfferTimeoutRange:
    """From the configured minimum to OFFER_TIMEOUT_MAX seconds (read when the form is validated)."""

    def __call__(self, form: FlaskForm, field: Field) -> None:
        if field.data is not None and not offer_timeout_min() <= field.data <= OFFER_TIMEOUT_MAX:
            raise ValidationError(
                _(
                    "From %(min)s to %(max)s seconds; empty for no offers.",
                    min=offer_timeout_min(),
                    max=f"{OFFER_TIMEOUT_MAX:,}",
                )
            )


class SourceOffersForm(FlaskForm):
    """A source's offers, part of the source's editor (which carries the CSRF token)."""

    # Empty turns offers off: a routed contact is simply the operator's. (invalid_value_message is
    # WTForms 3.3's; types-WTForms is 3.2.)
    offer_timeout_seconds = IntegerField(  # type: ignore[call-arg]
        _l("Offer timeout (seconds)"),
        validators=[Optional(), OfferTimeoutRange()],
        invalid_value_message=_l("A whole number of seconds; empty for no offers."),
    )
    offer_misses_away = IntegerField(  # type: ignore[call-arg]
        _l("Missed offers before away"),
        default=OFFER_MISSES_DEFAULT,
        validators=[
            InputRequired(_l("A whole number from %(min)s to %(max)s.", min=1, max=OFFER_MISSES_MAX)),
            NumberRange(min=1, max=OFFER_MISSES_MAX, message=_l("A whole number from %(min)s to %(max)s.")),
        ],
        invalid_value_message=_l("A whole number from %(min)s to %(max)s.", min=1, max=OFFER_MISSES_MAX),
    )


class IntakeForm(FlaskForm):
    source_id = SelectField(_l("Source"), coerce=int, validators=[InputRequired()])
    phone = StringField(_l("Phone"), filters=[strip], validators=[Optional(), Length(max=PHONE_INPUT_MAX)])
    email = StringField(_l("E-mail"), filters=[strip], validators=[Optional(), Length(max=EMAIL_MAX)])
    external_id = StringField(_l("External id"), filters=[strip], validators=[Optional(), Length(max=EXTERNAL_ID_MAX)])
    name = StringField(_l("Name"), filters=[strip], validators=[Optional(), Length(max=NAME_MAX)])
    message = TextAreaField(_l("Message"), validators=[Optional(), Length(max=MESSAGE_MAX)])


ROLE_CHOICES = [
    SelectChoice(Role.INTAKE, _l("Intake")),
    SelectChoice(Role.SUPERVISOR, _l("Supervisor")),
    SelectChoice(Role.OPERATOR, _l("Operator")),
]


def optional_id(value: object) -> int | None:
    """A select's value as an id: empty is none (WTForms coerces the choices' values the same way)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    return int(str(value))  # ValueError: "Not a valid choice"


def operator_field() -> SelectField:
    """The operator a user works as; its choices are the operators, set by the view (``choose_operators``)."""
    return SelectField(_l("Works as operator"), coerce=optional_id, default=None)


def choose_operators(field: SelectField, operators: "list[tuple[int, str]]", taken: "set[int]") -> None:
    """Offer ``operators`` (id, name) in ``field``, those in ``taken`` (linked to another user) disabled and marked."""
    marked = _l("(has a user)")
    field.choices = [SelectChoice("", "—")] + [
        SelectChoice(str(op_id), f"{name} {marked}", {"disabled": True})
        if op_id in taken
        else SelectChoice(str(op_id), name)
        for op_id, name in operators
    ]


class LoginForm(FlaskForm):
    username = StringField(_l("Username"), filters=[strip], validators=[DataRequired(), Length(max=USERNAME_MAX)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])


class UserForm(FlaskForm):
    username = StringField(_l("Username"), filters=[strip], validators=[DataRequired(), Length(max=USERNAME_MAX)])
    role = SelectField(_l("Role"), choices=ROLE_CHOICES, default=Role.INTAKE)
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    operator_id = operator_field()


class RoleForm(FlaskForm):
    role = SelectField(_l("Role"), choices=ROLE_CHOICES)
    # Becoming an operator user takes the operator it works as.
    operator_id = operator_field()


class OperatorLinkForm(FlaskForm):
    operator_id = operator_field()  # empty: unlink


class PasswordForm(FlaskForm):
    password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])


class OwnPasswordForm(FlaskForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    new_password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])


class TimezoneForm(FlaskForm):
    """The organisation's time zone (settings page); the name is checked by the domain."""

    timezone = StringField(
        _l("Time zone of the organisation"), filters=[strip], validators=[DataRequired(), Length(max=TIMEZONE_MAX)]
    )


class TokenForm(FlaskForm):
    name = StringField(_l("Name"), filters=[strip], validators=[DataRequired(), Length(max=NAME_MAX)])
    scope = SelectField(
        _l("Scope"),
        choices=[
            SelectChoice(TokenScope.REGISTER, _l("register: contacts and status only")),
            SelectChoice(TokenScope.FULL, _l("full: the whole API")),
        ],
        default=TokenScope.REGISTER,
    )


class WebhookForm(FlaskForm):
    url = StringField(_l("URL"), filters=[strip], validators=[DataRequired(), Length(max=URL_MAX)])
    description = StringField(_l("Description"), filters=[strip], validators=[Length(max=DESCRIPTION_MAX)])
    events = SelectMultipleField(
        _l("Events"),
        choices=[SelectChoice(t.value, t.value) for t in EventType],
        validators=[DataRequired(message=_l("Choose at least one event type."))],
    )
