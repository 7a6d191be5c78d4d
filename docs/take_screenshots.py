"""Refresh docs/screenshots/ from the demo data: `make screenshots`.

Starts the app under gunicorn on a fresh SQLite file filled by
`flask leadcrm demo`, and photographs the main pages in headless Chromium.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers import gunicorn  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
PAGES = [
    ("load", "/", "en"),
    ("intake", "/intake/", "en"),
    ("weights", "/sources/1", "en"),
    ("report", "/report/", "en"),
    ("contacts", "/contacts/", "en"),
    ("operators", "/operators/", "en"),
    ("load-ru", "/", "ru"),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/demo.sqlite3"
        env = {**os.environ, "DATABASE_URL": url, "LEADCRM_INSTANCE_PATH": f"{tmp}/instance", "FLASK_APP": "app.py"}
        flask = [sys.executable, "-m", "flask"]
        subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
        subprocess.run([*flask, "leadcrm", "demo"], cwd=ROOT, env=env, check=True)
        with gunicorn(url, Path(tmp), workers=2) as base, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=os.environ.get("LEADCRM_CHROMIUM", "/usr/bin/chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            OUT.mkdir(parents=True, exist_ok=True)
            for name, path, language in PAGES:
                page = browser.new_page(viewport={"width": 1200, "height": 760})
                page.goto(f"{base}/language/{language}?next={path}")
                page.screenshot(path=str(OUT / f"{name}.png"))
                page.close()
            browser.close()
    print(f"wrote {len(PAGES)} screenshots to {OUT}")


if __name__ == "__main__":
    main()
