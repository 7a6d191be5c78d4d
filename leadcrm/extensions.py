"""Extensions created once and bound to the app in create_app."""

from flask_babel import Babel
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from leadcrm.models import Base

# Objects stay readable after commit: a view renders what it just wrote
# without reloading every row.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
# render_as_batch lets Alembic alter SQLite tables (it copies them).
migrate = Migrate(render_as_batch=True)
csrf = CSRFProtect()
babel = Babel()
login_manager = LoginManager()
