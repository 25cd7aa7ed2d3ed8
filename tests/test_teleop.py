"""The teleop page in a real browser (Playwright driving Debian's headless Chromium) against the
simulated vehicle: drag the target and the drone follows; a drag outside the geofence is clamped;
a runner bound beyond loopback refuses commands without its token; Kill asks, then disarms; Land
lands; closing the page holds the target, then lands. The tests skip only when no Chromium exists."""
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pages import VIEWPORT, marker_pixels, open_page, page_state, wait_for

from flight.cli import default_policy
from flight.connection import parse_connection
from flight.link import MavLink
from flight.sitl import SitlVehicle
from flight.page_server import PageServer
from flight.realtime import raised_priority
from flight.teleop import TeleopTargets, default_box_course, run_teleop, vehicle_status
from policy_export import load_policy
from sim.profiles import load_profile
from skyloop.rowlog import read_row_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRONE_RGB, GOAL_RGB = (21, 101, 192), (255, 109, 0)      # the page's marker colours (teleop.js)


def distance_m(page, point_enu_m) -> float:
    """How far the drone is from a point, as the runner reports it to the page."""
    return float(np.linalg.norm(np.subtract(page_state(page)["pos_enu_m"], point_enu_m)))


def drag(page, view: str, to_enu_m, steps: int = 12) -> None:
    """Presses on the goal marker in one view and drags it to a world point (only that view's two axes count)."""
    start = page.evaluate("([v, p]) => window.teleop.toScreen(v, p)", [view, page_state(page)["goal_enu_m"]])
    end = page.evaluate("([v, p]) => window.teleop.toScreen(v, p)", [view, list(to_enu_m)])
    page.mouse.move(*start)
    page.mouse.down()
    for k in range(1, steps + 1):
        page.mouse.move(start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps)
        time.sleep(0.02)
    page.mouse.up()


def goto_replies(page, timeout_s: float) -> list:
    """The page's goto replies, once every goto it sent is answered (a drag sends several, and under
    load the last ones are still on their way when the first reply is in)."""
    return wait_for("the runner's replies to every goto sent",
                    lambda: page.evaluate("teleop.unanswered") <= 0
                    and [r for r in page.evaluate("teleop.replies") if r["cmd"] == "goto"], timeout_s)


class Observer:
    """A WebSocket client that only listens (sends no command, so it never counts as a page)."""

    def __init__(self, url):
        self.states: list[tuple[float, dict]] = []
        self.thread = threading.Thread(target=self._run, args=(url.split("?")[0].replace("http://", "ws://") + "ws",),
                                       daemon=True)
        self.thread.start()
        wait_for("the first state", lambda: self.states, 5.0)

    def _run(self, ws_url):
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
        with contextlib.suppress(ConnectionClosed), connect(ws_url) as ws:
            for raw in ws:
                m = json.loads(raw)
                if m["type"] == "state":
                    self.states.append((time.monotonic(), m))

    def latest(self) -> dict:
        return self.states[-1][1]


# ---------------------------------------------------------------- `fly --teleop`, end to end, in its own process
@contextlib.contextmanager
def fly_teleop_cli(browser, tmp):
    """`fly --teleop` on the simulated vehicle: the URL read from its output, the page open, the drone
    taken off with the page's button and hovering."""
    err = open(tmp / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "skyloop", "fly", "--teleop", "--teleop-port", "0",
                             "--teleop-land-after", "2", "--json", "--no-plot", "--log", str(tmp)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        url = proc.stdout.readline().strip() if ready else ""
        assert url.startswith("http://127.0.0.1:") and "token" not in url, (url, open(tmp / "stderr.txt").read())
        page = open_page(browser, url)
        observer = Observer(url)
        page.click("#takeoff")

        def flying():
            assert proc.poll() is None, open(tmp / "stderr.txt").read()
            return (page_state(page).get("pos_enu_m") or [0, 0, 0])[2] > 0.85
        wait_for("take-off to 1 m", flying, 25.0)
        yield {"proc": proc, "page": page, "observer": observer, "tmp": tmp, "url": url, "stderr": tmp / "stderr.txt"}
    finally:
        with contextlib.suppress(Exception):
            page.close()
        if proc.poll() is None:
            proc.send_signal(2)                 # Ctrl-C: lands
            proc.wait(30)
        err.close()


@pytest.fixture(scope="module")
def cli_flight(browser, tmp_path_factory):
    """One `fly --teleop` flight shared by the tests that keep it flying (each sets up what it needs,
    so they pass in any order); the test that closes the page flies its own."""
    with fly_teleop_cli(browser, tmp_path_factory.mktemp("teleop_cli")) as flight:
        yield flight


def test_dragging_the_target_flies_the_simulated_drone_there(cli_flight, tmp_path):
    page, observer = cli_flight["page"], cli_flight["observer"]
    time.sleep(1.2)
    hz = page.evaluate("window.teleop.hz")
    assert hz >= 20, f"the page got {hz:.1f} state updates a second (want >= 20)"
    z = page_state(page)["goal_enu_m"][2]
    drag(page, "top", [2.0, 1.0, 0.0])                     # top view: east 2 m, north 1 m
    for _ in range(5):
        page.keyboard.press("PageUp")                      # 5 x 0.1 m higher
    goal = np.array([2.0, 1.0, min(z + 0.5, 2.5)])
    wait_for("the runner to take the new goal", lambda: np.allclose(observer.latest()["goal_enu_m"], goal, atol=0.05),
             2.0)
    t0 = time.monotonic()
    wait_for("the drone to reach the goal", lambda: distance_m(page, goal) < 0.15, 15.0)
    state = page_state(page)
    assert state["phase"] == "flying" and state["failsafe"] is None and state["armed"]
    # drag -> runner: one way, from the key press in the page to the runner's handling of the command
    latency_ms = page.evaluate("""() => new Promise(done => {
        const n = teleop.replies.length, sent = performance.timeOrigin + performance.now();
        document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown'}));
        const check = () => teleop.replies.length > n ? done(teleop.replies[n].t_s * 1000 - sent)
                                                      : setTimeout(check, 1);
        check(); })""")
    print(f"page updates {hz:.1f} Hz; key -> runner {latency_ms:.1f} ms; "
          f"goal reached {time.monotonic() - t0:.1f} s after the runner took it")
    assert latency_ms < 100
    time.sleep(1.0)                                        # settle at the nudged goal for the picture
    shot = cli_flight["tmp"] / "teleop_page.png"
    page.screenshot(path=str(shot))
    drone_px, goal_px = marker_pixels(shot, DRONE_RGB), marker_pixels(shot, GOAL_RGB)
    assert len(drone_px) > 40 and len(goal_px) > 40, "the screenshot shows no drone or no target marker"
    expected = page.evaluate("([v, p]) => window.teleop.toScreen(v, p)", ["top", page_state(page)["goal_enu_m"]])
    top = [p for p in goal_px if p[0] < 540]               # the top view is the left canvas
    assert np.linalg.norm(np.mean(top, 0) - expected) < 6, "the target marker is not where the goal is"
    near = [p for p in drone_px if np.linalg.norm(p - expected) < 20]
    assert len(near) > 30, "the drone is not drawn at the target it reached"
    assert not page.errors


def test_a_target_dragged_outside_the_geofence_is_clamped(cli_flight):
    page, observer = cli_flight["page"], cli_flight["observer"]
    z = page_state(page)["goal_enu_m"][2]
    drag(page, "top", [7.0, 6.5, z])                       # beyond the 10 x 10 m box's north-east corner
    clamped = np.array([4.0, 4.0, z])                      # the box less the 1 m margin
    reply = goto_replies(page, 1.0)[-1]
    assert np.allclose(reply["goal_enu_m"], clamped, atol=1e-6)
    wait_for("the drone at the clamped target", lambda: distance_m(page, clamped) < 0.2, 15.0)
    targets = np.array([s["target_enu_m"] for _, s in observer.states if s["target_enu_m"]])
    assert np.all(targets <= np.array(observer.latest()["goal_max_enu_m"]) + 1e-9)   # never beyond the clamp box
    assert page_state(page)["failsafe"] is None
    assert page.inner_text("#goal").startswith("4.00, 4.00")              # the page shows the clamped goal


def test_closing_the_page_holds_the_target_then_lands(browser, tmp_path):
    with fly_teleop_cli(browser, tmp_path) as flight:
        closing_the_page_holds_the_target_then_lands(flight)


def closing_the_page_holds_the_target_then_lands(cli_flight):
    page, observer, proc = cli_flight["page"], cli_flight["observer"], cli_flight["proc"]
    drag(page, "top", [1.0, -1.0, 0.0])
    sent = [r for r in goto_replies(page, 2.0) if r["ok"]]
    time.sleep(0.1)
    closed = time.monotonic()
    page.close()
    wait_for("the runner to hold", lambda: observer.latest()["holding_s"] is not None, 1.5)
    hold_s = time.monotonic() - closed
    held_at = observer.latest()["target_enu_m"]
    wait_for("the runner to land", lambda: observer.latest()["phase"] != "flying", 6.0)
    land_s = time.monotonic() - closed
    holding = [s["target_enu_m"] for t, s in observer.states if s["holding_s"] is not None and s["phase"] == "flying"]
    assert np.ptp(np.array(holding), axis=0).max() < 1e-9, "the target moved while holding"
    assert 2.0 <= land_s <= 4.0, f"landing began {land_s:.1f} s after the page closed (hold 2 s)"
    assert "teleop page lost" in observer.latest()["failsafe"]
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["failsafe"].startswith("teleop page lost")
    assert "landed: disarmed" in open(cli_flight["stderr"]).read()
    data, meta = read_row_log(summary["log"])
    assert meta["ended"].startswith("failsafe: teleop page lost") and meta["course"]["name"] == "teleop-box"
    events = [(k, e) for k, e in enumerate(data["target_event"]) if e]
    changes = [e for _, e in events for e in e.split("; ") if e.startswith(("drag", "key"))]
    assert len(changes) == len(sent), "the flight log misses target changes the runner accepted"
    last = [float(v) for v in changes[-1].split("-> ")[1].split()]
    assert np.allclose(last, sent[-1]["goal_enu_m"], atol=1e-3)
    hold_row = next(k for k, e in events if "page lost: hold" in e)
    target = np.stack([data[f"target_enu_m_{a}"] for a in "xyz"], 1)
    flown = target[hold_row:][np.all(np.isfinite(target[hold_row:]), axis=1)]     # landing rows have no target
    assert np.allclose(flown, target[hold_row], atol=1e-9) and np.allclose(target[hold_row], held_at)
    print(f"page closed -> hold after {hold_s:.2f} s, landing after {land_s:.2f} s; "
          f"{len(changes)} target changes logged")


# ---------------------------------------------------------------- in this process: token, Host, cap, kill, land
def still_status(course=None, calls=None):
    course = course or default_box_course()

    def status():
        if calls is not None:
            calls.append(time.monotonic())
        return {"bounds_min_enu_m": course.bounds_min_enu_m.tolist(),
                "bounds_max_enu_m": course.bounds_max_enu_m.tolist(), "mode": "STABILIZE", "armed": False}
    return status


def test_a_runner_bound_beyond_loopback_needs_its_token_for_state_and_commands(browser):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    targets = TeleopTargets(default_box_course())
    with PageServer(targets, still_status(), host="0.0.0.0", port=0) as server:
        assert server.token and server.url.endswith(f"?token={server.token}")
        goal = list(targets.goal_enu_m)
        ws_url = f"ws://127.0.0.1:{server.port}/ws"
        with pytest.raises(InvalidStatus, match="401"):                # a script without the token: no state
            connect(ws_url)
        with pytest.raises(InvalidStatus, match="401"):
            connect(ws_url + "?token=wrong")
        page = browser.new_page(viewport=VIEWPORT)                      # the page without the token
        page.goto(server.url.split("?")[0])
        wait_for("the page to say it needs the token", lambda: "token" in page.inner_text("#link"), 5.0)
        page.keyboard.press("ArrowRight")
        time.sleep(0.3)
        assert page.evaluate("window.teleop.state") is None and list(targets.goal_enu_m) == goal
        page.close()
        with connect(f"{ws_url}?token={server.token}") as ws:           # with it, but a command without it
            ws.send(json.dumps({"cmd": "goto", "pos_enu_m": [1, 1, 1]}))
            reply = next(m for m in map(json.loads, ws) if m["type"] == "reply")
            assert reply["ok"] is False and list(targets.goal_enu_m) == goal
        with pytest.raises(InvalidStatus, match="403"):                # another web site's page, even with it
            connect(f"{ws_url}?token={server.token}", origin="http://attacker.example")
        page = open_page(browser, server.url)                           # the printed URL: steers
        page.keyboard.press("ArrowRight")
        wait_for("the goal to move 0.1 m east", lambda: abs(targets.goal_enu_m[0] - goal[0] - 0.1) < 1e-9, 2.0)
        page.close()


def test_dns_rebinding_cannot_reach_a_loopback_runner():
    """A web page on evil.example whose name was re-pointed at 127.0.0.1 sends Host: evil.example
    (and a matching Origin): refused, for the WebSocket and for the page itself."""
    import http.client
    import socket

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    targets = TeleopTargets(default_box_course())
    targets.page_opened()
    with PageServer(targets, still_status(), port=0) as server:
        goal = list(targets.goal_enu_m)
        evil = f"evil.example:{server.port}"
        sock = socket.create_connection(("127.0.0.1", server.port))
        with pytest.raises(InvalidStatus, match="403"):
            with connect(f"ws://{evil}/ws", sock=sock, origin=f"http://{evil}") as ws:
                ws.send(json.dumps({"cmd": "goto", "pos_enu_m": [2, 2, 2]}))
                next(m for m in map(json.loads, ws) if m["type"] == "reply")
        assert list(targets.goal_enu_m) == goal
        for host, status in ((evil, 403), (f"127.0.0.1:{server.port}", 200), (f"localhost:{server.port}", 200),
                             (None, 403)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.putrequest("GET", "/", skip_host=True)
            if host:
                conn.putheader("Host", host)
            conn.endheaders()
            assert conn.getresponse().status == status, host
            conn.close()
        with connect(f"ws://localhost:{server.port}/ws", origin=f"http://localhost:{server.port}") as ws:
            ws.send(json.dumps({"cmd": "goto", "pos_enu_m": [2, 2, 2]}))  # the real page's name: steers
            assert next(m for m in map(json.loads, ws) if m["type"] == "reply")["ok"]


def test_connections_are_capped_and_the_server_work_does_not_grow_with_them():
    """200 idle WebSockets once starved the control loop (each had a thread building the state 25
    times a second). Now: at most max_connections, refused beyond (503 at the handshake, or closed
    at once with 1013 when they raced past it), and the state is built once per period for all."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect
    calls = []
    targets = TeleopTargets(default_box_course())
    with PageServer(targets, still_status(calls=calls), port=0, rate_hz=25.0, max_connections=8) as server, \
            contextlib.ExitStack() as stack:
        url = f"ws://127.0.0.1:{server.port}/ws"
        accepted, refused = [], 0
        for _ in range(30):
            try:
                ws = stack.enter_context(connect(url, open_timeout=5))
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                refused += 1
                continue
            try:
                assert json.loads(ws.recv(timeout=5))["type"] == "state"
                accepted.append(ws)
            except ConnectionClosed as exc:
                assert exc.rcvd.code == 1013
                refused += 1
        assert len(accepted) == 8 and refused == 22
        assert server.connections == 8
        calls.clear()
        t0 = time.monotonic()
        got = [0] * len(accepted)
        while time.monotonic() - t0 < 1.0:
            for k, ws in enumerate(accepted):
                with contextlib.suppress(TimeoutError):
                    while True:
                        ws.recv(timeout=0)
                        got[k] += 1
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert len(calls) <= 25 * elapsed * 1.2 + 2, f"{len(calls)} state builds in {elapsed:.2f} s for 8 pages"
        assert min(got) >= 1, f"some pages got no state: {got}"
        stack.close()
        wait_for("the slots to free", lambda: server.connections == 0, 3.0)
        with connect(url) as ws:                                          # room again
            assert json.loads(ws.recv(timeout=5))["type"] == "state"


def test_the_pages_are_served_by_another_process_and_the_flight_process_work_does_not_grow_with_them():
    """200 idle WebSockets once took the control loop's interpreter (each had threads in the flight
    process). Now the handshakes, the checks, the connections' threads and a command flood live in
    the server's own process; the flight process keeps its two threads, and answers at most
    COMMANDS_PER_S commands a second per page, however fast they are sent."""
    import socket

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from flight.page_server import COMMANDS_PER_S
    targets = TeleopTargets(default_box_course())
    answered = []
    command = targets.command
    targets.command = lambda *a, **k: answered.append(time.monotonic()) or command(*a, **k)

    def server_threads() -> int:                # in this process, less the test's clients' own readers
        return sum(not t.name.endswith("(recv_events)") for t in threading.enumerate())
    before = server_threads()
    with PageServer(targets, still_status(), port=0, max_connections=4) as server, contextlib.ExitStack() as stack:
        assert server._proc.pid != os.getpid() and server._proc.is_alive()
        started = server_threads()
        assert started == before + 2, "the flight process keeps two threads (state feed, commands)"
        url = f"ws://127.0.0.1:{server.port}/ws"
        pages = [stack.enter_context(connect(url, open_timeout=10, ping_interval=None, close_timeout=0.2))
                 for _ in range(4)]                                  # they never read: no waiting to close
        idle = [stack.enter_context(contextlib.closing(socket.create_connection(("127.0.0.1", server.port))))
                for _ in range(200)]                                      # never finish a handshake
        with pytest.raises(InvalidStatus, match="503"):
            connect(url, open_timeout=10)
        assert server_threads() == started and server.connections == 4 and len(idle) == 200
        t0 = time.monotonic()
        flood = json.dumps({"cmd": "goto", "pos_enu_m": [1, 1, 1]})
        while time.monotonic() - t0 < 1.0:
            for ws in pages:
                ws.send(flood)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.5 and 0 < len(answered) <= len(pages) * COMMANDS_PER_S * 2, len(answered)   # 2 windows
        assert server_threads() == started


@contextlib.contextmanager
def inprocess_teleop(browser, tmp_path, free_udp_port, land_after_s=10.0, speed_m_s=1.0):
    """The simulated vehicle, the link, the page and run_teleop in a thread, all in this process."""
    course = default_box_course()
    profile, port = load_profile("crazyflie21"), free_udp_port()
    policy = load_policy(default_policy("ctbr"), action_modes=("ctbr",))
    rate_max = policy.metadata["action_scaling"].get("rate_max_rad_s", profile.params["rate_max_rad_s"])
    with raised_priority(), \
            SitlVehicle(profile, f"udpout:127.0.0.1:{port}", "ardupilot", course.start_pos_enu_m) as vehicle, \
            MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot", "ctbr", rate_max) as link:
        targets = TeleopTargets(course, land_after_s=land_after_s, speed_m_s=speed_m_s)
        with PageServer(targets, lambda: vehicle_status(link, course), port=0) as server:
            out = {}
            log_path = str(tmp_path / "teleop.csv")

            def fly():
                out["result"] = run_teleop(link, policy, course, profile, log_path, targets, status=Quiet(),
                                           max_time_s=60)
            thread = threading.Thread(target=fly, daemon=True)
            thread.start()
            page = open_page(browser, server.url)
            try:
                page.click("#takeoff")
                wait_for("take-off", lambda: vehicle.state()["pos_enu_m"][2] > 0.7 or not thread.is_alive(), 25.0)
                assert thread.is_alive(), "run_teleop stopped before the take-off (see the log above)"
                yield vehicle, page, thread, out, log_path
            finally:
                page.close()
                # a failed test: stop before the link closes
                targets.command("land" if targets.phase != "ready" else "kill")
                thread.join(20)


class Quiet:
    def show(self, *a, **k):
        pass

    def done(self):
        pass


def test_kill_asks_first_then_disarms_in_the_air(browser, tmp_path, free_udp_port):
    with inprocess_teleop(browser, tmp_path, free_udp_port) as (vehicle, page, thread, out, log_path):
        page.once("dialog", lambda d: d.dismiss())
        page.click("#kill")
        time.sleep(0.5)
        assert vehicle.armed and page_state(page)["failsafe"] is None        # "cancel" changes nothing
        page.once("dialog", lambda d: d.accept())
        t0 = time.monotonic()
        page.click("#kill")
        wait_for("the vehicle to disarm", lambda: not vehicle.armed, 1.0, poll_s=0.002)
        kill_ms = (time.monotonic() - t0) * 1e3
        assert vehicle.state()["pos_enu_m"][2] > 0.5                         # disarmed in the air, at once
        thread.join(15)
        print(f"kill click -> disarmed {kill_ms:.0f} ms")
    assert out["result"].failsafe.startswith("kill")
    _, meta = read_row_log(log_path)
    assert meta["ended"].startswith("failsafe: kill")


def test_hold_and_land_buttons(browser, tmp_path, free_udp_port):
    # a slow target (7 s to the goal): the hold arrives on the way even when a busy machine slows the browser
    with inprocess_teleop(browser, tmp_path, free_udp_port, speed_m_s=0.5) as (vehicle, page, thread, out, log_path):
        drag(page, "top", [3.5, 0.0, 0.0])
        wait_for("the target to move east", lambda: page_state(page)["target_enu_m"][0] > 0.3, 5.0)
        page.click("#hold")                                # the target stops where it is, short of the goal
        held = wait_for("the hold", lambda: [r for r in page.evaluate("teleop.replies") if r["cmd"] == "hold"], 2.0)
        goal = held[-1]["goal_enu_m"]
        assert 0.3 < goal[0] < 3.0
        time.sleep(2.5)
        assert page_state(page)["target_enu_m"] == goal
        assert np.linalg.norm(np.subtract(vehicle.state()["pos_enu_m"], goal)) < 0.15
        page.click("#land")
        thread.join(20)
        assert not thread.is_alive() and out["result"].failsafe is None
        assert not vehicle.armed and vehicle.state()["pos_enu_m"][2] < 0.05
    data, meta = read_row_log(log_path)
    assert meta["ended"] == "completed"
    events = " ".join(e for e in data["target_event"] if e)
    assert events.index("takeoff") < events.index("drag") < events.index("hold") < events.index("land")


def test_fly_needs_a_course_unless_teleop(capsys):
    from skyloop.cli import main as skyloop
    assert skyloop(["fly"]) == 2
    assert "--course is required (or --teleop" in capsys.readouterr().err


def test_targets_are_clamped_rate_limited_and_held_without_a_page():
    """The target source alone (no browser needed): what keeps a drag from commanding a jump."""
    now = [100.0]
    targets = TeleopTargets(default_box_course(), speed_m_s=1.0, page_timeout_s=1.0, land_after_s=5.0,
                            clock=lambda: now[0])
    targets.page_opened()
    reply = targets.command("goto", [9.0, -9.0, 10.0], via="drag")   # far outside the 10 x 10 x 3.5 m box
    assert reply["ok"] and reply["goal_enu_m"] == [4.0, -4.0, 2.5]
    assert not targets.command("goto", [1.0, float("nan"), 1.0])["ok"]
    assert np.allclose(targets.update([0.0, 0.0, 0.0], 0.0), [0, 0, 0])          # starts where the drone is
    for k in range(1, 51):                                                         # 0.5 s at 100 Hz
        now[0] += 0.01
        if k % 20 == 0:
            targets.command("ping")
        target = targets.update([0.0, 0.0, 0.0], k * 0.01)
    assert np.linalg.norm(target) == pytest.approx(0.5, abs=1e-9)                 # 1 m/s, not a jump
    assert targets.log_fields()["target_event"].startswith("drag 9.000 -9.000 10.000 -> 4.000 -4.000 2.500")
    now[0] += 1.01                                                                 # the page falls silent
    held = targets.update([0.0, 0.0, 0.0], 1.52)
    assert "page lost: hold" in targets.log_fields()["target_event"]
    now[0] += 4.9
    assert np.allclose(targets.update([0.0, 0.0, 0.0], 6.5), held) and targets.failsafe is None
    now[0] += 0.2
    targets.update([0.0, 0.0, 0.0], 6.7)
    assert targets.failsafe.startswith("teleop page lost")
    assert not targets.command("goto", [1.0, 1.0, 1.0])["ok"]                      # too late: it lands
