"""The simulated MAVLink vehicle on its own, driven with plain pymavlink as a ground station would."""
import math
import os
import socket
import time

import numpy as np
import pytest

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from flight.cli import _free_udp_port  # noqa: E402
from flight.sitl import SitlVehicle  # noqa: E402

mav = mavutil.mavlink


@pytest.fixture
def vehicle_and_gcs():
    port = _free_udp_port()
    with SitlVehicle("fpv5", f"udpin:127.0.0.1:{port}", "ardupilot", (0, 0, 0)) as vehicle:
        gcs = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=255)
        gcs.mav.heartbeat_send(mav.MAV_TYPE_GCS, mav.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        assert gcs.recv_match(type="HEARTBEAT", blocking=True, timeout=5) is not None
        yield vehicle, gcs, port
        gcs.close()


def fresh(gcs, kind, timeout=2.0):
    """The next `kind` message sent after now (older ones queued in the socket are skipped)."""
    while gcs.recv_msg() is not None:
        pass
    return gcs.recv_match(type=kind, blocking=True, timeout=timeout)


def command(gcs, cmd, *p):
    p = list(p) + [0] * (7 - len(p))
    gcs.mav.command_long_send(1, 1, cmd, 0, *p)
    ack = gcs.recv_match(type="COMMAND_ACK", blocking=True, timeout=3, condition=f"COMMAND_ACK.command=={cmd}")
    return ack.result if ack is not None else None


def rates_target(gcs, thrust, rates_frd):
    gcs.mav.set_attitude_target_send(0, 1, 1, 128, [1, 0, 0, 0], *rates_frd, thrust)


def take_off(vehicle, gcs, seconds=1.5):
    assert command(gcs, mav.MAV_CMD_DO_SET_MODE, 1, 20) == mav.MAV_RESULT_ACCEPTED      # GUIDED_NOGPS
    assert command(gcs, mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == mav.MAV_RESULT_ACCEPTED
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rates_target(gcs, min(0.95, vehicle.hover_frac * 1.3), [0, 0, 0])
        time.sleep(0.02)


def test_handshake_arm_climb_disarm(vehicle_and_gcs):
    vehicle, gcs, _ = vehicle_and_gcs
    hb = gcs.recv_match(type="HEARTBEAT", blocking=True, timeout=3)
    assert hb.type == mav.MAV_TYPE_QUADROTOR and not hb.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED
    gcs.mav.param_request_read_send(1, 1, b"GUID_OPTIONS", -1)
    assert gcs.recv_match(type="PARAM_VALUE", blocking=True, timeout=3).param_value == 8
    take_off(vehicle, gcs)
    pos = fresh(gcs, "LOCAL_POSITION_NED")
    assert pos.z < -0.3                                   # NED: up is negative z
    assert vehicle.armed


def test_commanded_body_rate_is_reached_with_frd_signs(vehicle_and_gcs):
    vehicle, gcs, _ = vehicle_and_gcs
    take_off(vehicle, gcs)
    for axis, rate in ((0, 2.0), (1, -2.0), (2, 1.5)):          # roll right, pitch down, yaw right (FRD)
        cmd = [0.0, 0.0, 0.0]
        cmd[axis] = rate
        start = time.monotonic()
        while time.monotonic() - start < 0.15:                   # a few rate-loop time constants
            rates_target(gcs, vehicle.hover_frac, cmd)
            time.sleep(0.01)
        att = fresh(gcs, "ATTITUDE_QUATERNION")
        measured = [att.rollspeed, att.pitchspeed, att.yawspeed][axis]
        assert measured == pytest.approx(rate, rel=0.25), (axis, measured)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:                            # level again
            rates_target(gcs, vehicle.hover_frac, [0, 0, 0])
            time.sleep(0.01)


def test_setpoint_loss_lands_within_the_timeout(vehicle_and_gcs):
    vehicle, gcs, _ = vehicle_and_gcs
    take_off(vehicle, gcs)
    last = vehicle.sim_time_s
    deadline = time.monotonic() + 2.0
    while vehicle.failsafe is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert vehicle.failsafe is not None and "setpoint stream lost" in vehicle.failsafe
    delay = vehicle.failsafe_t_s - last
    print(f"setpoint loss -> LAND after {delay * 1000:.0f} ms (timeout 500 ms)")
    assert 0.45 <= delay <= 0.6
    hb = fresh(gcs, "HEARTBEAT")
    assert hb.custom_mode == 9                                  # LAND


@pytest.mark.parametrize("q,thrust,mask,why", [
    ([0.9, 0.0, 0.0, 0.0], 0.5, 7, "not a unit quaternion"),
    ([1.0, 0.0, 0.0, 0.0], 0.5, 7 | 64, "thrust missing"),
    ([1.0, 0.0, 0.0, 0.0], float("nan"), 128, "thrust missing"),
])
def test_an_invalid_attitude_target_stops_and_lands(vehicle_and_gcs, q, thrust, mask, why):
    vehicle, gcs, _ = vehicle_and_gcs
    take_off(vehicle, gcs)
    gcs.mav.set_attitude_target_send(0, 1, 1, mask, q, 0, 0, 0, thrust)
    deadline = time.monotonic() + 1.0
    while vehicle.failsafe is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert vehicle.failsafe is not None and why in vehicle.failsafe


def test_attitude_target_is_tracked(vehicle_and_gcs):
    vehicle, gcs, _ = vehicle_and_gcs
    take_off(vehicle, gcs)
    roll = math.radians(15)                                      # right side down, NED/FRD
    q = [math.cos(roll / 2), math.sin(roll / 2), 0, 0]
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        gcs.mav.set_attitude_target_send(0, 1, 1, 7, q, 0, 0, 0, vehicle.hover_frac)
        time.sleep(0.01)
    att = fresh(gcs, "ATTITUDE")
    assert att.roll == pytest.approx(roll, abs=math.radians(4))


def test_garbage_at_the_port_neither_crashes_it_nor_changes_its_state(vehicle_and_gcs):
    vehicle, gcs, port = vehicle_and_gcs
    rng = np.random.default_rng(0)
    good = gcs.mav.command_long_encode(1, 1, mav.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 0, 0, 0, 0, 0, 0).pack(gcs.mav)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for k in range(100_000):
        if k % 2:
            frame = bytearray(good)
            frame[rng.integers(len(frame))] ^= 1 << int(rng.integers(8))       # a corrupted arm command
        else:
            frame = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        sock.sendto(bytes(frame), ("127.0.0.1", port))
        if k % 2000 == 0:
            time.sleep(0.01)                                      # let the vehicle's loop keep up
    sock.close()
    time.sleep(1.0)
    assert not vehicle.armed and vehicle.custom_mode == 0 and vehicle._thread.is_alive()
    gcs.mav.heartbeat_send(mav.MAV_TYPE_GCS, mav.MAV_AUTOPILOT_INVALID, 0, 0, 0)
    assert command(gcs, mav.MAV_CMD_DO_SET_MODE, 1, 20) == mav.MAV_RESULT_ACCEPTED   # still answers
