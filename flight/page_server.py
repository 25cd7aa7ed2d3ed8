"""The runner's local web server: the teleop page and the flight view (flight/teleop_page/, all
local: it works offline) and one WebSocket (/ws), from its own threads.

    with PageServer(targets, status, host="127.0.0.1", port=8765, view=view) as server:
        print(server.url)                 # carries the token when bound beyond loopback

The control loop never waits on this server, and its work is bounded whatever clients do (see
PageServer). Security: on loopback the Host header must be a loopback name, so a web page whose
name was re-pointed at 127.0.0.1 (DNS rebinding) is refused; a WebSocket from another site's
page (a foreign Origin) is refused; bound to any other address, the WebSocket itself (the state
and every command) needs the token printed at start, and every command carries it too.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from urllib.parse import parse_qs, urlparse

from flight.service import Service

log = logging.getLogger(__name__)
PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "teleop_page")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
DEFAULT_PORT = 8765


class PageServerError(ValueError):
    """The page cannot be served (the port is taken); the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str | None) -> str | None:
    """The name in an HTTP Host header ("127.0.0.1:8765", "[::1]:80", "localhost"), lower case."""
    if not host_header:
        return None
    try:
        return urlparse("//" + host_header).hostname
    except ValueError:
        return None


MAX_CONNECTIONS = 8               # WebSockets at once (pages and observers); more are refused with 503
MAX_MESSAGE_BYTES = 4096          # a command is ~100 bytes; anything larger closes the connection
COMMANDS_PER_S = 60               # per connection (a drag sends 20); the excess is refused, not queued
OPEN_TIMEOUT_S = 3.0              # a connection that has not finished its handshake by then is dropped


class PageServer(Service):
    """The page (static files) and its WebSocket (/ws) on host:port, served from its own threads.

    Each page gets the state `rate_hz` times a second ({"type": "state", ...}) and sends JSON
    commands ({"cmd": "goto", "pos_enu_m": [x, y, z], "token": ...}); each command but the
    page's keep-alive ping is answered ({"type": "reply", "ok": ...}). `targets` may be None (a
    flight view without teleop: every command is refused); `view` (flight/view.py) adds its
    figures to each state and its first messages (the course, a replay) to each new connection.

    The control loop never waits on this server, and its work is bounded whatever clients do:
    one thread builds the state message (one JSON encoding per period, however many pages are
    open); each connection (at most `max_connections`, more are refused with 503) has a thread
    that sends that ready-made text and one that reads commands (at most COMMANDS_PER_S, at most
    MAX_MESSAGE_BYTES each). Security: the Host header must name a loopback address when bound
    to loopback (so a DNS-rebinding web page cannot reach it), and a WebSocket from another site's
    page (a foreign Origin) is refused. Bound to any other address, the WebSocket itself (state
    and commands) needs the token printed at start (the URL holds it; the page passes it on)."""

    def __init__(self, targets, status, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 rate_hz: float = 25.0, view=None, max_connections: int = MAX_CONNECTIONS):
        self.targets, self.status, self.host, self.rate_hz, self.view = targets, status, host, rate_hz, view
        self.port = port
        self.loopback = is_loopback(host)
        self.token = None if self.loopback else secrets.token_urlsafe(16)
        self.max_connections = max_connections
        self.files = {name: os.path.join(PAGE_DIR, name) for name in os.listdir(PAGE_DIR)
                      if os.path.splitext(name)[1] in CONTENT_TYPES}
        self._server = None
        self._thread: threading.Thread | None = None
        self._state_text: str | None = None         # the newest state message, encoded once for every page
        self._state_version = 0
        self._new_state = threading.Condition()
        self._stopping = threading.Event()
        self._count_lock = threading.Lock()
        self.connections = 0                       # open WebSockets
        self.refused = 0                           # WebSockets refused for the cap

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> None:
        from websockets.sync.server import serve
        logging.getLogger("flight.page_server.ws").setLevel(logging.WARNING)     # not a line per page request
        try:
            self._server = serve(self._connection, self.host, self.port, process_request=self._http,
                                 compression=None, max_size=MAX_MESSAGE_BYTES, open_timeout=OPEN_TIMEOUT_S,
                                 logger=logging.getLogger("flight.page_server.ws"))
        except OSError as exc:
            raise PageServerError(f"cannot serve the page on {self.host}:{self.port} ({exc.strerror}): "
                              "pick another port with --teleop-port, or stop what uses it") from None
        self.port = self._server.socket.getsockname()[1]
        self._stopping.clear()
        self._builder = threading.Thread(target=self._build_states, daemon=True, name="teleop-state")
        self._builder.start()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="teleop-server")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._stopping.set()
            with self._new_state:
                self._new_state.notify_all()
            self._server.shutdown()
            self._thread.join(timeout=5.0)
            self._builder.join(timeout=2.0)
            self._server = None

    # ------------------------------------------------------------ HTTP: the page's files
    def host_allowed(self, host_header: str | None) -> bool:
        """Bound to loopback, only a loopback name may be in Host (DNS rebinding gives another one)."""
        name = host_name(host_header)
        return name is not None and (not self.loopback or is_loopback(name))

    def _http(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response
        url = urlparse(request.path)
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            log.warning("page server: refused a request for Host %r (not a loopback name)", host)
            return connection.respond(403, f"Host {host!r} refused: open the page as http://127.0.0.1:{self.port}/\n")
        if url.path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlparse(origin).netloc != host:
                return connection.respond(403, f"WebSocket from another site ({origin}) refused\n")
            if self.token is not None and not hmac.compare_digest(parse_qs(url.query).get("token", [""])[0],
                                                                  self.token):
                return connection.respond(401, "this runner needs the token printed at its start (open the printed "
                                               "URL)\n")
            if self.connections >= self.max_connections:
                self.refused += 1
                return connection.respond(503, f"too many connections (at most {self.max_connections}): close "
                                               "another page\n")
            return None                                # go on with the WebSocket handshake
        name = "index.html" if url.path == "/" else url.path.lstrip("/")
        if name not in self.files:
            return connection.respond(404, f"{url.path}: not found\n")
        with open(self.files[name], "rb") as f:
            body = f.read()
        headers = Headers({"Content-Type": CONTENT_TYPES[os.path.splitext(name)[1]],
                           "Content-Length": str(len(body)), "Cache-Control": "no-store"})
        return Response(200, "OK", headers, body)

    # ------------------------------------------------------------ the WebSocket
    def _authorized(self, message: dict) -> bool:
        return self.token is None or hmac.compare_digest(str(message.get("token", "")), self.token)

    def state_message(self) -> dict:
        message = {"type": "state", "t_s": time.time(), "token_required": self.token is not None,
                   "teleop": self.targets is not None, **self.status()}
        if self.targets is not None:
            message.update(self.targets.snapshot())
        if self.view is not None:
            message.update(self.view.snapshot())
        return message

    def _build_states(self) -> None:
        """One thread, `rate_hz` times a second: the state message, encoded once for all pages."""
        next_s = time.monotonic()
        while not self._stopping.is_set():
            if self.connections:
                try:
                    text = json.dumps(self.state_message())
                except Exception:              # a bug here must not kill the pages silently
                    log.exception("page server: cannot build the state message")
                    text = None
                if text is not None:
                    with self._new_state:
                        self._state_text, self._state_version = text, self._state_version + 1
                        self._new_state.notify_all()
            next_s = max(next_s + 1.0 / self.rate_hz, time.monotonic())
            self._stopping.wait(max(0.0, next_s - time.monotonic()))

    def _connection(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed
        with self._count_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:                                   # raced past the check in _http
            self.refused += 1
            connection.close(1013, "too many connections")
            return
        send_lock, closed = threading.Lock(), threading.Event()

        def send(text: str) -> None:
            with send_lock:
                connection.send(text)

        def push() -> None:
            seen = 0
            while not closed.is_set() and not self._stopping.is_set():
                with self._new_state:
                    if self._state_version == seen:
                        self._new_state.wait(timeout=0.5)
                    text, version = self._state_text, self._state_version
                if text is None or version == seen:
                    continue
                seen = version
                try:
                    send(text)
                except ConnectionClosed:
                    return

        counted = False
        try:
            for message in (self.view.hello() if self.view is not None else ()):
                send(json.dumps(message))
            pusher = threading.Thread(target=push, daemon=True, name="teleop-push")
            pusher.start()
            window_s, in_window = time.monotonic(), 0
            for raw in connection:
                now = time.monotonic()
                if now - window_s >= 1.0:
                    window_s, in_window = now, 0
                in_window += 1
                if in_window > COMMANDS_PER_S:
                    continue                       # a flood: dropped unread, never queued
                try:
                    message = json.loads(raw)
                    cmd = str(message["cmd"])
                except (ValueError, KeyError, TypeError):
                    send(json.dumps({"type": "reply", "ok": False, "error": 'expected JSON like {"cmd": "goto", ...}'}))
                    continue
                if self.targets is None:
                    send(json.dumps({"type": "reply", "cmd": cmd, "ok": False,
                                     "error": "this is a flight view: it takes no commands (fly --teleop steers)"}))
                    continue
                if not self._authorized(message):
                    log.warning("page server: refused %r from %s: no valid token", cmd, connection.remote_address)
                    send(json.dumps({"type": "reply", "cmd": cmd, "ok": False,
                                     "error": "refused: this runner needs the token printed at its start (open the "
                                              "printed URL)"}))
                    continue
                if not counted:
                    counted = True
                    self.targets.page_opened()
                reply = self.targets.command(cmd, message.get("pos_enu_m"), str(message.get("via", "page")))
                if cmd != "ping":
                    send(json.dumps({"type": "reply", **reply}))
        except ConnectionClosed:
            pass
        finally:
            closed.set()
            if counted:
                self.targets.page_closed()
            with self._count_lock:
                self.connections -= 1
