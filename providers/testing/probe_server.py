"""A real HTTP server on loopback that records how many requests it serves at once."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    # A streamed reply: written piece by piece, without a Content-Length.
    chunks: list[bytes] | None = None
    # Seconds to wait before answering (on top of the server's ``hold``).
    delay: float = 0.0
    # Seconds between the pieces of a streamed reply.
    gap: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Span:
    """The server's work on one request: from its arrival (the ``request``-th) until its
    answer went out or the server saw its client hang up (``hung_up``)."""

    request: int
    arrived: float
    ended: float | None = None
    hung_up: bool = False
    # The requests worked on when this one arrived whose clients were still connected.
    beside: tuple[int, ...] = ()


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when many callers start at
    # once, and a dropped SYN is retried only after a second. A provider actor
    # opens one connection per call of a group with no limit: a burst of 1,000
    # on a busy machine overran 128, and its calls failed to read their answers.
    request_queue_size = 1_024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.killed = False

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.killed:
            request.close()
            return
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (a killed caller), or a server killed under its calls,
        # is no error of the server's.
        if not isinstance(sys.exc_info()[1], ConnectionError | OSError):
            super().handle_error(request, client_address)


class ProbeServer:
    """Answers every POST after ``hold`` seconds; remembers requests in arrival order.

    ``max_in_flight`` is measured by the server itself, so it is what a real
    backend would have seen, whoever the callers were. A request whose client
    hung up counts until the server's thread sees the hang-up, a moment later;
    ``max_connected`` counts only the requests whose clients were still
    connected (what the callers had open at once). Subclasses decide the reply
    in :meth:`respond`.
    """

    def __init__(self, hold: float = 0.0, *, stop_on_disconnect: bool = False) -> None:
        self.hold = hold
        # Stop working on a request whose client hung up, as llama.cpp's llama-server does.
        self.stop_on_disconnect = stop_on_disconnect
        # Requests whose client hung up before the whole answer was written.
        self.abandoned = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_connected = 0
        self.received: list[Received] = []
        self.spans: list[Span] = []
        # The requests worked on now, by arrival number, with their connections.
        self._live: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self._listen(0)

    def _listen(self, port: int) -> None:
        """Listen on ``port`` of loopback (0: any free one); served from __enter__ on."""
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        # serve_forever checks for shutdown() every poll_interval (default 0.5 s).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def bodies(self) -> list[Any]:
        return [request.body for request in self.received]

    def respond(self, request: Received) -> Reply:
        return Reply()

    def crowded(self, limit: int) -> list[list[Span]]:
        """Each moment a request arrived while ``limit`` others were worked on: the spans
        of the requests worked on then, in arrival order."""
        with self._lock:
            spans = list(self.spans)
        moments = []
        for span in spans:
            live = [
                s
                for s in spans
                if s.arrived <= span.arrived and (s.ended is None or s.ended > span.arrived)
            ]
            if len(live) > limit:
                moments.append(live)
        return moments

    def __enter__(self) -> ProbeServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._server.killed:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def kill(self) -> None:
        """Die as a killed process does: new connections are refused, and every open one
        (its calls in flight, its idle keep-alive ones) is reset."""
        self._server.killed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        for connection in list(self._server.connections):
            # Its handler's files hold the socket open: shut the connection itself.
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.shutdown(socket.SHUT_RDWR)

    def revive(self) -> None:
        """After :meth:`kill`: serve again at the same address, as a restarted server does
        (what it received before stays counted)."""
        self._listen(self._server.server_address[1])
        self._thread.start()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        request = Received(
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=json.loads(raw) if raw else None,
        )
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.received.append(request)
            beside = tuple(n for n, other in self._live.items() if _connected(other))
            span = Span(len(self.received) - 1, time.monotonic(), beside=beside)
            self.spans.append(span)
            self._live[span.request] = handler.connection
            self.max_connected = max(self.max_connected, len(beside) + 1)
        working = True

        def done() -> None:
            # Before the answer's last bytes go out: a client that has them may send its
            # next request at once, which must not find this one still counted.
            nonlocal working
            if working:
                working = False
                with self._lock:
                    self.in_flight -= 1
                    span.ended = time.monotonic()
                    del self._live[span.request]

        try:
            reply = self.respond(request)
            if not self._work(handler, self.hold + reply.delay):
                span.hung_up = True
                handler.close_connection = True
                return
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if reply.chunks is None:
                handler.send_header("Content-Length", str(len(reply.body)))
                handler.end_headers()
                done()
                handler.wfile.write(reply.body)
            else:
                handler.send_header("Connection", "close")
                handler.end_headers()
                for i, chunk in enumerate(reply.chunks):
                    if i and reply.gap:
                        time.sleep(reply.gap)
                    if i == len(reply.chunks) - 1:
                        done()
                    handler.wfile.write(chunk)
                    handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the caller gave up (its timeout, a hang-up)
            span.hung_up = True
            with self._lock:
                self.abandoned += 1
        finally:
            done()

    def _work(self, handler: BaseHTTPRequestHandler, seconds: float) -> bool:
        """Take ``seconds``; False if the client hung up meanwhile and that stops the work."""
        if not self.stop_on_disconnect:
            time.sleep(seconds)
            return True
        # The client sends nothing more before its answer: readable means closed.
        readable, _, _ = select.select([handler.connection], [], [], seconds)
        if readable and not handler.connection.recv(1, socket.MSG_PEEK):
            with self._lock:
                self.abandoned += 1
            return False
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real API servers: a client reuses its connections.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def do_POST(self) -> None:
                probe._serve(self)

            def do_GET(self) -> None:
                probe._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _connected(connection: socket.socket) -> bool:
    """False once the client closed its side: readable, with nothing to read."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return not readable or bool(connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False
