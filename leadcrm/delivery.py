"""One HTTP POST of a webhook: signed, to a checked address, within a deadline.

Signed as the Standard Webhooks specification says (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256 over
``id.timestamp.body``), with the ``standardwebhooks`` package. The URL's
host is resolved here, at send time, and every address it resolves to is
checked: by default none may be loopback, link-local, private or otherwise
not global (``allow_private`` lifts that for LAN installs and tests), and
the connection goes to the checked address, so a DNS change between the
check and the connection cannot point it inside. Redirects are not followed
(a 3xx is a failure); at most ``WEBHOOK_BODY_READ_MAX`` bytes of the answer
are read; the whole exchange has ``timeout`` seconds (a watchdog thread shuts
the socket down then, however slowly the receiver keeps answering).

No database and no Flask here: the worker's sender threads use a ``Sender`` per batch, which keeps
the connection open between deliveries while the receiver allows it; ``send`` is one POST on its own.
"""

import heapq
import http.client
import ipaddress
import itertools
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from leadcrm.vocabulary import WEBHOOK_BODY_READ_MAX, WEBHOOK_TIMEOUT

USER_AGENT = "leadcrm-webhooks/1"
# What the delivery log keeps of an error or an answer's start.
ERROR_MAX = 500


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got: the status code (None: no answer), how long it took, and what went wrong."""

    status_code: int | None
    duration_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Refused(Exception):
    """The URL may not be sent to (its scheme, or an address it resolves to)."""


def check_url(url: str) -> tuple[str, str, int, str]:
    """The URL's scheme, host, port and path with query, or Refused: only http(s) with a host.

    Whitespace or control characters anywhere in it are refused too: http.client would refuse
    them at send time (or, in a host, a resolver might read something else), so they never get stored."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise Refused("the URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("the URL may not carry a user name or password")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def address_refused(address: str) -> str | None:
    """Why webhooks may not go to this IP address by default (None: it is a global address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global or ip.is_multicast:
        return f"{ip} is not a public address"
    return None


def literal_address_refused(host: str) -> str | None:
    """For a URL whose host is an IP address: why it is refused by default (None: a name, or allowed)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return address_refused(host.strip("[]"))


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses ``host`` resolves to, all of them checked; Refused if any may not be sent to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            why = address_refused(address)
            if why is not None:
                raise Refused(f"{host} resolves to {why}; set LEADCRM_WEBHOOKS_ALLOW_PRIVATE=1 to allow it")
    return addresses


def _connect(address: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection that sends each request at once (no Nagle delay waiting for an ACK; http.client
    sets this itself, in the ``connect`` the pinned connections replace)."""
    sock = socket.create_connection((address, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = _connect(self._address, self.port, self.timeout)


class _Deadline:
    """Shuts the connection's socket down when the exchange's time is up.

    A socket's timeout bounds each read, not the whole answer: a receiver
    that sends its head a line at a time, each within the timeout, would
    otherwise hold the sender (and outlive the delivery's lease) for hours.
    One watchdog thread per process keeps every deadline (a thread per
    exchange would cost more than the exchange).
    """

    __slots__ = ("at", "passed", "cancelled", "_connection")

    def __init__(self, connection: http.client.HTTPConnection, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.passed = False
        self.cancelled = False
        self._connection = connection
        _WATCHDOG.watch(self)

    def cut(self) -> None:
        self.passed = True
        sock = self._connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
            except OSError:
                pass

    def cancel(self) -> None:
        self.cancelled = True


class _Watchdog:
    """The thread that cuts exchanges whose deadline passed, earliest first (started on first use,
    again in a forked child)."""

    def __init__(self) -> None:
        self._pid = 0
        self._ready = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()

    def watch(self, deadline: _Deadline) -> None:
        if self._pid != os.getpid():
            with _STARTING:
                if self._pid != os.getpid():
                    self._start()
        with self._ready:
            heapq.heappush(self._due, (deadline.at, next(self._order), deadline))
            if self._due[0][2] is deadline:
                self._ready.notify()  # earlier than what the thread waits for

    def _start(self) -> None:
        self._pid = os.getpid()
        self._ready = threading.Condition()
        self._due = []
        threading.Thread(target=self._run, name="webhook-deadlines", daemon=True).start()

    def _run(self) -> None:
        with self._ready:
            while True:
                while self._due and self._due[0][2].cancelled:
                    heapq.heappop(self._due)
                if not self._due:
                    self._ready.wait()
                    continue
                left = self._due[0][0] - time.monotonic()
                if left > 0:
                    self._ready.wait(left)
                    continue
                heapq.heappop(self._due)[2].cut()


_STARTING = threading.Lock()
_WATCHDOG = _Watchdog()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, the certificate checked against the URL's host (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = _connect(self._address, self.port, self.timeout)
        self.sock = raw  # the deadline can cut a handshake that dribbles too
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


class _Stale(Exception):
    """A kept connection that failed before a real answer (closed by the receiver, or garbled by bytes
    it sent after its last answer): send again on a new one."""


# What a kept connection shows when the receiver closed it while it was idle (RemoteDisconnected is a
# BadStatusLine), or sent bytes after its last answer that now precede this one: sent again, on a new one.
_STALE = (http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)


class Sender:
    """POSTs to one URL, one delivery after another, over one connection while the receiver keeps it
    open (HTTP/1.1 keep-alive: no new TCP or TLS handshake per delivery); ``close`` when done.

    Every new connection resolves the host again and checks every address; a
    kept one goes on to the address checked when it was opened. The worker uses
    one Sender per batch, so an address is at most one send window old.
    """

    def __init__(self, url: str, secret: str, *, allow_private: bool, timeout: float = WEBHOOK_TIMEOUT) -> None:
        self.url = url
        self.allow_private = allow_private
        self.timeout = timeout
        self._signer = Webhook(secret)
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(self, message_id: str, body: str) -> Outcome:
        """POST ``body``, signed as ``message_id``; never raises (what went wrong is the outcome's error)."""
        started = time.monotonic()
        deadline = started + self.timeout

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            scheme, host, port, path = check_url(self.url)
            now = datetime.now(UTC)
            headers = {
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._signer.sign(message_id, now, body),
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
            payload = body.encode()
            if self._connection is not None and _not_quiet(self._connection):
                self.close()  # closed by the receiver, or bytes no request asked for: never read as an answer
            if self._connection is not None:
                try:
                    return self._exchange(path, payload, headers, deadline, took, kept=True)
                except _Stale:
                    self.close()
            last_error: Exception | None = None
            for address in resolve(host, port, self.allow_private):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
                connection = kind(host, port, address, left)
                cutoff = _Deadline(connection, left)
                try:
                    connection.connect()
                except OSError as exc:  # refused, unreachable: the next address, if any
                    connection.close()
                    if cutoff.passed:
                        raise TimeoutError from None
                    last_error = exc
                    continue
                finally:
                    cutoff.cancel()
                self._connection = connection
                return self._exchange(path, payload, headers, deadline, took, kept=False)
            if last_error is not None:
                return Outcome(None, took(), _describe(last_error))
            return Outcome(None, took(), f"no answer within {self.timeout:g} s")
        except Refused as exc:
            return Outcome(None, took(), str(exc)[:ERROR_MAX])
        except TimeoutError:
            return Outcome(None, took(), f"no answer within {self.timeout:g} s")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Outcome(None, took(), _describe(exc))

    def _exchange(
        self,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        deadline: float,
        took: Callable[[], int],
        *,
        kept: bool,
    ) -> Outcome:
        """One request and its answer on the open connection, within the deadline; the connection is
        kept only if the answer was read whole and the receiver did not ask to close."""
        connection = self._connection
        assert connection is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        cutoff = _Deadline(connection, left)
        keep = False
        try:
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(left)
                connection.request("POST", path, body=payload, headers=headers)
                response = connection.getresponse()
                whole = _read_some(response, deadline, connection)
                response.close()  # the connection is free for the next request (kept) or closed below
            except (OSError, http.client.HTTPException) as exc:
                if cutoff.passed:
                    raise TimeoutError from None
                if kept and isinstance(exc, _STALE):
                    raise _Stale from None
                raise
            if cutoff.passed:  # cut off while reading the rest of the answer
                raise TimeoutError
            keep = whole and not response.will_close
            error = None if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}"[:ERROR_MAX]
            return Outcome(response.status, took(), error)
        finally:
            cutoff.cancel()
            if not keep:
                self.close()


def send(
    url: str,
    secret: str,
    message_id: str,
    body: str,
    *,
    allow_private: bool,
    timeout: float = WEBHOOK_TIMEOUT,
) -> Outcome:
    """POST ``body`` to ``url``, signed, on a connection of its own; never raises."""
    sender = Sender(url, secret, allow_private=allow_private, timeout=timeout)
    try:
        return sender.send(message_id, body)
    finally:
        sender.close()


def _not_quiet(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept connection has something to read: its end (the receiver closed it) or
    bytes after the last answer (a body sent with a 204, say), which the next answer must not start with."""
    sock = connection.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()  # not select(): it refuses descriptors past 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _read_some(response: http.client.HTTPResponse, deadline: float, connection: http.client.HTTPConnection) -> bool:
    """Read at most WEBHOOK_BODY_READ_MAX bytes of the answer, within the deadline (the rest is dropped);
    whether it was read whole."""
    left = WEBHOOK_BODY_READ_MAX
    while left > 0:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        chunk = response.read1(min(left, 16 * 1024))
        if not chunk:
            return True
        left -= len(chunk)
    return response.read1(1) == b""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:ERROR_MAX]
