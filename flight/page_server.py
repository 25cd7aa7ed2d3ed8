"""The runner's local web server: the teleop page and the flight view (flight/teleop_page/, all
local: it works offline) and one WebSocket (/ws), in a process of its own.

    with PageServer(targets, status, host="127.0.0.1", port=8765, view=view) as server:
        print(server.url)                 # carries the token when bound beyond loopback

The control loop never waits on this server, and the flight process's share of its work is
bounded whatever clients do (see PageServer). Security: on loopback the Host header must be a
loopback name, so a web page whose name was re-pointed at 127.0.0.1 (DNS rebinding) is refused; a
WebSocket from another site's page (a foreign Origin) is refused; bound to any other address, the
WebSocket itself (the state and every command) needs the token printed at start, and every
command carries it too.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import multiprocessing
import os
import secrets
import threading
import time
from urllib.parse import parse_qs, urlparse

from flight.realtime import lower_priority
from flight.service import Service, Worker, stop_child

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
START_TIMEOUT_S = 30.0            # the server process has this long to bind its port (a loaded machine)
REPLY_TIMEOUT_S = 2.0             # a command the flight process has not answered by then is refused


class PageServer(Service):
    """The page (static files) and its WebSocket (/ws) on host:port, served by a process of its own.

    Each page gets the state `rate_hz` times a second ({"type": "state", ...}) and sends JSON
    commands ({"cmd": "goto", "pos_enu_m": [x, y, z], "token": ...}); each command but the
    page's keep-alive ping is answered ({"type": "reply", "ok": ...}). `targets` may be None (a
    flight view without teleop: every command is refused); `view` (flight/view.py) adds its
    figures to each state and its first messages (the course, a replay) to each new connection.

    The server process (normal CPU priority, below the real-time control loop; flight/realtime.py)
    does everything a client can make grow: the HTTP requests and handshakes, the Host, Origin and
    token checks, the connection cap (at most `max_connections`, more are refused with 503), a
    thread per connection, the per-connection command limit (at most COMMANDS_PER_S, at most
    MAX_MESSAGE_BYTES each) and every send. The flight process keeps two threads whose work does
    not depend on the clients: one builds the state message `rate_hz` times a second while any
    page is open (one JSON encoding, however many pages) and hands it over a pipe; one answers the
    commands that passed those checks (at most max_connections x COMMANDS_PER_S a second) through
    `targets.command`. Neither is the control loop, which only reads `targets` under its lock."""

    def __init__(self, targets, status, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 rate_hz: float = 25.0, view=None, max_connections: int = MAX_CONNECTIONS):
        self.targets, self.status, self.host, self.rate_hz, self.view = targets, status, host, rate_hz, view
        self.port = port
        self.loopback = is_loopback(host)
        self.token = None if self.loopback else secrets.token_urlsafe(16)
        self.max_connections = max_connections
        ctx = multiprocessing.get_context("spawn")          # nothing of the flight's threads comes along
        self._ctx = ctx
        self._connections = ctx.Value("i", 0)              # open WebSockets (the server process counts)
        self._refused = ctx.Value("i", 0)                  # WebSockets refused for the cap
        self._proc = None
        self._state_out = self._requests = None
        self._feeder = Worker(self._feed_states, "page-state")
        self._answerer = Worker(self._answer_requests, "page-commands")

    @property
    def connections(self) -> int:
        return self._connections.value

    @property
    def refused(self) -> int:
        return self._refused.value

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> None:
        state_in, self._state_out = self._ctx.Pipe(duplex=False)
        self._requests, requests_child = self._ctx.Pipe()
        hello = [json.dumps(m) for m in (self.view.hello() if self.view is not None else ())]
        config = {"host": self.host, "port": self.port, "token": self.token, "max_connections": self.max_connections,
                  "teleop": self.targets is not None, "hello": hello}
        self._proc = self._ctx.Process(target=_serve_pages, daemon=True, name="skyloop-pages",
                                       args=(config, state_in, requests_child, self._connections, self._refused))
        self._proc.start()
        state_in.close()
        requests_child.close()
        try:
            answer = self._requests.recv() if self._requests.poll(START_TIMEOUT_S) else ("error", "no answer in time")
        except (EOFError, OSError):
            answer = ("error", f"its process exited with status {self._proc.exitcode}")
        if answer[0] != "ready":
            self._stop_process()
            raise PageServerError(f"cannot serve the page on {self.host}:{self.port} ({answer[1]}): "
                                  "pick another port with --teleop-port, or stop what uses it")
        self.port = answer[1]
        self._feeder.start()
        self._answerer.start()

    def stop(self) -> None:
        if self._proc is None:
            return
        self._feeder.stop()
        self._answerer.stop()
        self._stop_process()

    def _stop_process(self) -> None:
        stop_child(self._proc, lambda: self._state_out.send_bytes(b""), timeout_s=5.0)   # b"": the server's stop
        self._state_out.close()
        self._requests.close()
        self._proc = None

    # ------------------------------------------------------------ the flight process's two threads
    def state_message(self) -> dict:
        message = {"type": "state", "t_s": time.time(), "token_required": self.token is not None,
                   "teleop": self.targets is not None, **self.status()}
        if self.targets is not None:
            message.update(self.targets.snapshot())
        if self.view is not None:
            message.update(self.view.snapshot())
        return message

    def _feed_states(self) -> None:
        """`rate_hz` times a second while a page is open: the state message, encoded once for all pages."""
        stop, next_s = self._feeder.stop_event, time.monotonic()
        while not stop.is_set():
            if self._connections.value > 0:
                try:
                    text = json.dumps(self.state_message())
                except Exception:              # a bug here must not kill the pages silently
                    log.exception("page server: cannot build the state message")
                    text = None
                if text is not None:
                    try:
                        self._state_out.send_bytes(text.encode())
                    except (OSError, ValueError):
                        return                 # the server process has gone
            next_s = max(next_s + 1.0 / self.rate_hz, time.monotonic())
            stop.wait(max(0.0, next_s - time.monotonic()))

    def _answer_requests(self) -> None:
        """The commands (and page opened / closed) the server process passed on, answered one by one."""
        stop = self._answerer.stop_event
        while not stop.is_set():
            try:
                if not self._requests.poll(0.2):
                    continue
                number, request = self._requests.recv()
            except (EOFError, OSError):
                return
            reply = None
            try:
                if request.get("event") == "opened":
                    self.targets.page_opened()
                elif request.get("event") == "closed":
                    self.targets.page_closed()
                else:
                    reply = self.targets.command(request["cmd"], request.get("pos_enu_m"), request["via"])
            except Exception as exc:            # a bug here must not leave the page without an answer
                log.exception("page server: command %r failed", request)
                reply = {"ok": False, "cmd": request.get("cmd"), "error": f"the runner failed on it: {exc}"}
            try:
                self._requests.send((number, reply))
            except (OSError, ValueError):
                return


# ---------------------------------------------------------------- the server process

def _serve_pages(config: dict, state_in, requests, connections, refused) -> None:
    """The server process: serves until the flight process sends an empty state (or goes away)."""
    lower_priority(0)                           # never real time: the control loop comes first
    pages = _Pages(config, requests, connections, refused)
    try:
        pages.open()
    except OSError as exc:
        requests.send(("error", exc.strerror or str(exc)))
        return
    requests.send(("ready", pages.port))
    threading.Thread(target=pages.serve, daemon=True, name="pages-server").start()
    while True:
        try:
            data = state_in.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        pages.new_state(data.decode())
    pages.close()


class _Pages:
    """The server process's side: HTTP, the WebSocket handshakes and checks, the pages' threads."""

    def __init__(self, config: dict, requests, connections, refused):
        self.host, self.port, self.token = config["host"], config["port"], config["token"]
        self.loopback = is_loopback(self.host)
        self.max_connections, self.teleop, self.hello = config["max_connections"], config["teleop"], config["hello"]
        self.files = {name: os.path.join(PAGE_DIR, name) for name in os.listdir(PAGE_DIR)
                      if os.path.splitext(name)[1] in CONTENT_TYPES}
        self.requests, self.connections, self.refused = requests, connections, refused
        self._ask_lock = threading.Lock()
        self._asked = 0
        self._state_text: str | None = None         # the newest state message, as the flight process encoded it
        self._state_version = 0
        self._new_state = threading.Condition()
        self._stopping = threading.Event()
        self._server = None

    def open(self) -> None:
        from websockets.sync.server import serve
        logging.getLogger("flight.page_server.ws").setLevel(logging.WARNING)     # not a line per page request
        self._server = serve(self._connection, self.host, self.port, process_request=self._http,
                             compression=None, max_size=MAX_MESSAGE_BYTES, open_timeout=OPEN_TIMEOUT_S,
                             logger=logging.getLogger("flight.page_server.ws"))
        self.port = self._server.socket.getsockname()[1]

    def serve(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._stopping.set()
        with self._new_state:
            self._new_state.notify_all()
        self._server.shutdown()

    def new_state(self, text: str) -> None:
        with self._new_state:
            self._state_text, self._state_version = text, self._state_version + 1
            self._new_state.notify_all()

    def ask(self, request: dict) -> dict | None:
        """One request to the flight process, answered there (one at a time for all pages)."""
        with self._ask_lock:
            self._asked += 1
            number = self._asked
            try:
                self.requests.send((number, request))
                deadline = time.monotonic() + REPLY_TIMEOUT_S
                while (left := deadline - time.monotonic()) > 0 and self.requests.poll(left):
                    answered, reply = self.requests.recv()
                    if answered == number:
                        return reply
            except (EOFError, OSError):
                pass
        return {"ok": False, "cmd": request.get("cmd"), "error": "the runner did not answer in time: try again"}

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
            if self.connections.value >= self.max_connections:
                with self.refused.get_lock():
                    self.refused.value += 1
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

    def _connection(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed
        with self.connections.get_lock():
            full = self.connections.value >= self.max_connections
            if not full:
                self.connections.value += 1
        if full:                                   # raced past the check in _http
            with self.refused.get_lock():
                self.refused.value += 1
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
            for text in self.hello:
                send(text)
            pusher = threading.Thread(target=push, daemon=True, name="pages-push")
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
                if not self.teleop:
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
                    self.ask({"event": "opened"})
                reply = self.ask({"cmd": cmd, "pos_enu_m": _plain(message.get("pos_enu_m")),
                                  "via": str(message.get("via", "page"))})
                if cmd != "ping":
                    send(json.dumps({"type": "reply", **reply}))
        except ConnectionClosed:
            pass
        finally:
            closed.set()
            if counted:
                self.ask({"event": "closed"})
            with self.connections.get_lock():
                self.connections.value -= 1


def _plain(value):
    """A command's position as sent (JSON: numbers, strings, lists, ...), cut to what a goto can use:
    at most 8 items, so a page cannot make the flight process unpickle a large object."""
    if isinstance(value, list):
        return [v if isinstance(v, (int, float, str, type(None))) else None for v in value[:8]]
    return value if isinstance(value, (int, float, str, type(None))) else None
