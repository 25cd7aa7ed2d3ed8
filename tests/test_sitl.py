"""The simulated MAVLink vehicle (flight/sitl/), driven over loopback UDP with pymavlink (and
MAVProxy in between for the handshake). Most tests run in lockstep: every setpoint advances the
sim one control step and a TIMESYNC request after it is the barrier that says the step is done."""
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from skyloop import frames  # noqa: E402
from flight.connection import ConnectionStringError  # noqa: E402
from flight.sitl import SitlVehicle, SitlError, parse_speed  # noqa: E402
from flight.sitl.models import Realism, RealismError  # noqa: E402
from flight.sitl.vehicle import Vehicle  # noqa: E402
from skyloop.course import load_course  # noqa: E402
from sim.core import GRAVITY_M_S2  # noqa: E402
from skyloop.cli import main as skyloop  # noqa: E402

mav = mavutil.mavlink
RATES_ONLY = mav.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE                      # 128
ATTITUDE_ONLY = 0b111                                                          # 7: rates ignored


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A companion computer: pymavlink on udpout to the vehicle's udpin port."""

    def __init__(self, url: str):
        self.c = mavutil.mavlink_connection(url, source_system=255, source_component=mav.MAV_COMP_ID_ONBOARD_COMPUTER)
        self.seen: dict[str, object] = {}          # newest message of each type
        self.log: list = []                        # every message, in order
        self.barrier = 0

    def handle(self, msg):
        self.seen[msg.get_type()] = msg
        self.log.append(msg)

    def recv(self, kind, timeout=3.0, cond=lambda m: True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.c.recv_match(blocking=True, timeout=0.05)
            if msg is None:
                continue
            self.handle(msg)
            if msg.get_type() == kind and cond(msg):
                return msg
        raise AssertionError(f"no {kind} within {timeout} s")

    def latest(self, kind):
        """The newest `kind` received (after a sync: up to date with the vehicle)."""
        return self.seen[kind]

    def find(self, kind, cond=lambda m: True):
        """The newest `kind` matching cond received so far, else the next one."""
        for msg in reversed(self.log):
            if msg.get_type() == kind and cond(msg):
                return msg
        return self.recv(kind, cond=cond)

    def connect(self):
        self.c.mav.heartbeat_send(mav.MAV_TYPE_ONBOARD_CONTROLLER, mav.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        return self.recv("HEARTBEAT")

    def sync(self) -> float:
        """Waits until the vehicle has handled everything sent so far; returns its sim time [s]."""
        self.barrier += 1
        self.c.mav.timesync_send(0, self.barrier)
        return self.recv("TIMESYNC", cond=lambda m: m.ts1 == self.barrier and m.tc1 != 0).tc1 / 1e9

    def command(self, command, *params):
        p = list(params) + [0.0] * (7 - len(params))
        self.c.mav.command_long_send(1, 1, command, 0, *p)
        return self.recv("COMMAND_ACK", cond=lambda m: m.command == command).result

    def rate(self, name, hz):
        assert self.command(mav.MAV_CMD_SET_MESSAGE_INTERVAL, getattr(mav, f"MAVLINK_MSG_ID_{name}"),
                            1e6 / hz if hz > 0 else -1) == mav.MAV_RESULT_ACCEPTED

    def setpoint(self, thrust, rates_frd=(0.0, 0.0, 0.0), q=(1.0, 0.0, 0.0, 0.0), type_mask=RATES_ONLY):
        self.c.mav.set_attitude_target_send(0, 1, 1, type_mask, list(q), *rates_frd, thrust)

    def fly(self, steps, thrust, **kw):
        """Lockstep: `steps` setpoints, then the barrier."""
        for _ in range(steps):
            self.setpoint(thrust, **kw)
        return self.sync()

    def tick(self, seconds, vehicle):
        """Lockstep without setpoints: SYSTEM_TIME up to the sim time `seconds` from now."""
        self.c.mav.system_time_send(0, int(round((vehicle.sim_time_s + seconds) * 1000)))
        return self.sync()

    def set_mode(self, custom_mode):
        main, sub = (custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF
        if custom_mode < 1 << 16:                                        # ArduPilot
            main, sub = custom_mode, 0
        return self.command(mav.MAV_CMD_DO_SET_MODE, mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, main, sub)

    def close(self):
        self.c.close()


@contextlib.contextmanager
def connected(profile="crazyflie21", autopilot="ardupilot", lockstep=True, **kw):
    port = free_udp_port()
    with SitlVehicle(profile, f"udpin:127.0.0.1:{port}", autopilot, lockstep=lockstep, **kw) as vehicle:
        client = Client(f"udpout:127.0.0.1:{port}")
        try:
            client.connect()
            yield vehicle, client
        finally:
            client.close()
        assert vehicle.alive()


GUIDED_NOGPS, LAND, STABILIZE = 20, 9, 0
PX4_OFFBOARD, PX4_LAND = 6 << 16, (4 << 16) | (6 << 24)


def take_off(vehicle, client, height_m=1.0, mode=GUIDED_NOGPS):
    """Streams hover, enters the offboard mode, arms, climbs to about height_m and hovers."""
    hover = vehicle.hover_frac
    client.fly(60, hover)                                  # 0.6 s of stream, as PX4 wants before OFFBOARD
    assert client.set_mode(mode) == mav.MAV_RESULT_ACCEPTED
    assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED
    for _ in range(400):
        s = vehicle.state()
        if s["pos_enu_m"][2] >= height_m:
            break
        client.fly(1, min(1.0, hover * (1.0 + 0.5 * (height_m - s["pos_enu_m"][2])) - 0.3 * hover * s["vel_enu_m_s"][2]))
    for _ in range(100):                                   # settle: climb rate to zero
        client.fly(1, hover * (1.0 - 0.5 * vehicle.state()["vel_enu_m_s"][2]))
    assert abs(vehicle.state()["pos_enu_m"][2] - height_m) < 0.3


# ------------------------------------------------------------------------------------ handshake
def test_pymavlink_script_connects_arms_climbs_and_disarms():
    with connected() as (vehicle, client):
        hb = client.seen["HEARTBEAT"]
        assert hb.type == mav.MAV_TYPE_QUADROTOR and hb.autopilot == mav.MAV_AUTOPILOT_ARDUPILOTMEGA
        assert not hb.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED and hb.custom_mode == STABILIZE
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED   # STABILIZE arms
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 0) == mav.MAV_RESULT_ACCEPTED
        client.rate("LOCAL_POSITION_NED", 100)
        take_off(vehicle, client, 1.0)
        t = client.fly(1, vehicle.hover_frac)
        lp = client.seen["LOCAL_POSITION_NED"]
        assert lp.time_boot_ms == round(t * 1000)
        assert lp.z == pytest.approx(-vehicle.state()["pos_enu_m"][2], abs=1e-4) and lp.z < -0.7   # NED: up is -z
        hb = client.recv("HEARTBEAT")
        assert hb.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED and hb.custom_mode == GUIDED_NOGPS
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 0) == mav.MAV_RESULT_DENIED        # in the air
        assert client.set_mode(LAND) == mav.MAV_RESULT_ACCEPTED
        client.tick(4.0, vehicle)
        assert not vehicle.armed and vehicle.state()["pos_enu_m"][2] < 0.02                         # landed, disarmed
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_DENIED        # not in LAND


def test_handshake_and_arming_through_mavproxy(tmp_path):
    pytest.importorskip("MAVProxy", reason="MAVProxy (pip install mavproxy) is the ground station in between")
    mavproxy = shutil.which("mavproxy.py") or os.path.join(os.path.dirname(sys.executable), "mavproxy.py")
    vehicle_port, gcs_port = free_udp_port(), free_udp_port()
    tlog = tmp_path / "session.tlog"
    with SitlVehicle("crazyflie21", f"udpin:127.0.0.1:{vehicle_port}", "ardupilot") as vehicle:    # real time
        proxy = subprocess.Popen([sys.executable, mavproxy, f"--master=udpout:127.0.0.1:{vehicle_port}",
                                  f"--out=udpout:127.0.0.1:{gcs_port}", "--daemon", "--non-interactive",
                                  f"--state-basedir={tmp_path}", f"--logfile={tlog}", "--default-modules=log,param,mode,arm,cmdlong"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 cwd=tmp_path)
        try:
            client = Client(f"udpin:127.0.0.1:{gcs_port}")
            hb = client.recv("HEARTBEAT", timeout=30, cond=lambda m: m.type == mav.MAV_TYPE_QUADROTOR)
            assert hb.get_srcSystem() == 1
            for _ in range(30):
                client.setpoint(vehicle.hover_frac)
                time.sleep(0.01)
            assert client.set_mode(GUIDED_NOGPS) == mav.MAV_RESULT_ACCEPTED
            assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED
            start = time.monotonic()
            while time.monotonic() - start < 1.0:                      # climb for a second of real time
                client.setpoint(vehicle.hover_frac * 1.4)
                client.recv("LOCAL_POSITION_NED", timeout=1.0)
                time.sleep(0.01)
            assert client.seen["LOCAL_POSITION_NED"].z < -0.2 and client.seen["LOCAL_POSITION_NED"].vz < -0.3
            assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 0, 21196) == mav.MAV_RESULT_ACCEPTED
            assert not client.recv("HEARTBEAT", cond=lambda m: m.type == mav.MAV_TYPE_QUADROTOR and not
                                   m.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED).base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED
            client.close()
        finally:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
    dump = subprocess.run([sys.executable, shutil.which("mavlogdump.py") or os.path.join(
        os.path.dirname(sys.executable), "mavlogdump.py"), "--types", "HEARTBEAT,COMMAND_ACK", str(tlog)],
        capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "HEARTBEAT" in dump.stdout and "COMMAND_ACK" in dump.stdout


# ------------------------------------------------------------------------------------ tracking
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_body_rate_target_is_reached_within_the_rate_loop_time_constant_with_frd_signs(axis):
    with connected() as (vehicle, client):
        client.rate("ATTITUDE_QUATERNION", 100)
        take_off(vehicle, client, 1.0)
        p = vehicle.profile.params
        # the sim's rate loop: P on the rate error, D on the measured angular acceleration, so the
        # closed loop's time constant is (1 + kd) / kp; add the motor delay and one control step
        tau_s = (1.0 + p["rate_kd"][axis]) / p["rate_kp_per_s"][axis] + p["motor_delay_s"] + vehicle.dt_s
        command = np.zeros(3)
        command[axis] = 1.0                                     # rad/s, FRD: roll right, nose up, nose right
        yaw0 = frames.quat_to_euler_rpy(vehicle.state()["quat_wxyz"])[2]
        reached_s = None
        for k in range(1, 51):
            t = client.fly(1, vehicle.hover_frac, rates_frd=tuple(command))
            att = client.seen["ATTITUDE_QUATERNION"]           # the barrier came after this step's telemetry
            assert att.time_boot_ms == round(t * 1000)
            measured = [att.rollspeed, att.pitchspeed, att.yawspeed][axis]
            if reached_s is None and measured >= 0.63:
                reached_s = k * vehicle.dt_s
        print(f"axis {axis}: 63 % of 1 rad/s after {reached_s} s (time constant {tau_s:.3f} s)")
        assert reached_s is not None and reached_s <= tau_s
        assert [att.rollspeed, att.pitchspeed, att.yawspeed][axis] == pytest.approx(1.0, abs=0.15)
        s = vehicle.state()
        body_left_up = frames.rotate(s["quat_wxyz"], [0, 1, 0])[2]
        nose_up = frames.rotate(s["quat_wxyz"], [1, 0, 0])[2]
        yaw = frames.quat_to_euler_rpy(s["quat_wxyz"])[2]
        if axis == 0:
            assert body_left_up > 0.1                           # rolled right: the left side rose
        elif axis == 1:
            assert nose_up > 0.1
        else:
            assert yaw < yaw0 - 0.1                             # nose right = clockwise from above = ENU yaw down


def test_attitude_target_is_tracked_by_the_attitude_loop():
    with connected() as (vehicle, client):
        take_off(vehicle, client, 1.0)
        target_frd = frames.euler_rpy_to_quat(math.radians(10), 0.0, frames.yaw_enu_to_ned(0.0))  # roll 10 deg right
        client.fly(100, vehicle.hover_frac / math.cos(math.radians(10)), q=tuple(target_frd), type_mask=ATTITUDE_ONLY)
        roll, pitch, yaw = frames.quat_to_euler_rpy(frames.quat_enu_flu_to_ned_frd(vehicle.state()["quat_wxyz"]))
        assert math.degrees(roll) == pytest.approx(10.0, abs=1.0) and abs(math.degrees(pitch)) < 1.0
        assert vehicle.state()["vel_enu_m_s"][1] < -0.3          # nose east, rolled right: drifting south


def test_setpoints_are_ignored_outside_the_offboard_mode():
    with connected() as (vehicle, client):
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED      # in STABILIZE
        client.fly(100, 0.9)
        assert vehicle.state()["pos_enu_m"][2] < 0.01 and vehicle.failsafe is None


# ------------------------------------------------------------------------------------ failsafes
def test_setpoint_loss_lands_after_the_timeout_and_disarms_on_the_ground():
    with connected(loss_action="land") as (vehicle, client):
        take_off(vehicle, client, 1.0)
        last_setpoint_s = vehicle.sim_time_s - vehicle.dt_s     # the last setpoint arrived before its step
        for _ in range(100):
            client.tick(vehicle.dt_s, vehicle)
            if vehicle.failsafe:
                break
        latency = vehicle.failsafe_t_s - last_setpoint_s
        print(f"setpoint loss -> failsafe after {latency * 1000:.0f} ms of sim time (timeout 500 ms)")
        assert 0.5 <= latency <= 0.5 + vehicle.dt_s + 1e-6 and vehicle.mode == "LAND"
        assert client.find("STATUSTEXT").text.startswith("Failsafe: no valid setpoint")
        client.tick(1.5, vehicle)
        s = vehicle.state()
        assert abs(frames.rotate(s["quat_wxyz"], [0, 0, 1])[2] - 1.0) < 0.01                      # level
        assert s["vel_enu_m_s"][2] == pytest.approx(-0.5, abs=0.05)                                 # LAND_SPEED
        client.tick(2.5, vehicle)
        assert not vehicle.armed and vehicle.state()["pos_enu_m"][2] < 0.02


@pytest.mark.timing
def test_setpoint_loss_in_real_time_is_measured_within_the_timeout():
    with connected(lockstep=False) as (vehicle, client):
        hover = vehicle.hover_frac
        for _ in range(30):
            client.setpoint(hover)
            time.sleep(0.01)
        assert client.set_mode(GUIDED_NOGPS) == mav.MAV_RESULT_ACCEPTED
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED
        start = time.monotonic()
        while time.monotonic() - start < 0.8:
            client.setpoint(hover * 1.3)
            time.sleep(0.01)
        stopped = time.monotonic()
        text = client.recv("STATUSTEXT", timeout=2.0, cond=lambda m: m.text.startswith("Failsafe"))
        latency = time.monotonic() - stopped
        print(f"real time: last setpoint -> failsafe STATUSTEXT {latency * 1000:.0f} ms")
        assert "no valid setpoint" in text.text and 0.45 <= latency <= 0.8   # 0.5 s timeout; wall-clock slack


def test_setpoint_loss_levels_and_holds_altitude_in_the_mode_by_default_like_ardupilot():
    with connected() as (vehicle, client):
        take_off(vehicle, client, 1.0)
        client.fly(20, vehicle.hover_frac * 1.2, rates_frd=(0.5, 0.0, 0.0))      # climbing and rolling
        client.tick(2.5, vehicle)
        s = vehicle.state()
        assert vehicle.mode == "GUIDED_NOGPS" and vehicle.armed and "no valid setpoint" in vehicle.failsafe
        assert abs(s["vel_enu_m_s"][2]) < 0.05 and frames.rotate(s["quat_wxyz"], [0, 0, 1])[2] > 0.999


@pytest.mark.parametrize("bad", ["non-unit quaternion", "thrust ignored", "some rates ignored", "NaN thrust"])
def test_an_invalid_attitude_target_stops_the_vehicle_as_ardupilot_does(bad):
    with connected(loss_action="land") as (vehicle, client):
        take_off(vehicle, client, 1.0)
        client.fly(50, vehicle.hover_frac * 1.15, rates_frd=(0.0, -0.8, 0.0))    # pitch down: fly forward, climb
        client.fly(30, vehicle.hover_frac * 1.15)
        v0 = vehicle.state()["vel_enu_m_s"]
        assert v0[0] > 0.5 and v0[2] > 0.1
        message = {"non-unit quaternion": dict(thrust=1.0, q=(1.2, 0, 0, 0), type_mask=ATTITUDE_ONLY),
                   "thrust ignored": dict(thrust=1.0, type_mask=RATES_ONLY | mav.ATTITUDE_TARGET_TYPEMASK_THROTTLE_IGNORE),
                   "some rates ignored": dict(thrust=1.0, type_mask=RATES_ONLY | 0b001, rates_frd=(0, -3, 0)),
                   "NaN thrust": dict(thrust=math.nan)}[bad]
        client.fly(40, **message)                               # 0.4 s of the bad message: never flown
        s = vehicle.state()
        assert vehicle.failsafe.startswith("invalid SET_ATTITUDE_TARGET") and vehicle.mode == "GUIDED_NOGPS"
        body_up = frames.rotate(s["quat_wxyz"], [0, 0, 1])
        assert np.dot(body_up[:2], s["vel_enu_m_s"][:2]) < 0 and abs(s["vel_enu_m_s"][2]) < 0.3  # braking, not climbing
        client.fly(1, vehicle.hover_frac)                       # a valid setpoint resumes control
        assert vehicle._hold is None and vehicle.mode == "GUIDED_NOGPS"
        client.fly(40, **message)
        client.tick(1.5, vehicle)                               # no valid setpoint for the timeout: LAND
        s = vehicle.state()
        assert vehicle.mode == "LAND" and np.linalg.norm(s["vel_enu_m_s"][:2]) < 0.2


def test_critical_battery_lands_and_disarms_then_refuses_to_arm():
    with connected(battery_soc=0.10) as (vehicle, client):
        take_off(vehicle, client, 1.0)
        for _ in range(10):
            client.fly(100, vehicle.hover_frac)
            if vehicle.failsafe:
                break
        assert vehicle.failsafe.startswith("battery critical") and vehicle.mode == "LAND"
        client.tick(4.0, vehicle)
        assert not vehicle.armed and vehicle.state()["pos_enu_m"][2] < 0.02
        assert client.latest("BATTERY_STATUS").charge_state == mav.MAV_BATTERY_CHARGE_STATE_CRITICAL
        assert client.set_mode(GUIDED_NOGPS) == mav.MAV_RESULT_ACCEPTED
        assert client.command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_DENIED


# ------------------------------------------------------------------------------------ PX4, params, streams
def test_px4_wants_a_setpoint_stream_before_offboard_and_lands_on_loss():
    with connected(autopilot="px4") as (vehicle, client):
        assert client.seen["HEARTBEAT"].autopilot == mav.MAV_AUTOPILOT_PX4
        assert client.set_mode(PX4_OFFBOARD) == mav.MAV_RESULT_DENIED           # no stream yet
        take_off(vehicle, client, 1.0, mode=PX4_OFFBOARD)
        assert client.recv("HEARTBEAT").custom_mode == PX4_OFFBOARD
        client.tick(0.6, vehicle)
        assert vehicle.mode == "AUTO.LAND" and client.recv("HEARTBEAT").custom_mode == PX4_LAND


def test_parameters_read_set_and_drive_the_vehicle():
    with connected() as (vehicle, client):
        client.c.mav.param_request_read_send(1, 1, b"GUID_OPTIONS", -1)
        assert client.recv("PARAM_VALUE", cond=lambda m: m.param_id == "GUID_OPTIONS").param_value == 8
        client.c.mav.param_request_read_send(1, 1, b"MOT_THST_HOVER", -1)
        hover = client.recv("PARAM_VALUE", cond=lambda m: m.param_id == "MOT_THST_HOVER").param_value
        assert hover == pytest.approx(vehicle.hover_frac, rel=1e-6)
        client.c.mav.param_request_list_send(1, 1)
        client.recv("PARAM_VALUE", cond=lambda m: m.param_index == m.param_count - 1)
        client.c.mav.param_set_send(1, 1, b"GUID_TIMEOUT", 0.2, mav.MAV_PARAM_TYPE_REAL32)
        assert client.recv("PARAM_VALUE", cond=lambda m: m.param_id == "GUID_TIMEOUT").param_value == pytest.approx(0.2)
        take_off(vehicle, client, 1.0)
        t0 = vehicle.sim_time_s
        client.tick(0.3, vehicle)
        assert vehicle.failsafe_t_s - t0 <= 0.2 + 1e-6          # the new timeout
        # GUID_OPTIONS bit 3 clear: the thrust field is a climb rate (0.5 holds, 0.75 climbs at 1.25 m/s)
        client.c.mav.param_set_send(1, 1, b"GUID_OPTIONS", 0, mav.MAV_PARAM_TYPE_REAL32)
        client.recv("PARAM_VALUE", cond=lambda m: m.param_id == "GUID_OPTIONS")
        client.set_mode(GUIDED_NOGPS)
        client.fly(150, 0.75)
        assert vehicle.state()["vel_enu_m_s"][2] == pytest.approx(1.25, abs=0.1)
        client.fly(150, 0.5)
        assert vehicle.state()["vel_enu_m_s"][2] == pytest.approx(0.0, abs=0.1)


def test_the_runners_ardupilot_checks_read_angle_boost_off_and_the_spool_time(caplog):
    """The runner reads ATC_ANGLE_BOOST and MOT_SPOOL_TIME from ArduPilot (flight/ardupilot_params.py);
    this vehicle answers them as what it is (no boost; a 0.5 s spool-up, fixed), so the link neither warns
    "ATC_ANGLE_BOOST is on" nor waits out unanswered reads; a boost it does not have is refused."""
    from flight.link import MavLink
    from flight.connection import parse_connection
    port = free_udp_port()
    with SitlVehicle("crazyflie21", f"udpout:127.0.0.1:{port}", "ardupilot"):
        with caplog.at_level("WARNING"), MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot") as link:
            assert link._params["ATC_ANGLE_BOOST"] == 0.0 and link._params["MOT_SPOOL_TIME"] == pytest.approx(0.5)
            assert link.spool_s == pytest.approx(2 * 0.5 + 0.2)
        assert "ATC_ANGLE_BOOST is on" not in caplog.text
    from flight.sitl.vehicle import param_problem
    assert "outside" in param_problem("ATC_ANGLE_BOOST", 1.0) and param_problem("ATC_ANGLE_BOOST", 0.0) is None


LINK_AGES_SCRIPT = """
import json, sys, time
from flight.connection import parse_connection
from flight.link import MavLink
with MavLink(parse_connection(sys.argv[1]), "ardupilot") as link:
    link.wait_for_state(timeout_s=10.0)
    print("ready", flush=True)
    rows, last, end = [], time.monotonic(), time.monotonic() + 2.5
    while time.monotonic() < end:
        state = link.latest_state()
        now = time.monotonic()
        rows.append((now - last, now - state["t_s"]))      # (gap since the last tick, age of the state)
        last = now
        time.sleep(0.02)
print(json.dumps(rows))
"""


def test_a_stall_of_our_own_process_is_not_the_vehicles_silence():
    """The control loop's process stopped 0.3 s (SIGSTOP): on resuming, the state it reads first is
    not 0.3 s old (which the supervisor would call stale telemetry, the vehicle's fault): the link
    lets its reader catch up with what the vehicle sent meanwhile. Measured on real ArduPilot: a
    0.3 s stall of fly ended the flight "stale telemetry: the newest state arrived 0.32 s ago"."""
    port = free_udp_port()
    with SitlVehicle("crazyflie21", f"udpout:127.0.0.1:{port}", "ardupilot"):
        child = subprocess.Popen([sys.executable, "-c", LINK_AGES_SCRIPT, f"udpin:127.0.0.1:{port}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()[-2000:]
            time.sleep(0.5)
            child.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
            child.send_signal(signal.SIGCONT)
            out, err = child.communicate(timeout=30)
        finally:
            child.kill()
    rows = json.loads(out.strip().splitlines()[-1])
    after = [age for gap, age in rows if gap > 0.25]
    assert after, "the child did not stall"
    assert after[0] < 0.25, rows                          # Limits.stale_telemetry_s
    assert max(age for _, age in rows) < 0.25


def test_by_default_the_start_reads_zero_as_on_ardupilot_with_gps():
    """By default (origin "start") LOCAL_POSITION_NED and ODOMETRY are relative to where the vehicle
    started (ArduPilot's and PX4's EKF origin with GPS), so the hall, whose start is (-14, -8), is
    refused as it is and placed at the vehicle with the "start" rule; origin="course" reports the
    course's frame (motion capture)."""
    from flight.origin import CourseOriginError, place_course
    hall = load_course("hall")
    for origin, expect_ned in ((None, (0.0, 0.0, 0.0)), ("course", (-8.0, -14.0, 0.0))):
        kw = {} if origin is None else {"origin": origin}
        with connected(start_pos_enu_m=hall.start_pos_enu_m, **kw) as (vehicle, client):
            assert vehicle.origin == (origin or "start")
            client.rate("LOCAL_POSITION_NED", 50)
            client.rate("ODOMETRY", 50)
            client.tick(0.2, vehicle)
            lpn, odo = client.seen["LOCAL_POSITION_NED"], client.seen["ODOMETRY"]
            assert (lpn.x, lpn.y, lpn.z) == pytest.approx(expect_ned, abs=1e-5)
            assert (odo.x, odo.y, odo.z) == pytest.approx(expect_ned, abs=1e-5)
            reported_enu = frames.ned_to_enu([lpn.x, lpn.y, lpn.z])
            if origin is None:
                with pytest.raises(CourseOriginError):
                    place_course(hall, reported_enu, "local")
                placed, offset = place_course(hall, reported_enu, "start")
                assert offset.tolist() == pytest.approx([14.0, 8.0, 0.0])
                take_off(vehicle, client, 1.0)
                client.tick(0.1, vehicle)
                lpn = client.seen["LOCAL_POSITION_NED"]
                assert -lpn.z == pytest.approx(vehicle.state()["pos_enu_m"][2], abs=0.05)   # up is -z, from the start
                assert (lpn.x, lpn.y) == pytest.approx(tuple(np.asarray(vehicle.state()["pos_enu_m"])[[1, 0]]
                                                             - [-8.0, -14.0]), abs=1e-3)
            else:
                assert place_course(hall, reported_enu, "local")[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(SitlError):
        Vehicle(origin="home")


def test_streams_at_requested_rates_in_ned_frd_with_sag_rpm_and_pwm():
    # the course's frame (origin "course"), so that the start's (3, 2) shows which axis is which
    with connected(start_pos_enu_m=(3.0, 2.0, 0.0), start_yaw_rad=math.radians(30), origin="course") as (vehicle, client):
        client.rate("ODOMETRY", 50)
        client.rate("HIGHRES_IMU", 100)
        client.rate("BATTERY_STATUS", 10)
        client.rate("ATTITUDE", -1)
        t0 = client.tick(0.0, vehicle)
        rest_v = client.latest("BATTERY_STATUS").voltages[0]
        n0 = len(client.log)
        t1 = client.tick(2.0, vehicle)
        got = [m.get_type() for m in client.log[n0:]]
        sim_s = t1 - t0
        assert got.count("ODOMETRY") == pytest.approx(50 * sim_s, abs=2)
        assert got.count("HIGHRES_IMU") == pytest.approx(100 * sim_s, abs=2)
        assert got.count("BATTERY_STATUS") == pytest.approx(10 * sim_s, abs=2) and "ATTITUDE" not in got
        imu, odo = client.seen["HIGHRES_IMU"], client.seen["ODOMETRY"]
        assert (imu.xacc, imu.yacc, imu.zacc) == pytest.approx((0, 0, -GRAVITY_M_S2), abs=1e-3)   # FRD: up is -z
        assert (odo.x, odo.y, odo.z) == pytest.approx((2.0, 3.0, 0.0), abs=1e-5)        # NED: north, east, down
        assert math.degrees(frames.quat_to_euler_rpy(odo.q)[2]) == pytest.approx(60.0, abs=1e-3)   # yaw from north
        assert odo.frame_id == mav.MAV_FRAME_LOCAL_NED and odo.child_frame_id == mav.MAV_FRAME_BODY_FRD
        # motor test, disarmed only: motor 1 in ArduPilot's sequence is the front-right (sim motor 1)
        assert client.command(mav.MAV_CMD_DO_MOTOR_TEST, 1, mav.MOTOR_TEST_THROTTLE_PERCENT, 30, 1, 1, 0) == 0
        client.tick(0.5, vehicle)
        rpm = client.latest("ESC_TELEMETRY_1_TO_4").rpm
        assert rpm[0] > 1000 and rpm[1] == rpm[2] == rpm[3] == 0
        take_off(vehicle, client, 1.0)
        assert client.command(mav.MAV_CMD_DO_MOTOR_TEST, 1, 0, 30, 1, 1, 0) == mav.MAV_RESULT_DENIED
        client.fly(20, vehicle.hover_frac)
        esc, servo = client.latest("ESC_TELEMETRY_1_TO_4"), client.latest("SERVO_OUTPUT_RAW")
        assert min(esc.rpm) > 5000 and 1100 < servo.servo1_raw < 1900
        hover_v = client.latest("BATTERY_STATUS").voltages[0]
        assert 0.93 * rest_v < hover_v < 0.98 * rest_v                                   # sags under load
        assert client.latest("SYS_STATUS").voltage_battery == pytest.approx(hover_v, abs=30)


def test_realism_noise_latency_drop_and_wind():
    realism = Realism.parse("gyro_noise_rad_s=0.02,latency_s=0.05,drop=0.2,wind_e_m_s=3")
    with connected(realism=realism, seed=5) as (vehicle, client):
        client.rate("ATTITUDE_QUATERNION", 100)
        n0 = len(client.log)
        t = client.tick(2.0, vehicle)
        att = [m for m in client.log[n0:] if m.get_type() == "ATTITUDE_QUATERNION"]
        assert 0.7 * 200 < len(att) < 0.9 * 200                                          # 20 % lost
        assert np.std([m.rollspeed for m in att]) == pytest.approx(0.02, rel=0.25)     # on the ground: noise only
        assert att[-1].time_boot_ms <= round((t - 0.05) * 1000)                          # 50 ms late
        take_off(vehicle, client, 1.0)
        client.fly(100, vehicle.hover_frac)
        assert vehicle.state()["vel_enu_m_s"][0] > 0.3                                   # blown east


# ------------------------------------------------------------------------------------ determinism, robustness
def _scripted_flight(seed):
    with connected(realism="real", seed=seed) as (vehicle, client):
        client.rate("LOCAL_POSITION_NED", 100)
        take_off(vehicle, client, 1.0)
        for k in range(100):
            client.fly(1, vehicle.hover_frac * 1.05, rates_frd=(0.5 * math.sin(k / 10), 0.3, -0.2))
        client.tick(0.5, vehicle)
        telemetry = {(m.get_type(), m.time_boot_ms): m.get_msgbuf()[10:] for m in client.log
                     if m.get_type() in ("LOCAL_POSITION_NED", "ATTITUDE_QUATERNION")}
        return telemetry, {k: v.tobytes() for k, v in vehicle.state().items() if hasattr(v, "tobytes")}


def test_lockstep_runs_are_reproducible_bit_for_bit():
    start = time.monotonic()
    first, second, other = _scripted_flight(3), _scripted_flight(3), _scripted_flight(4)
    print(f"three lockstep flights in {time.monotonic() - start:.1f} s")
    assert first == second
    assert len(first[0]) > 300
    assert other[1] != first[1]                    # another seed: other noise and gusts


def test_100k_random_and_corrupted_frames_neither_crash_nor_change_the_vehicle():
    rng = np.random.default_rng(0)
    forge = mav.MAVLink(None, srcSystem=255, srcComponent=191)
    valid = [mav.MAVLink_command_long_message(1, 1, mav.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 21196, 0, 0, 0, 0, 0),
             mav.MAVLink_command_long_message(1, 1, mav.MAV_CMD_DO_SET_MODE, 0, 1, GUIDED_NOGPS, 0, 0, 0, 0, 0),
             mav.MAVLink_set_mode_message(1, 1, GUIDED_NOGPS),
             mav.MAVLink_param_set_message(1, 1, b"GUID_OPTIONS", 0, 9),
             mav.MAVLink_set_attitude_target_message(0, 1, 1, 128, [1, 0, 0, 0], 1, 1, 1, 1.0),
             mav.MAVLink_system_time_message(0, 60000),
             mav.MAVLink_command_long_message(1, 1, mav.MAV_CMD_SET_MESSAGE_INTERVAL, 0, 32, -1, 0, 0, 0, 0, 0)]
    valid = [m.pack(forge) for m in valid]
    frames_out = []
    for i in range(100_000):
        kind = i % 3
        if kind == 0:                                           # random bytes behind a MAVLink start byte
            frames_out.append(bytes([0xFD if i % 2 else 0xFE]) + rng.integers(0, 256, rng.integers(5, 60),
                                                                                dtype=np.uint8).tobytes())
        elif kind == 1:                                         # a real command with one byte changed
            f = bytearray(valid[i % len(valid)])
            k = int(rng.integers(1, len(f)))
            f[k] ^= int(rng.integers(1, 256))
            frames_out.append(bytes(f))
        else:                                                   # well formed, for another system, absurd fields
            t = int(rng.integers(2, 256))
            m = [mav.MAVLink_command_long_message(t, 1, mav.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 21196, *[0] * 5),
                 mav.MAVLink_set_mode_message(t, 1, GUIDED_NOGPS),
                 mav.MAVLink_param_set_message(t, 1, b"GUID_TIMEOUT", float(rng.normal()) * 1e30, 9),
                 mav.MAVLink_command_long_message(1, 1, int(rng.integers(0, 65536)), 0,
                                                  *[float(x) for x in rng.normal(size=7) * 1e6])][i % 4]
            if i % 4 == 3 and m.command in (mav.MAV_CMD_COMPONENT_ARM_DISARM, mav.MAV_CMD_DO_SET_MODE,
                                            mav.MAV_CMD_SET_MESSAGE_INTERVAL, mav.MAV_CMD_DO_MOTOR_TEST,
                                            mav.MAV_CMD_REQUEST_MESSAGE):
                m.command = mav.MAV_CMD_DO_REPOSITION           # only commands we do not act on
            frames_out.append(m.pack(forge))
    with connected() as (vehicle, client):
        before = (vehicle.armed, vehicle.custom_mode, dict(vehicle.params), dict(vehicle.rates_hz),
                  vehicle.state()["pos_enu_m"].tobytes(), vehicle.state()["quat_wxyz"].tobytes())
        start = time.monotonic()          # sent from the client's socket: udpin answers its newest sender
        chunk, sent = bytearray(), 0
        for f in frames_out:
            chunk += f
            if len(chunk) > 30_000:
                client.c.write(bytes(chunk) + bytes(300))      # zeros end any half frame before the next barrier
                sent += 1
                chunk = bytearray()
                if sent % 4 == 0:
                    client.sync()                               # never more than ~120 kB queued at the port
        client.c.write(bytes(chunk) + bytes(300))
        client.sync()
        elapsed = time.monotonic() - start
        after = (vehicle.armed, vehicle.custom_mode, dict(vehicle.params), dict(vehicle.rates_hz),
                 vehicle.state()["pos_enu_m"].tobytes(), vehicle.state()["quat_wxyz"].tobytes())
        print(f"100 000 frames in {elapsed:.1f} s; counters {vehicle.counters}")
        assert vehicle.alive() and after == before
        assert vehicle.counters["bad_frames"] > 30_000
        take_off(vehicle, client, 0.5)                          # and it still flies
        assert vehicle.armed


# ------------------------------------------------------------------------------------ configuration and CLI
def test_bad_settings_are_clear_errors(capsys):
    with pytest.raises(ConnectionStringError, match="Valid forms: udpin:0.0.0.0:14550"):
        SitlVehicle("crazyflie21", "14550")
    with pytest.raises(SitlError, match="ardupilot or px4"):
        SitlVehicle("crazyflie21", "udpin:127.0.0.1:14550", "inav")
    with pytest.raises(RealismError, match="gyro_noise_rad_s"):
        Realism.parse("gyro=0.1")
    assert Realism.parse("real,drop=0.5").drop == 0.5 and Realism.parse("real").gyro_noise_rad_s > 0
    assert parse_speed("lockstep") == (1.0, True) and parse_speed("2") == (2.0, False)
    with pytest.raises(SitlError, match="lockstep"):
        parse_speed("fast")
    assert skyloop(["sitl", "--listen", "localhost:14550"]) == 1
    assert "skyloop sitl: error: connection string 'localhost:14550'" in capsys.readouterr().err


def test_the_cli_serves_a_vehicle_until_ctrl_c():
    port = free_udp_port()
    proc = subprocess.Popen([sys.executable, "-m", "skyloop", "sitl", "--listen", f"udpin:127.0.0.1:{port}",
                             "--speed", "lockstep", "--autopilot", "px4", "--noise", "real"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        client = Client(f"udpout:127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        hb = None
        while hb is None and time.monotonic() < deadline:
            client.c.mav.heartbeat_send(mav.MAV_TYPE_ONBOARD_CONTROLLER, mav.MAV_AUTOPILOT_INVALID, 0, 0, 0)
            hb = client.c.recv_match(type="HEARTBEAT", blocking=True, timeout=0.5)
        assert hb is not None and hb.autopilot == mav.MAV_AUTOPILOT_PX4
        assert client.fly(10, 0.0) == pytest.approx(0.1)        # lockstep: ten setpoints, ten steps
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "simulated px4 quadrotor (crazyflie21)" in err
