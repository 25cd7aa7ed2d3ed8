"""The runner in lockstep with the built-in simulated vehicle (flight/link.py LockstepClock): its
clock is the vehicle's sim time, so a flight is the same flight on any machine load, and the
link's timeouts (stale telemetry, link loss, the vehicle's setpoint timeout) count sim time."""
import contextlib
import os
import time

import numpy as np
import pytest

from flight.course import parse_course
from flight.runner import fly_course
from flight.safety import Limits
from skyloop.rowlog import read_row_log
from tests.conftest import QuietStatus as Quiet

SHORT = {"format": "skyloop.course/1", "name": "short", "bounds_m": {"min": [-6, -6, 0], "max": [10, 8, 5]},
         "start": {"pos_enu_m": [3.0, 2.0, 0.0], "yaw_deg": 135.0}, "laps": 1,
         "gates": [{"centre_enu_m": [3.0, 6.0, 1.5], "yaw_deg": 90, "inner_size_m": 1.5},
                   {"centre_enu_m": [-2.0, 4.0, 1.5], "yaw_deg": 200, "inner_size_m": 1.5}]}
STATE_COLUMNS = [f"{name}_{a}" for name in ("pos_enu_m", "vel_enu_m_s", "omega_frd_rad_s") for a in "xyz"] + \
    ["quat_w", "quat_x", "quat_y", "quat_z"] + [f"action_{k}" for k in range(4)] + ["sent_thrust", "battery_v"]


@contextlib.contextmanager
def lockstep_flight(course, policy_name=None, **sitl):
    """(vehicle, link, policy, profile): the simulated vehicle and a MAVLink link to it, both in lockstep;
    the shipped policy `fly` flies, or flight/policies/`policy_name`."""
    from flight.cli import default_policy
    from flight.connection import parse_connection
    from flight.link import MavLink
    from flight.sitl import SitlVehicle
    from policy_export import load_policy
    from sim.profiles import load_profile
    from tests.conftest import _free_udp_port
    port = _free_udp_port()
    prof = load_profile("crazyflie21")
    path = default_policy("ctbr")
    policy = load_policy(os.path.join(os.path.dirname(path), policy_name) if policy_name else path,
                         action_modes=("ctbr",))
    with SitlVehicle(prof, f"udpout:127.0.0.1:{port}", "ardupilot", course.start_pos_enu_m, course.start_yaw_rad,
                     lockstep=True, origin="course", **sitl) as vehicle:
        with MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot", "ctbr",
                     policy.metadata["action_scaling"]["rate_max_rad_s"], lockstep=True) as link:
            yield vehicle, link, policy, prof


def at_sim_time(vehicle, t_s: float, action) -> dict:
    """Calls action() once, right after the vehicle's step that reaches sim time t_s (in the vehicle's
    thread, under its lock); returns {"t_s": the sim time it was called at}."""
    step, called = vehicle._step, {}

    def step_then_act():
        step()
        if not called and vehicle.sim_time_s >= t_s - 1e-9:
            called["t_s"] = vehicle.sim_time_s
            action()
    vehicle._step = step_then_act
    return called


class Stalling:
    """The policy, with one stall of `stall_s` (wall time) at tick `at_tick`: a busy machine at its worst."""

    def __init__(self, policy, at_tick: int, stall_s: float):
        self.policy, self.at_tick, self.stall_s, self.ticks = policy, at_tick, stall_s, 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def run(self, obs, state):
        self.ticks += 1
        if self.ticks == self.at_tick:
            time.sleep(self.stall_s)
        return self.policy.run(obs, state)


def _fly_short(tmp_path, name, policy_wrapper=lambda p: p):
    course = parse_course(SHORT)
    with lockstep_flight(course) as (vehicle, link, policy, prof):
        start = time.monotonic()
        result = fly_course(link, policy_wrapper(policy), course, prof, str(tmp_path / name), status=Quiet(),
                            max_time_s=40)
        wall_s = time.monotonic() - start
        assert not vehicle.armed, "fly_course returns once the vehicle has landed and disarmed"
    data, meta = read_row_log(str(tmp_path / name))
    return result, data, meta, wall_s


def test_a_lockstep_flight_is_the_same_flight_bit_for_bit_even_with_the_runner_stalled(tmp_path):
    plain, data, meta, wall_s = _fly_short(tmp_path, "plain.csv")
    # 0.6 s without a tick: in real time the runner stops on its own stall (limit 0.5 s); in lockstep the
    # vehicle waits for it
    stalled, data2, _, _ = _fly_short(tmp_path, "stalled.csv", lambda p: Stalling(p, at_tick=300, stall_s=0.6))
    print(f"lockstep flight of SHORT: {plain.ticks} ticks ({plain.ticks / 100:.1f} s simulated) in {wall_s:.1f} s")
    assert plain.failsafe is None and plain.gates_passed == 2 and plain.missed_ticks == 0
    assert meta["link"]["clock"] == "lockstep"
    assert stalled.failsafe is None and stalled.ticks == plain.ticks
    for column in STATE_COLUMNS:
        assert np.array_equal(data[column], data2[column], equal_nan=True), column
    flight = np.array(data["phase"]) == "flight"
    assert np.allclose(np.diff(np.array(data["t_s"])[flight]), 0.01), "one tick per control period of sim time"


def test_the_link_timeout_counts_sim_time_in_lockstep(tmp_path):
    course = parse_course(SHORT)
    limits = Limits(stale_telemetry_s=2.0, link_timeout_s=0.5)     # link loss first: no message at all
    with lockstep_flight(course) as (vehicle, link, policy, prof):
        cut = at_sim_time(vehicle, 4.0, vehicle.cut_telemetry)
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=Quiet(), max_time_s=20,
                            limits=limits)
        vehicle.restore_telemetry()
    assert result.failsafe.startswith("link lost"), result.failsafe
    assert 0.45 <= result.failsafe_at_s - cut["t_s"] <= 0.55


def test_lost_setpoints_fire_the_vehicles_setpoint_timeout_in_sim_time(tmp_path):
    """The uplink loses every setpoint from 3 s of sim time on, while the clock ticks still arrive:
    the vehicle's GUID_TIMEOUT (0.5 s) fires in its sim time and the runner sees it leave GUIDED_NOGPS
    (for LAND: a PX4-like loss action; ArduPilot's own, hold in the mode, the runner cannot see).
    The hover policy flies: the racer's last rate command, which the vehicle holds for those 0.5 s,
    tilted it past the runner's 70 deg limit first (0.42 s after the loss)."""
    course = parse_course(SHORT)
    with lockstep_flight(course, "default.onnx", loss_action="land") as (vehicle, link, policy, prof):
        send, sent = link.master.mav.set_attitude_target_send, []

        def lossy_send(*args):
            if link.clock.now() < 3.0:
                sent.append(link.clock.now())
                send(*args)
        link.master.mav.set_attitude_target_send = lossy_send
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=Quiet(), max_time_s=20)
        assert vehicle.failsafe == "no valid setpoint for 0.5 s", result
        assert not vehicle.armed
    last_setpoint_s = sent[-1] + 0.01                       # it was flown from the step after it arrived
    assert 0.5 <= vehicle.failsafe_t_s - last_setpoint_s <= 0.52
    assert "left GUIDED_NOGPS for LAND" in result.failsafe, result.failsafe
    assert 0.0 <= result.failsafe_at_s - vehicle.failsafe_t_s <= 0.15     # its 10 Hz heartbeat says so



@pytest.mark.parametrize("extra", [["--connect", "udpin:127.0.0.1:14550", "--profile", "crazyflie21"],
                                   ["--autopilot", "betaflight"], ["--teleop"]])
def test_fly_lockstep_is_refused_where_the_built_in_vehicle_is_not_what_flies(extra, capsys):
    from skyloop.cli import main as skyloop
    assert skyloop(["fly", "--course", "hall", "--lockstep"] + extra) == 2
    assert "--lockstep is for the built-in simulated vehicle" in capsys.readouterr().err
