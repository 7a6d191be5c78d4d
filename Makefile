# leadcrm: `make run` starts the app (and its worker), `make test` runs the tests.
# Both set up a virtualenv with the pinned dependencies first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := app.py

.PHONY: run test lint migrate demo translations screenshots bench clean

MO := translations/ru/LC_MESSAGES/messages.mo

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

$(MO): translations/ru/LC_MESSAGES/messages.po $(VENV)/.installed
	$(BIN)/pybabel compile --statistics -d translations -D messages

## run: migrate the database, serve the app with gunicorn and run the worker beside it (deploy/run.py; HOST, PORT, WORKERS, DATABASE_URL); Ctrl+C stops both
run: $(VENV)/.installed $(MO)
	$(BIN)/python deploy/run.py

## migrate: bring the database schema up to date
migrate: $(VENV)/.installed
	$(BIN)/flask db upgrade

## test: lint, then run the whole test suite
test: lint $(MO)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## demo: fill an empty database with a believable setup (then `make run`)
demo: $(VENV)/.installed
	$(BIN)/flask db upgrade
	$(BIN)/flask leadcrm demo

## translations: re-extract interface text and merge it into the catalogs
translations: $(VENV)/.installed
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext -k Message --no-location --omit-header -o translations/messages.pot .
	$(BIN)/pybabel update -w 100 -i translations/messages.pot -d translations -D messages

## screenshots: refresh docs/screenshots/ from the demo data (needs Chromium)
screenshots: $(VENV)/.installed-dev $(MO)
	$(BIN)/python docs/take_screenshots.py

## bench: measure throughput, growth, page times and accuracy; writes bench/results.md (about 6 minutes)
bench: $(VENV)/.installed-dev $(MO)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null; } || \
		{ echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/webhooks.py

## lint: ruff (rules and formatting) and mypy (pyproject.toml [tool.mypy]); `make test` runs it first
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
