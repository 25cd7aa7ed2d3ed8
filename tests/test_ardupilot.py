"""Against the real ArduCopter 4.5.5 SITL binary (../shared/peers/ardupilot/arducopter, or
$SKYLOOP_ARDUPILOT_BIN), a fresh one in a temporary folder per flight (4.5 refuses to arm again
after a landing until rebooted): our sim as its physics through the JSON backend, the hall with
GPS and without (simulated mocap only), the runner frozen mid-flight, ArduPilot's own physics,
and what the link checks and shows. Skipped, saying how to get the binary, only where it is absent.
The flights run in real time (the runner is real time; the bridge is lockstep)."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flight.ardupilot_sitl import (G_M_S2, HOW_TO_GET, JsonBridge, PHYSICS_DT_S, ArduPilotSitlError, find_binary,
                                   pwm_to_action, unpack_servos)
from flight.link import GUID_TIMEOUT_S
from flight.origin import CourseOriginError, place_course
from skyloop import frames
from skyloop.course import load_course


def _binary():
    try:
        return find_binary()
    except ArduPilotSitlError:
        pytest.skip(f"no ArduPilot SITL binary here: {HOW_TO_GET}")


def _fly_cli(capsys, *argv) -> tuple[int, dict]:
    from skyloop.cli import main
    code = main(["fly", "--no-plot", *argv])
    captured = capsys.readouterr()
    out = [line for line in captured.out.splitlines() if line.startswith("{")]
    assert out, f"fly printed no summary (exit status {code}): {captured.err[-1500:]}"
    return code, json.loads(out[-1])


def _rows(log_path: str) -> list[dict]:
    with open(log_path, newline="") as f:
        return list(csv.DictReader(f))


def _tilt_deg(row) -> float:
    q = [float(row[k]) for k in ("quat_w", "quat_x", "quat_y", "quat_z")]
    return math.degrees(math.acos(max(-1.0, min(1.0, 1.0 - 2.0 * (q[1] ** 2 + q[2] ** 2)))))


def _takeoff_checks(rows) -> None:
    """The runner held (motors stopped, then spooling) before the policy flew, and the vehicle left
    the ground level: under 30 deg from the policy taking over until 1 m up. (The max over
    the policy's first 3 s, which includes its first turns towards gate 1, is printed: 24..45 deg
    measured with the hover policy, 37..48 with the generalist (it turns at speed); without the hold
    it was 71 deg on the ground and a failsafe; the generalist without race mode's climb: 41..55 deg
    before 1 m up.)"""
    phases = [r["phase"] for r in rows]
    assert phases[0] == "arming" and "spool" in phases, "the runner did not hold while the motors came live"
    first = next(i for i, p in enumerate(phases) if p == "flight")
    assert float(rows[first]["t_s"]) > 2.0          # ArduCopter's 2 s arming delay was waited out
    t0, z0 = float(rows[first]["t_s"]), float(rows[first]["pos_enu_m_z"])
    up = next(i for i in range(first, len(rows)) if float(rows[i]["pos_enu_m_z"]) > z0 + 1.0)
    first_3_s = max(_tilt_deg(r) for r in rows[first:] if float(r["t_s"]) < t0 + 3.0 and r["phase"] == "flight")
    lift_off = max(_tilt_deg(r) for r in rows[first:up + 1])
    print(f"take-off: max tilt {lift_off:.1f} deg until 1 m up ({float(rows[up]['t_s']) - t0:.2f} s), "
          f"{first_3_s:.1f} deg in the policy's first 3 s")
    assert first_3_s < 70.0                          # no tilt failsafe
    assert lift_off < 30.0, f"tilted {lift_off:.1f} deg before 1 m up"


def _arm_commands(tlog_path: str) -> tuple[int, int]:
    from flight.link import mavutil
    m = mavutil.mavlink_connection(tlog_path)
    arms = disarms = 0
    while (msg := m.recv_match(type="COMMAND_LONG")) is not None:
        if msg.command == 400:
            arms, disarms = arms + (msg.param1 == 1), disarms + (msg.param1 == 0)
    return arms, disarms


# ------------------------------------------------------------------ the bridge alone (no binary)
def test_bridge_answers_a_servo_packet_with_the_state_in_ardupilots_frames(free_udp_port):
    from sim.profiles import load_profile
    import struct
    bridge = JsonBridge(load_profile("camera15"), free_udp_port(), start_pos_enu_m=(-14, -8, 0), start_yaw_rad=0.0)
    try:
        packet = struct.pack("<HHI16H", 18458, 1000, 0, *([1000] * 16))
        reply = json.loads(bridge.handle(packet))
        # at rest on the ground: the accelerometer reads -g on FRD z, the start is the origin
        assert reply["imu"]["accel_body"] == pytest.approx([0.0, 0.0, -G_M_S2], abs=1e-4)
        assert reply["position"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
        assert reply["timestamp"] == pytest.approx(PHYSICS_DT_S)
        # yaw 0 in ENU faces east: heading 90 deg in NED
        q = reply["quaternion"]
        assert math.degrees(frames.quat_to_euler_rpy(q)[2]) == pytest.approx(90.0, abs=0.1)
        assert bridge.handle(packet) == bridge.handle(packet)        # a re-sent frame is not stepped again
        assert bridge.counters["frames"] == 1 and bridge.counters["repeats"] == 2
        assert bridge.handle(b"\x00" * 10) is None and bridge.counters["bad"] == 1
        full = struct.pack("<HHI16H", 18458, 1000, 1, *([2000] * 4 + [0] * 12))
        for _ in range(300):                                           # full throttle for 0.3 s: it climbs
            full = full[:4] + struct.pack("<I", bridge.counters["frames"]) + full[8:]
            reply = json.loads(bridge.handle(full))
        assert reply["position"][2] < -0.1 and reply["velocity"][2] < -1.0      # NED: up is negative
    finally:
        bridge.stop()
    assert pwm_to_action([1000, 1500, 2000, 0]).tolist() == [-1.0, 0.0, 1.0, -1.0]
    rate, count, pwm = unpack_servos(struct.pack("<HHI32H", 29569, 400, 7, *range(32)))
    assert (rate, count, len(pwm)) == (400, 7, 32)


def test_bridge_records_whose_lockstep_turn_was_slow(free_udp_port):
    """Each turn is timed on the wall clock: a servo packet 80 ms after the reply is the firmware's
    slow turn (a stalled SITL), named with its sim time. (Fast turns are not asserted: on a loaded
    machine this test's own thread may be late.)"""
    from sim.profiles import load_profile
    import socket
    import struct
    port = free_udp_port()
    bridge = JsonBridge(load_profile("camera15"), port)
    bridge.start()
    firmware = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    firmware.settimeout(2.0)
    try:
        for count, pause_s in ((0, 0.0), (1, 0.0), (2, 0.08), (3, 0.0)):
            time.sleep(pause_s)
            firmware.sendto(struct.pack("<HHI16H", 18458, 1000, count, *([1000] * 16)), ("127.0.0.1", port))
            firmware.recvfrom(4096)
    finally:
        firmware.close()
        bridge.stop()
    slow = {(who, round(t, 3)): s for t, who, s in bridge.slow_turns}
    assert 0.08 <= slow[("firmware", 0.002)] < 1.0
    assert "of the firmware's (the servo packet awaited), longest" in bridge.slow_turns_text()


def test_course_origin_rule_refuses_naming_both_positions_or_places_the_course():
    hall = load_course("hall")
    with pytest.raises(CourseOriginError) as err:
        place_course(hall, [0.0, 0.0, 0.0], "local")
    assert "[0.0, 0.0, 0.0]" in str(err.value) and "[-14.0, -8.0, 0.0]" in str(err.value)
    assert "--course-frame start" in str(err.value)
    placed, offset = place_course(hall, [0.5, 0.2, 0.0], "start")
    assert offset.tolist() == pytest.approx([14.5, 8.2, 0.0])
    assert placed.start_pos_enu_m.tolist() == pytest.approx([0.5, 0.2, 0.0])
    assert placed.gates[0].centre_enu_m.tolist() == pytest.approx((hall.gates[0].centre_enu_m + offset).tolist())
    assert place_course(hall, [-13.6, -8.3, 0.05], "local")[1].tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------ the real binary
def test_hall_through_real_ardupilot_with_our_sim_as_its_physics(capsys, tmp_path):
    """`fly --course hall --autopilot ardupilot --sitl ardupilot`: ArduPilot's EKF (GPS), rate loops
    and GUIDED_NOGPS fly camera15 in our sim. Without the take-off hold the policy pushed for 3 s
    against stopped motors and left the ground tilted past 70 deg (failsafe)."""
    _binary()
    code, summary = _fly_cli(capsys, "--course", "hall", "--autopilot", "ardupilot", "--sitl", "ardupilot", "--json",
                             "--log", str(tmp_path))
    assert summary["failsafe"] is None and code == 0, summary
    assert summary["gates_passed"] == 7, summary
    rows = _rows(summary["log"])
    _takeoff_checks(rows)
    assert rows[-1]["armed"] == "0" and float(rows[-1]["pos_enu_m_z"]) < 0.2      # landed and disarmed
    arms, disarms = _arm_commands(os.path.splitext(summary["log"])[0] + ".tlog")
    assert arms == 1 and disarms <= 1                   # once each (it was 10 and 14 in 0.8 s)


def test_hall_without_gps_on_simulated_mocap_only(capsys, tmp_path):
    """GPS off; position, velocity and yaw only from our pose stream (VISION_POSITION_ESTIMATE +
    VISION_SPEED_ESTIMATE, 40 Hz, 3 mm noise, 20 ms latency) as ExternalNav. The mocap frame is the
    course's, so the vehicle reports the hall's start and the course is flown as it is."""
    _binary()
    code, summary = _fly_cli(capsys, "--course", "hall", "--autopilot", "ardupilot", "--sitl", "ardupilot", "--json",
                             "--pose", "sim://?noise_m=0.003&latency_s=0.02", "--log", str(tmp_path))
    assert summary["failsafe"] is None and code == 0, summary
    assert summary["gates_passed"] == 7, summary
    rows = _rows(summary["log"])
    assert [float(rows[0][f"pos_enu_m_{a}"]) for a in "xy"] == pytest.approx([-14.0, -8.0], abs=0.3)
    _takeoff_checks(rows)
    assert rows[-1]["armed"] == "0"


def test_runner_frozen_two_seconds_reports_its_own_stall_and_the_vehicle_levels_and_lands(tmp_path):
    """SIGSTOP on `fly` for 2 s mid-flight (the SITL and the bridge run in this process): the
    vehicle flies the last command until GUID_TIMEOUT (0.2 s), then levels
    and holds; the runner, resumed, says it stalled itself (not "no heartbeat") and lands."""
    from flight.ardupilot_sitl import ArduPilotSitl
    _binary()
    hall = load_course("hall")
    with ArduPilotSitl("camera15", hall.start_pos_enu_m, hall.start_yaw_rad) as sitl:
        sitl.wait_ready()
        cmd = [sys.executable, "-m", "skyloop", "fly", "--course", "hall", "--connect", sitl.mavlink_url,
               "--autopilot", "ardupilot", "--profile", "camera15", "--course-frame", "start", "--json", "--no-plot",
               "--log", str(tmp_path)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            deadline = time.monotonic() + 60.0
            while sitl.bridge.state()["pos_enu_m"][2] < 2.0:            # in the air, flying the course
                assert time.monotonic() < deadline and proc.poll() is None, "the flight did not take off"
                time.sleep(0.02)
            time.sleep(1.0)
            proc.send_signal(signal.SIGSTOP)
            frozen_at = sitl.bridge.state()["t_s"]
            trace = []
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                s = sitl.bridge.state()
                trace.append((s["t_s"] - frozen_at, math.degrees(math.acos(min(1.0, 1 - 2 * (s["quat_wxyz"][1] ** 2
                              + s["quat_wxyz"][2] ** 2)))), float(np.linalg.norm(s["omega_flu_rad_s"])), s["pos_enu_m"][2]))
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=90)
        landed = sitl.bridge.state()
    summary = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 3 and "this program stalled" in summary["failsafe"], summary
    assert "heartbeat" not in summary["failsafe"]
    # until GUID_TIMEOUT (0.2 s) the last command (body rates) keeps turning it; then ArduPilot levels
    # it: the tilt peaks within GUID_TIMEOUT + 0.2 s and is under 5 deg (rates calm) within GUID_TIMEOUT + 1.2 s
    peak_at = max(trace, key=lambda r: r[1])[0]
    level_at = next(t for t, tilt, rate, _ in trace if t > peak_at and tilt < 5.0 and rate < 0.5)
    print(f"frozen: tilt {trace[0][1]:.0f} deg at the freeze, peak {max(r[1] for r in trace):.0f} deg at "
          f"{peak_at:.2f} s, level at {level_at:.2f} s (sim time)")
    assert peak_at <= GUID_TIMEOUT_S + 0.2 and level_at <= GUID_TIMEOUT_S + 1.2, trace[::20]
    assert min(z for *_, z in trace) > 0.5                                  # it held its height, in the air
    assert landed["pos_enu_m"][2] < 0.05 and not landed["crashed"]
    assert _rows(summary["log"])[-1]["armed"] == "0"


def test_ardupilots_own_physics_take_off_and_origin_checks(capsys, tmp_path):
    """--model quad (ArduPilot's physics, GPS): its EKF origin is where it started, so the hall
    (start -14, -8) is refused as it is, naming both positions, and flown with --course-frame start;
    the take-off waits for the motors there too."""
    from flight.ardupilot_sitl import ArduPilotSitl
    _binary()
    with ArduPilotSitl("camera15", model="quad") as sitl:
        sitl.wait_ready()
        common = ["--course", "hall", "--connect", sitl.mavlink_url, "--autopilot", "ardupilot", "--profile",
                  "camera15", "--log", str(tmp_path)]
        from skyloop.cli import main
        assert main(["fly", *common, "--dry-run"]) == 1
        out = capsys.readouterr().out
        assert "[-14.0, -8.0, 0.0]" in out and "the vehicle reports [" in out
        code, summary = _fly_cli(capsys, *common, "--course-frame", "start", "--max-time", "8", "--json")
    assert summary["failsafe"].startswith("time limit"), summary         # 8 s: take-off and the first leg only
    rows = _rows(summary["log"])
    _takeoff_checks(rows)
    assert max(float(r["pos_enu_m_z"]) for r in rows) > 1.0


def test_stock_parameters_are_refused_with_the_fix_or_set_with_consent():
    from flight.ardupilot_sitl import ArduPilotSitl
    from flight.connection import parse_connection
    from flight.link import LinkError, MavLink
    _binary()
    with ArduPilotSitl("camera15", setup=False) as sitl:               # ArduPilot's defaults
        sitl.wait_ready()
        # the lockstep pair runs real time wherever this machine allows it, whoever started it
        allowed = subprocess.run([sys.executable, "-c", "from flight.realtime import raise_priority as r; print(r())"],
                                 capture_output=True, text=True).stdout.startswith("real-time")
        for pid in (sitl.process.pid, sitl.bridge.process.pid):
            assert (os.sched_getscheduler(pid) == os.SCHED_FIFO) == allowed, pid
        with pytest.raises(LinkError) as err:
            MavLink(parse_connection(sitl.mavlink_url), "ardupilot").open()
        text = str(err.value)
        assert "GUID_OPTIONS 0" in text and "GUID_TIMEOUT is 3 s" in text and "--set-params" in text
        assert "reboot" not in text.replace("no reboot needed", "")
        with MavLink(parse_connection(sitl.mavlink_url), "ardupilot", set_params=True) as link:
            assert [link._param(n) for n in ("GUID_OPTIONS", "GUID_TIMEOUT", "ATC_ANGLE_BOOST")] == \
                pytest.approx([8.0, GUID_TIMEOUT_S, 0.0])
            assert link.spool_s == pytest.approx(2 * 0.5 + 0.2)       # MOT_SPOOL_TIME 0.5 s, twice


def test_arming_refused_shows_the_vehicles_reasons_and_asks_three_times(tmp_path):
    from flight.ardupilot_sitl import ArduPilotSitl
    from flight.connection import parse_connection
    from flight.link import LinkError, MavLink
    _binary()
    tlog = str(tmp_path / "arm.tlog")
    with ArduPilotSitl("camera15", params={"BATT_ARM_VOLT": 20.0}) as sitl:   # the SITL battery has 12.6 V
        with MavLink(parse_connection(sitl.mavlink_url), "ardupilot", tlog_path=tlog) as link:
            assert link.wait_for_state(timeout_s=30.0) is not None
            with pytest.raises(LinkError) as err:
                link.start_offboard(lambda: link.master.mav.set_attitude_target_send(0, 1, 1, 128, [1, 0, 0, 0],
                                                                                     0, 0, 0, 0.0))
    assert "refused to arm 3 times" in str(err.value) and "below minimum arming voltage" in str(err.value), str(err.value)
    assert "ground station" not in str(err.value)
    assert _arm_commands(tlog)[0] == 3


def test_pose_forwarder_sends_the_simulated_mocap_in_ardupilots_and_px4s_frames():
    from flight.mocap import PoseError, PoseForwarder, SimulatedMocap, parse_pose

    class Recorder:                                     # stands in for pymavlink's `master.mav`
        def __init__(self):
            self.sent = []

        def __getattr__(self, name):
            return lambda *args: self.sent.append((name, args))
    mocap = parse_pose("sim://?noise_m=0&noise_rad=0&latency_s=0.02&rate_hz=100")
    assert isinstance(mocap, SimulatedMocap)
    yaw_90 = frames.quat_from_axis_angle([0, 0, 1], math.pi / 2)         # ENU: facing north
    for k in range(10):                                                 # 10 ms apart, flying east at 1 m/s
        mocap.observe(k * 0.01, {"pos_enu_m": [1.0 + 0.01 * k, 2.0, 3.0], "vel_enu_m_s": [1.0, 0, 0], "quat_wxyz": yaw_90})
    pose = mocap.latest()
    assert pose["t_s"] == pytest.approx(0.07)                           # 20 ms late
    master = type("M", (), {"mav": Recorder()})()
    forwarder = PoseForwarder(mocap, master, "ardupilot")
    assert forwarder.send_once() and not forwarder.send_once()         # each pose once
    (name, args), (speed, vel) = master.mav.sent
    assert name == "vision_position_estimate_send" and speed == "vision_speed_estimate_send"
    assert args[1:4] == pytest.approx((2.0, 1.07, -3.0))                # NED: north, east, down
    assert args[4:7] == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)        # facing north: heading 0 in NED
    assert vel[1:4] == pytest.approx((0.0, 1.0, 0.0))
    px4 = type("M", (), {"mav": Recorder()})()
    PoseForwarder(mocap, px4, "px4").send_once()
    (name, args), = px4.mav.sent
    assert name == "odometry_send" and args[3:6] == pytest.approx((2.0, 1.07, -3.0))
    for bad in ("sim://?noise=1", "mocap://nobody@host/quad", "mocap://vicon@host", "gps://x", "sim://?latency_s=9"):
        with pytest.raises(PoseError):
            parse_pose(bad)
    with pytest.raises(PoseError):
        PoseForwarder(mocap, master, rate_hz=100)                       # ArduPilot and PX4 want 30..50 Hz
