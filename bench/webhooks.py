"""Registration throughput with the worker running, with no webhook and with one enabled: `make bench`.

gunicorn (the project's config) and `flask leadcrm worker` on one SQLite file;
wrk registers through bench/register.lua. The two conditions alternate in
rounds (no webhook, one webhook subscribed to every event type whose
receiver, a local HTTP server, answers 204), so a noisy neighbour slows both
alike; the medians and their ratio are written to bench/webhooks.md. The
receiver's count shows the deliveries were real: after each round with the
webhook on, the script waits until nothing waits to be sent and says how long
the worker took to catch up (its senders take only CPU time nothing else
wants, so under wrk's full load they fall behind and catch up after).

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
        receiver = Receiver(idle=True).start()  # as if on another machine: it takes only idle CPU time
        env = {**os.environ, "DATABASE_URL": url, "LEADCRM_INSTANCE_PATH": str(workdir / "instance")}
        worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "leadcrm", "worker"], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        runs: dict[str, list[float]] = {"without": [], "with": []}
        during: list[int] = []  # deliveries received while registrations ran
        catch_up: list[float] = []  # seconds from the round's end until nothing waited to be sent
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
                        received = len(receiver.ok())
                        run = wrk(register, seconds=args.seconds, script_args=["bench_source", str(digit)],
                                  headers=auth["api"])  # fmt: skip
                        digit = digit % 9 + 1
                        if run["non2xx"] or run["socket_errors"]:
                            raise SystemExit(f"registrations failed: {run}")
                        runs[condition].append(run["rps"])
                        if condition == "with":
                            ended = time.monotonic()
                            during.append(len(receiver.ok()) - received)
                            hook = f"{base}/api/v1/webhooks/{hook_id}"
                            while api.get(hook, timeout=30).json()["pending"]:
                                if time.monotonic() - ended > 600:
                                    raise SystemExit("the worker did not catch up within 10 minutes")
                                time.sleep(0.2)
                            catch_up.append(time.monotonic() - ended)
                delivered = len(receiver.ok())
                sent = len({r.headers["webhook-id"] for r in receiver.ok()})
                stored = api.get(f"{base}/api/v1/webhooks/{hook_id}", timeout=30).json()["delivered"]
                if not delivered == sent == stored:
                    raise SystemExit(f"received {delivered}, {sent} distinct, {stored} counted as delivered")
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
        f"The receiver got {delivered} deliveries, each event once, all of them counted as delivered.",
        "",
        "Delivered while registrations ran, per round: " + ", ".join(str(n) for n in during) + "; "
        "then nothing waited to be sent after " + ", ".join(f"{s:.1f}" for s in catch_up) + " s.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
