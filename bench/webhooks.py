"""Registration throughput with the worker running, with no webhook and with one enabled: `make bench`.

gunicorn (the project's config) and `flask leadcrm worker` on one SQLite file;
wrk registers through bench/register.lua. The two conditions alternate in
rounds (no webhook, one webhook subscribed to every event type whose
receiver, a local HTTP server, answers 204), so a noisy neighbour slows both
alike; the medians and their ratio are written to bench/webhooks.md. The
receiver's count shows the deliveries were real.

    python bench/webhooks.py [--seconds 10] [--rounds 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import server, setup_source, wrk  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

OUT = ROOT / "bench" / "webhooks.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["LEADCRM_WEBHOOKS_ALLOW_PRIVATE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir}/bench.sqlite3"
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=ROOT,
                       env={**os.environ, "DATABASE_URL": url}, check=True, capture_output=True)  # fmt: skip
        setup_source(url, "bench_source", 10)
        receiver = Receiver(nice=19).start()  # as if on another machine: it yields the CPU
        env = {**os.environ, "DATABASE_URL": url, "LEADCRM_INSTANCE_PATH": str(workdir / "instance")}
        worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "leadcrm", "worker"], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        runs: dict[str, list[float]] = {"without": [], "with": []}
        try:
            with server(url, workdir) as (base, auth):
                api = requests.Session()
                api.headers.update(auth["api"])
                register = f"{base}/api/v1/contacts/register"
                wrk(register, seconds=2, script_args=["bench_source", "1"], headers=auth["api"])  # warm up
                hook_id = None
                digit = 2
                for _ in range(args.rounds):
                    for condition in ("without", "with"):
                        if condition == "with" and hook_id is None:
                            answer = api.post(f"{base}/api/v1/webhooks/", json={
                                "url": receiver.url, "events": ["contact.registered", "contact.assigned",
                                "contact.waiting", "contact.closed"]}, timeout=30)  # fmt: skip
                            hook_id = answer.json()["id"]
                        if hook_id is not None:
                            enabled = condition == "with"
                            api.patch(f"{base}/api/v1/webhooks/{hook_id}", json={"enabled": enabled}, timeout=30)
                        run = wrk(register, seconds=args.seconds, script_args=["bench_source", str(digit)],
                                  headers=auth["api"])  # fmt: skip
                        digit = digit % 9 + 1
                        if run["non2xx"] or run["socket_errors"]:
                            raise SystemExit(f"registrations failed: {run}")
                        runs[condition].append(run["rps"])
                time.sleep(3)
                delivered = len(receiver.ok())
        finally:
            worker.terminate()
            worker.wait(30)
            receiver.stop()
    without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
    lines = [
        "# Registration with a webhook enabled",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, `python bench/webhooks.py --seconds {args.seconds} "
        f"--rounds {args.rounds}` (run by `make bench`).",
        "gunicorn and the worker on one SQLite file, wrk 8 connections, the conditions alternated in rounds.",
        "",
        "| condition | registrations/s per round | median |",
        "|---|---|---|",
        f"| no webhook | {', '.join(f'{r:.0f}' for r in runs['without'])} | {without:.0f} |",
        f"| one webhook, every contact event | {', '.join(f'{r:.0f}' for r in runs['with'])} | {with_:.0f} |",
        "",
        f"With / without: **{with_ / without:.2f}** (budget: at least 0.90). "
        f"The receiver got {delivered} deliveries while the webhook was on.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
