"""`make run`: gunicorn and the worker (`flask leadcrm worker`) side by side, as one command.

Ctrl+C stops both: the terminal sends SIGINT to both, and this script, on
SIGINT, SIGTERM or SIGHUP, sends them SIGTERM as well (for a `kill` of this
process alone). Either one exiting stops the other (gunicorn that cannot
bind its port does not leave a worker running), and the script exits with
the status of the one that ended first. Nothing is left running.

On a server, run them as services of their own instead (the README's
"The worker"; deploy/leadcrm-worker.service).
"""

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# gunicorn waits up to its graceful_timeout (10 s) for requests in flight; past this, what is left is killed.
STOP_TIMEOUT = 20.0
COMMANDS = {
    "gunicorn": [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app"],
    "worker": [sys.executable, "-m", "flask", "--app", "app", "leadcrm", "worker"],
}

stopped_by: str | None = None


def stop(signum: int, _frame: FrameType | None) -> None:
    global stopped_by
    stopped_by = signal.Signals(signum).name


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in COMMANDS.items():
        if stopped_by is None:
            children[name] = subprocess.Popen(command, cwd=PROJECT_ROOT)
    first: str | None = None
    while first is None and stopped_by is None:
        first = next((name for name, child in children.items() if child.poll() is not None), None)
        time.sleep(0.1)
    if first is not None and stopped_by is None:
        other = ", ".join(name for name in children if name != first)
        print(f"run: {first} exited with status {children[first].returncode}; stopping {other}", file=sys.stderr)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"run: {name} did not stop within {STOP_TIMEOUT:g} s; killed", file=sys.stderr)
            child.kill()
            child.wait()
    if stopped_by is not None:
        return 0
    assert first is not None
    status = children[first].returncode
    return status if status > 0 else 128 - status if status < 0 else 1  # an unasked-for exit is a failure


if __name__ == "__main__":
    sys.exit(main())
