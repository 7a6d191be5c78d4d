"""A real HTTP receiver for webhook tests: a server on 127.0.0.1 in a thread, recording every POST.

Its answer (status, delay, body, headers, dribble) can change while it runs; ``stop``
closes the listening socket (connections are refused) and ``start`` listens
again on the same port.
"""

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leadcrm.worker import yield_cpu
from tests.servers import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int  # the status this receiver answered
    port: int = 0  # the sender's port: one per connection
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Receiver:
    def __init__(self, idle: bool = False) -> None:
        self.port = free_port()
        # Its threads run only on CPU time nothing else wants (a benchmark's receiver stands for another machine).
        self.idle = idle
        self.status = 204
        # Answered 500 whatever ``status`` says when this returns True for the body (None: never).
        self.fail_if: Callable[[bytes], bool] | None = None
        self.delay = 0.0
        self.answer_body = b""
        self.answer_headers: dict[str, str] = {}
        # Seconds between the lines of the answer's head: a receiver that answers a little at a time.
        self.dribble = 0.0
        # HTTP/1.1 keeps a connection open between requests (as most receivers do); False: one per request.
        self.keep_alive = True
        self.received: list[Received] = []
        self._connections: set[Any] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.delay:
                    time.sleep(receiver.delay)
                fail_if = receiver.fail_if
                status = 500 if fail_if is not None and fail_if(body) else receiver.status
                with receiver._lock:
                    receiver.received.append(Received(dict(self.headers), body, status, port=self.client_address[1]))
                self.send_response(status)
                if receiver.dribble:
                    try:
                        for n in range(int(30 / receiver.dribble)):
                            self.flush_headers()  # what is buffered goes now, then one more line later
                            time.sleep(receiver.dribble)
                            self.send_header(f"X-Dribble-{n}", "x")
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the sender gave up
                for name, value in receiver.answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.answer_body)))
                self.end_headers()
                try:
                    self.wfile.write(receiver.answer_body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender stopped reading (it reads 64 KiB at most)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        server = self._server

        def serve() -> None:
            if receiver.idle:
                yield_cpu()  # the threads it starts for each connection inherit it
            server.serve_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut the connections kept open: down, as a crashed receiver is."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def ok(self) -> list[Received]:
        """What was received and answered with a 2xx."""
        with self._lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)
