"""A local stand-in for Mixpanel's ``/track`` endpoint, for the adapter's tests.

:class:`MixpanelEndpoint` runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port
0) in a daemon thread. It parses what ``mixpanel.Consumer`` POSTs (a form with a
``data`` field holding one JSON event or a JSON array of them) and answers according
to its mode, switchable at runtime with :meth:`MixpanelEndpoint.set_mode`:

``"ok"``          200 ``{"status": 1, "error": null}``
``"slow"``        waits ``delay`` seconds, then answers like ``"ok"``
``"error500"``    500 with a non-JSON body
``"reject400"``   400 ``{"status": 0, "error": "bad"}``
``"garbage"``     200 with a non-JSON body
``"nostatus"``    200 with JSON that has no ``status`` key
``"timeout408"``  408 with a non-JSON body
``"throttle429"`` 429 ``{"status": 0, "error": "rate limited"}``

``set_mode(mode, times=n)`` applies the mode to the next ``n`` requests only, then
returns to ``"ok"``. :attr:`~MixpanelEndpoint.events` holds the events that were
accepted (answered ``"ok"``/``"slow"``); :attr:`~MixpanelEndpoint.requests` records
every request, whatever the answer, with its raw ``data`` field.
:func:`refused_url` gives a URL where nothing listens.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

__all__ = [
    "MODES",
    "MixpanelEndpoint",
    "ReceivedRequest",
    "eventually",
    "mixpanel_endpoint",
    "refused_url",
]

MODES = ("ok", "slow", "error500", "reject400", "garbage", "nostatus", "timeout408", "throttle429")


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One POST as received: the mode that answered it, the raw ``data``, the events."""

    mode: str
    data: str
    events: tuple[dict[str, Any], ...]


class MixpanelEndpoint:
    """A fake Mixpanel ``/track`` endpoint on loopback; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._mode = "ok"
        self._times: int | None = None
        self._delay = 0.0
        self._events: list[dict[str, Any]] = []
        self._requests: list[ReceivedRequest] = []
        self._stopping = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                endpoint._handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-mixpanel",
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/track"
        """The events URL to give ``mixpanel.Consumer(events_url=...)``."""

    # --- control ------------------------------------------------------------------------

    def set_mode(self, mode: str, *, delay: float = 2.0, times: int | None = None) -> None:
        """Answer the next ``times`` requests (all, if ``None``) in ``mode``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        with self._lock:
            self._mode, self._delay, self._times = mode, delay, times

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the accepted events, in arrival order."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` events were accepted; return them (AssertionError
        on timeout)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._events) >= n, timeout):
                raise AssertionError(f"{len(self._events)} event(s) after {timeout}s, want {n}")
            return list(self._events)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Wait until at least ``n`` requests arrived (answered or not yet)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= n, timeout):
                raise AssertionError(f"{len(self._requests)} request(s) after {timeout}s")
            return list(self._requests)

    def close(self) -> None:
        """Wake slow handlers, stop the server and release its socket."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- serving ------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, body: str) -> None:
        data = parse_qs(body).get("data", [""])[0]
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = []
        events = tuple(parsed if isinstance(parsed, list) else [parsed])
        with self._lock:
            mode, delay = self._mode, self._delay
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode, self._times = "ok", None
            self._requests.append(ReceivedRequest(mode, data, events))
            self._lock.notify_all()
        if mode == "slow":
            self._stopping.wait(delay)
        if mode in ("ok", "slow"):
            with self._lock:
                self._events.extend(events)
                self._lock.notify_all()
            self._reply(handler, 200, b'{"status": 1, "error": null}')
        elif mode == "error500":
            self._reply(handler, 500, b"<html>Internal Server Error</html>")
        elif mode == "reject400":
            self._reply(handler, 400, b'{"status": 0, "error": "bad"}')
        elif mode == "nostatus":
            self._reply(handler, 200, b'{"error": null}')
        elif mode == "timeout408":
            self._reply(handler, 408, b"<html>Request Timeout</html>")
        elif mode == "throttle429":
            self._reply(handler, 429, b'{"status": 0, "error": "rate limited"}')
        else:
            self._reply(handler, 200, b"this is not json")

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout); nothing to answer


def refused_url() -> str:
    """An events URL on a loopback port where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/track"


def eventually(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def mixpanel_endpoint() -> Iterator[MixpanelEndpoint]:
    """A running :class:`MixpanelEndpoint`, closed after the test."""
    endpoint = MixpanelEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()
