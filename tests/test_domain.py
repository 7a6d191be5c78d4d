"""The domain stands on its own: no Flask below the edges, and the engine runs on a bare SQLAlchemy session."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import distribution, operators, sources
from leadcrm.database import begin_write, configure_engine, sqlite_connect_args
from leadcrm.errors import Message, UnknownSource
from leadcrm.identity import parse_identity
from leadcrm.models import Base, Contact, Operator
from leadcrm.storage import act_as

PACKAGE = Path(__file__).resolve().parent.parent / "leadcrm"
# The domain, its data layer and its model: what the engine needs, and nothing of the web.
DOMAIN_MODULES = (
    "distribution",
    "leads",
    "identity",
    "sources",
    "operators",
    "accounts",
    "idempotency",
    "storage",
    "queries",
    "models",
    "errors",
    "database",
    "vocabulary",
)
# The edges, and what binds the app together: the domain imports none of them.
EDGES = ("leadcrm.extensions", "leadcrm.api", "leadcrm.web", "leadcrm.auth", "leadcrm.i18n", "leadcrm.units")


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module an import statement anywhere in ``tree`` names (inside functions too), with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # from leadcrm import extensions
                yield node.lineno, f"{node.module}.{alias.name}"


def is_forbidden(module: str) -> bool:
    top = module.split(".")[0]
    if top == "flask" or top.startswith("flask_"):
        return True
    return any(module == edge or module.startswith(edge + ".") for edge in EDGES)


@pytest.mark.parametrize("name", DOMAIN_MODULES)
def test_the_domain_imports_neither_flask_nor_the_edges(name: str) -> None:
    source = (PACKAGE / f"{name}.py").read_text()
    found = [f"line {line}: {module}" for line, module in imported_modules(ast.parse(source)) if is_forbidden(module)]
    assert not found, f"leadcrm/{name}.py imports {found}"


def test_the_import_check_sees_imports_inside_functions() -> None:
    tree = ast.parse("def f():\n    from flask_babel import gettext\n    import leadcrm.web.forms\n")
    assert [module for _, module in imported_modules(tree) if is_forbidden(module)] == [
        "flask_babel",
        "flask_babel.gettext",
        "leadcrm.web.forms",
    ]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    """A plain SQLAlchemy session on an SQLite file, set up as leadcrm sets up its engine; no Flask app."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'leadcrm.db'}", connect_args=sqlite_connect_args(5.0))
    configure_engine(engine)
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


def test_the_engine_distributes_on_a_bare_sqlalchemy_session(session: Session) -> None:
    begin_write(session)
    act_as(session, "script")
    anna = operators.create_operator(session, name="Anna", max_active_leads=1)
    boris = operators.create_operator(session, name="Boris", max_active_leads=1)
    source = sources.create_source(session, name="telegram_bot", strategy="deterministic")
    sources.set_weights(session, source, {anna.id: 1, boris.id: 1}, replace=True)
    session.commit()

    begin_write(session)
    registrations = [
        distribution.register_contact(
            session,
            source=sources.find_source(session, source_id=None, source_name="telegram_bot"),
            identity=parse_identity(external_id=None, phone=f"+7900123456{n}", email=None, region="RU"),
        )
        for n in range(4)
    ]
    session.commit()
    # The limits hold: one contact each, the other two wait, oldest first.
    assert [r.operator.id if r.operator else None for r in registrations] == [anna.id, boris.id, None, None]
    loads = dict(session.execute(sa.select(Operator.id, Operator.active_leads)).all())
    assert loads == {anna.id: 1, boris.id: 1}
    session.commit()

    begin_write(session)
    distribution.close_contact(session, registrations[0].contact.id)
    session.commit()
    # Closing Anna's contact gives her slot to the oldest waiting contact at once.
    assigned = dict(session.execute(sa.select(Contact.id, Contact.operator_id)).all())
    waiting = [r.contact.id for r in registrations[2:]]
    assert [assigned[c] for c in waiting] == [anna.id, None]
    loads = dict(session.execute(sa.select(Operator.id, Operator.active_leads)).all())
    assert loads == {anna.id: 1, boris.id: 1}


def test_domain_errors_carry_messages_that_need_no_app(session: Session) -> None:
    with pytest.raises(UnknownSource) as refused:
        sources.find_source(session, source_id=None, source_name="nowhere")
    assert refused.value.message == Message("No source named “%(name)s”.", name="nowhere")
    assert str(refused.value) == "No source named “nowhere”."
    assert str(refused.value.fields["source_name"]) == "Unknown source."
