"""Sources page: list and create; per source, the weights editor, the strategy and the offers."""

from flask import Blueprint, Response, current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from leadcrm import sources as domain
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import Operator, Source
from leadcrm.operators import list_operators_query
from leadcrm.vocabulary import OFFER_MISSES_MAX, OFFER_TIMEOUT_MAX, WEIGHT_MAX, Role, Strategy
from leadcrm.web.forms import SourceForm, SourceOffersForm, offer_timeout_min, required, show_domain_error
from leadcrm.web.rendering import is_htmx, render

bp = Blueprint("sources", __name__, url_prefix="/sources")


def _list_page(form: SourceForm, status: int = 200) -> Response:
    sources = db.session.scalars(domain.list_sources_query()).all()
    counts = domain.serving_counts(db.session())
    serving = {s.id: counts.get(s.id, 0) for s in sources}
    return render(
        "sources/index.html", block="sources_section", status=status, form=form, sources=sources, serving=serving
    )


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    return _list_page(SourceForm())


@bp.post("/")
@allow(Role.SUPERVISOR)
def create() -> ResponseReturnValue:
    form = SourceForm()
    if form.validate():
        try:
            begin_write(db.session)
            source = domain.create_source(
                db.session(), name=required(form.name), strategy=form.strategy.data, sticky=form.sticky.data
            )
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            return redirect(url_for(".detail", source_id=source.id))
    return _list_page(form, status=422)


# The offers' fields in the editor's form; a POST without them (an older page) leaves them as they are.
OFFER_FIELDS = ("offer_timeout_seconds", "offer_misses_away")


def _editor(
    source: Source,
    status: int = 200,
    typed: dict[int, str] | None = None,
    errors: dict[int, str] | None = None,
    offers: SourceOffersForm | None = None,
) -> Response:
    weights = {row.operator_id: row.weight for row in domain.source_weights(db.session(), source.id)}
    total = sum(weights.values())
    operators: list[Operator] = list(db.session.scalars(list_operators_query()))
    return render(
        "sources/detail.html",
        block="editor",
        status=status,
        source=source,
        serving=[(op, weights[op.id], weights[op.id] / total) for op in operators if op.id in weights],
        not_serving=[op for op in operators if op.id not in weights],
        typed=typed or {},
        errors=errors or {},
        offers=offers or SourceOffersForm(formdata=None, obj=source),
        offer_timeout_min=offer_timeout_min(),
        OFFER_TIMEOUT_MAX=OFFER_TIMEOUT_MAX,
        OFFER_MISSES_MAX=OFFER_MISSES_MAX,
    )


def _weight(text: str) -> int | None:
    """A typed weight: blank is 0; anything but a plain whole number in range is None."""
    text = text.strip() or "0"
    if not (text.isascii() and text.isdigit()) or len(text) > 7:
        return None
    weight = int(text)
    return weight if weight <= WEIGHT_MAX else None


@bp.get("/<id:source_id>")
@allow(Role.SUPERVISOR)
def detail(source_id: int) -> ResponseReturnValue:
    return _editor(db.get_or_404(Source, source_id))


@bp.post("/<id:source_id>")
@allow(Role.SUPERVISOR)
def save(source_id: int) -> ResponseReturnValue:
    """Save the whole editor: every operator's weight (blank = 0), the strategy and the offers."""
    source = db.get_or_404(Source, source_id)
    operator_ids = set(db.session.scalars(list_operators_query().with_only_columns(Operator.id)))
    typed: dict[int, str] = {}
    errors: dict[int, str] = {}
    weights: dict[int, int] = {}
    for key, value in request.form.items():
        if not key.startswith("weight-"):
            continue
        try:
            operator_id = int(key.removeprefix("weight-"))
        except ValueError:
            continue
        if operator_id not in operator_ids:
            continue
        typed[operator_id] = value
        weight = _weight(value)
        if weight is None:
            errors[operator_id] = _("A whole number from 0 to %(max)s.", max=f"{WEIGHT_MAX:,}")
        else:
            weights[operator_id] = weight
    strategy = request.form.get("strategy", source.strategy)
    if strategy not in tuple(Strategy):
        strategy = source.strategy
    # Absent fields keep the stored values (obj); present ones are validated, the typed text kept.
    offers = SourceOffersForm(obj=source)
    offers_given = any(name in request.form for name in OFFER_FIELDS)
    if offers_given and not offers.validate():
        return _editor(source, status=422, typed=typed, errors=errors, offers=offers)
    if errors:
        return _editor(source, status=422, typed=typed, errors=errors, offers=offers if offers_given else None)
    begin_write(db.session)
    domain.set_weights(db.session(), source, weights, replace=True)
    domain.update_source(db.session(), source, {"strategy": strategy, "sticky": request.form.get("sticky") == "1"})
    if offers_given:
        domain.set_offers(
            db.session(),
            source.id,
            offer_timeout_seconds=offers.offer_timeout_seconds.data,
            offer_misses_away=required(offers.offer_misses_away),
            offer_timeout_min=current_app.config["LEADCRM_OFFER_TIMEOUT_MIN"],
        )
    db.session.commit()
    if not is_htmx():
        return redirect(url_for(".detail", source_id=source.id))
    return _editor(source)
