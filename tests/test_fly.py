"""End to end over loopback UDP: the flight runner flies the simulated MAVLink vehicle (flight/sitl/),
with the real pymavlink link, the shipped ONNX policies and the safety supervisor. Flights whose
subject is not real time run in lockstep (the runner's clock is the vehicle's sim time: machine
load changes nothing); their real-time twins carry @pytest.mark.timing."""
import json
import os
import re
import threading
import time

import numpy as np
import pytest

from flight.cli import default_policy
from flight.course import load_course, parse_course
from flight.link import LinkError, MavLink
from flight.connection import parse_connection
from flight.runner import PreflightError, fly_course
from flight.sitl import SitlVehicle
from tests.test_lockstep import at_sim_time
from policy_export import load_policy
from sim.profiles import load_profile
from skyloop.cli import main as skyloop
from skyloop.rowlog import read_row_log

# Two gates, a start away from the origin and facing north-west: catches ENU/NED and FLU/FRD mix-ups.
SHORT = {"format": "skyloop.course/1", "name": "short",
         "bounds_m": {"min": [-6, -6, 0], "max": [10, 8, 5]},
         "start": {"pos_enu_m": [3.0, 2.0, 0.0], "yaw_deg": 135.0}, "laps": 1,
         "gates": [{"centre_enu_m": [3.0, 6.0, 1.5], "yaw_deg": 90, "inner_size_m": 1.5},
                   {"centre_enu_m": [-2.0, 4.0, 1.5], "yaw_deg": 200, "inner_size_m": 1.5}]}


def landed_and_disarmed(vehicle, timeout_s=15.0):
    """On the ground and disarmed within timeout_s: wall time, or in lockstep the vehicle's time,
    advanced here (nobody else advances it once the runner is done)."""
    for _ in range(int(timeout_s / 0.1)):
        if not vehicle.armed and vehicle.state()["pos_enu_m"][2] < vehicle.ground_z_m + 0.1:
            return True
        vehicle.advance(0.1) if vehicle.lockstep else time.sleep(0.1)
    return False


@pytest.mark.parametrize("clock", ["lockstep", pytest.param("real time", marks=pytest.mark.timing)])
def test_fly_completes_the_hall_course_on_the_simulated_vehicle(tmp_path, capsys, monkeypatch, clock):
    import calibration.flight_plot as flight_plot
    drawn, plot_flight = {}, flight_plot.plot_flight

    def plot(log_path, png_path, course):
        drawn["course"] = course
        return plot_flight(log_path, png_path, course)
    monkeypatch.setattr(flight_plot, "plot_flight", plot)
    rc = skyloop(["fly", "--course", "hall", "--json", "--log", str(tmp_path)] + ["--lockstep"] * (clock == "lockstep"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, summary
    assert summary["gates_passed"] == summary["gates_total"] == 7 and summary["failsafe"] is None
    # (missed deadlines and tick times are real-time figures: scripts/bench_fly_load.py measures them)
    assert os.path.getsize(summary["picture"]) > 20_000
    data, meta = read_row_log(summary["log"])
    assert meta["link"]["clock"] == clock
    # the built-in vehicle reports positions from where it started (as with GPS): the hall, whose start is
    # (-14, -8), is placed there, and the picture shows the course as flown
    assert meta["course_frame"] == "start" and meta["course_offset_enu_m"] == pytest.approx([14.0, 8.0, 0.0], abs=0.05)
    assert [data[f"pos_enu_m_{a}"][0] for a in "xyz"] == pytest.approx([0.0, 0.0, 0.0], abs=0.05)
    assert drawn["course"].start_pos_enu_m == pytest.approx(meta["course"]["start"]["pos_enu_m"], abs=0.05)
    assert drawn["course"].start_pos_enu_m == pytest.approx([0.0, 0.0, 0.0], abs=0.05)
    control = np.array(data["phase"]) != "landing"          # then the landing, logged until disarmed
    assert control.sum() == summary["ticks"] and meta["ended"] == "completed"
    assert data["phase"][-1] == "landing" and data["armed"][-1] == 0
    assert meta["course"]["name"] == "hall" and meta["gates_passed"] == 7
    from pymavlink import mavutil
    tlog = mavutil.mavlink_connection(summary["log"].replace(".csv", ".tlog"))
    kinds = set()
    while (msg := tlog.recv_match()) is not None:
        kinds.add(msg.get_type())
    assert {"SET_ATTITUDE_TARGET", "LOCAL_POSITION_NED", "HEARTBEAT", "COMMAND_ACK"} <= kinds   # both directions
    # the sim's one-step prediction of the vehicle (the same sim here) is within a centimetre
    shadow = np.stack([data[f"shadow_pos_enu_m_{a}"][control] for a in "xyz"], 1)[:-1]
    flown = np.stack([data[f"pos_enu_m_{a}"][control] for a in "xyz"], 1)[1:]
    assert np.median(np.linalg.norm(shadow - flown, axis=1)) < 0.01


@pytest.mark.parametrize("course,laps,gates,max_s", [("hall", 1, 7, 35.0), ("race7", 3, 21, 90.0)])
def test_fly_races_the_shipped_generalist_in_race_mode_where_the_hover_policy_follows_a_carrot(tmp_path, capsys, course,
                                                                                             laps, gates, max_s):
    """`fly` with no --policy flies the generalist, and it sees the next gates (race mode): the fpv5
    flies the hall's gates 1 to 7 in under 35 s (as the runner's lap_time_s, 30.8 s in the README; the
    hover policy's sliding target: 35.7 s measured, 35-39 s) and all 21 gates of race7's 3 laps, its
    split-S included (81 s; the hover policy about 34 s a lap), within the default 70 deg tilt limit."""
    argv = ["fly", "--course", course, "--laps", str(laps), "--profile", "fpv5", "--lockstep",
            "--no-plot", "--json", "--max-time", "120", "--log", str(tmp_path)]
    assert skyloop(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["gates_passed"] == gates and summary["failsafe"] is None, summary
    assert summary["lap_time_s"] < max_s, summary


@pytest.mark.parametrize("flag,value", [("--max-tilt", "120"), ("--max-tilt", "nan"), ("--laps", "0"), ("--laps", "1.5")])
def test_fly_refuses_a_tilt_limit_or_laps_out_of_range(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        skyloop(["fly", "--course", "race7", flag, value, "--dry-run"])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("autopilot,mode,profile", [("px4", "motor", "fpv5"), ("ardupilot", "ctbr", "camera15")])
def test_rotated_offset_start_and_both_action_modes(tmp_path, autopilot, mode, profile, vehicle_and_link,
                                                   quiet_status):
    course = parse_course(SHORT)
    with vehicle_and_link(course, profile, autopilot, mode, lockstep=True) as (vehicle, link, policy, prof):
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=quiet_status, max_time_s=40)
        assert result.failsafe is None and result.gates_passed == 2
        assert landed_and_disarmed(vehicle)
    assert link.autopilot == autopilot
    data, _ = read_row_log(str(tmp_path / "f.csv"))
    last_tick = data["phase"].index("landing") - 1
    assert data["mode"][last_tick] == ("OFFBOARD" if autopilot == "px4" else "GUIDED_NOGPS")
    # what the vehicle reported (NED, FRD) and what the sim holds (ENU, FLU) agree after the frame change
    assert np.allclose([data[f"pos_enu_m_{a}"][0] for a in "xyz"], SHORT["start"]["pos_enu_m"], atol=0.05)


def _fly_and_cut_telemetry(tmp_path, vehicle_and_link, quiet_status, lockstep=False) -> float:
    """Flies SHORT, cuts the telemetry 4 s in; checks the failsafe and the landing; returns the time
    from the cut to the failsafe on the runner's clock (wall; in lockstep sim time)."""
    course = parse_course(SHORT)
    with vehicle_and_link(course, lockstep=lockstep) as (vehicle, link, policy, prof):
        if lockstep:
            cut = at_sim_time(vehicle, 4.0, vehicle.cut_telemetry)
        else:
            cut = {}

            def cut_after_takeoff():
                cut["t_s"] = time.monotonic()
                vehicle.cut_telemetry()
            timer = threading.Timer(4.0, cut_after_takeoff)
            timer.start()
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=quiet_status, max_time_s=20)
        if not lockstep:
            timer.join()
        assert "stale telemetry" in result.failsafe
        assert vehicle.mode == "LAND"             # it heard LAND: the uplink still works
        assert landed_and_disarmed(vehicle)
        vehicle.restore_telemetry()
    _, meta = read_row_log(str(tmp_path / "f.csv"))
    assert meta["ended"].startswith("failsafe: stale telemetry")
    return result.failsafe_at_s - cut["t_s"]


def test_lost_telemetry_fires_the_failsafe_and_the_vehicle_lands(tmp_path, vehicle_and_link, quiet_status):
    # in lockstep the stale-telemetry limit (0.25 s) counts the vehicle's time: it fires on time on any machine
    latency_s = _fly_and_cut_telemetry(tmp_path, vehicle_and_link, quiet_status, lockstep=True)
    assert 0.2 <= latency_s <= 0.3


@pytest.mark.timing
def test_lost_telemetry_fires_the_failsafe_within_half_a_second(tmp_path, vehicle_and_link, quiet_status):
    latency = _fly_and_cut_telemetry(tmp_path, vehicle_and_link, quiet_status)
    print(f"telemetry cut -> failsafe: {latency * 1000:.0f} ms")
    assert 0.2 <= latency <= 0.5


def test_the_vehicles_own_failsafe_ends_the_flight_at_once(tmp_path, vehicle_and_link, quiet_status):
    # a nearly flat battery: the vehicle's critical-battery failsafe switches it to LAND mid-course
    course = parse_course(SHORT)
    with vehicle_and_link(course, battery_soc=0.10, lockstep=True) as (vehicle, link, policy, prof):
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=quiet_status, max_time_s=20)
        assert vehicle.failsafe.startswith("battery critical")
        assert "left GUIDED_NOGPS for LAND" in result.failsafe
        assert landed_and_disarmed(vehicle)
    data, meta = read_row_log(str(tmp_path / "f.csv"))
    assert meta["ended"].startswith("failsafe: the vehicle left")
    last_tick = data["phase"].index("landing") - 1
    assert data["t_s"][last_tick] < 15.0, "the runner stopped commanding once the vehicle took over"


def test_geofence_breach_fires_the_failsafe(tmp_path, vehicle_and_link, quiet_status):
    course = parse_course(SHORT)
    with vehicle_and_link(course, lockstep=True) as (vehicle, link, policy, prof):
        # from 3 s on, an updraft over twice the 27 g drone's weight: even with its motors off it rises to the
        # ceiling; it dies down once the vehicle lands
        step, landing = vehicle._step, []

        def step_in_updraft():
            step()
            if vehicle.mode == "LAND":
                landing.append(vehicle.sim_time_s)
            vehicle.set_wind([0.0, 0.0, 0.6 if vehicle.sim_time_s >= 3.0 and not landing else 0.0])
        vehicle._step = step_in_updraft
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=quiet_status, max_time_s=20)
        assert result.failsafe.startswith("geofence")
        assert landed_and_disarmed(vehicle)


def test_ctrl_c_lands(tmp_path, vehicle_and_link, quiet_status):
    import _thread
    import signal
    course = parse_course(SHORT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with vehicle_and_link(course, lockstep=True) as (vehicle, link, policy, prof):
            at_sim_time(vehicle, 3.0, _thread.interrupt_main)
            result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=quiet_status, max_time_s=20)
            assert result.failsafe.startswith("Ctrl-C: landing")
            assert landed_and_disarmed(vehicle, timeout_s=2.0)    # fly_course returns once it is down
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fly_on_the_built_in_vehicle_with_course_frame_local_is_refused_naming_both_positions(tmp_path, capsys):
    """The built-in vehicle's origin is where it starts (as ArduPilot's and PX4's with GPS): by default the
    course is placed there; --course-frame local asks the vehicle to stand on the hall's start (-14, -8),
    which it does not report, so the dry run refuses, naming both positions."""
    assert skyloop(["fly", "--course", "hall", "--dry-run", "--log", str(tmp_path)]) == 0
    assert "ready to fly" in capsys.readouterr().out
    assert skyloop(["fly", "--course", "hall", "--dry-run", "--course-frame", "local", "--log", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT ready" in out and "--course-frame start" in out
    assert re.search(r"the vehicle reports \[-?0\.0, -?0\.0, -?0\.0\] m", out), out
    assert "starts at [-14.0, -8.0, 0.0] m: 16.12 m apart" in out, out


def test_the_view_and_the_teleop_page_get_the_course_placed_at_the_built_in_vehicle(tmp_path, capsys, monkeypatch):
    """What the view draws and the teleop page fences and targets is the course in the vehicle's frame:
    the hall moved to the built-in vehicle's start (its (0, 0, 0)), as fly_course flies it."""
    import flight.cli as cli
    hall, seen = load_course("hall"), {}

    def view(args, stack, policy_path, policy, profile, course):
        seen["view"] = course

    def teleop(args, stack, link, policy, course, placed, course_frame, *rest):
        seen.update(teleop=placed, unplaced=course, frame=course_frame)
        return None                                        # nothing flew
    monkeypatch.setattr(cli, "_view", view)
    monkeypatch.setattr(cli, "_teleop", teleop)
    assert skyloop(["fly", "--teleop", "--course", "hall", "--log", str(tmp_path)]) == 0
    offset = np.array([14.0, 8.0, 0.0])
    assert seen["frame"] == "start" and seen["unplaced"].start_pos_enu_m.tolist() == hall.start_pos_enu_m.tolist()
    for course in (seen["view"], seen["teleop"]):
        assert course.start_pos_enu_m == pytest.approx([0.0, 0.0, 0.0], abs=0.05)
        assert course.bounds_min_enu_m == pytest.approx(hall.bounds_min_enu_m + offset, abs=0.05)
        assert course.gates[0].centre_enu_m == pytest.approx(hall.gates[0].centre_enu_m + offset, abs=0.05)


def test_ardupilot_without_thrust_means_thrust_is_refused_with_the_fix(free_udp_port):
    course = parse_course(SHORT)
    port = free_udp_port()
    with SitlVehicle("crazyflie21", f"udpout:127.0.0.1:{port}", "ardupilot") as vehicle:
        vehicle.params["GUID_OPTIONS"] = 0.0
        with pytest.raises(LinkError, match="param set GUID_OPTIONS 8"):
            MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot").open()
        assert not vehicle.armed
    del course


def test_a_policy_whose_contract_does_not_match_is_refused_before_arming(tmp_path, capsys):
    import onnx
    model = onnx.load(default_policy("ctbr"))
    for prop in model.metadata_props:
        if prop.key == "obs_size":
            prop.value = "26"
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    rc = skyloop(["fly", "--course", "hall", "--policy", str(bad), "--log", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "tampered.onnx" in err and "INFO flight.link" not in err   # refused before any connection


def test_a_malformed_course_is_a_clear_error_before_connecting(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SHORT, "gates": [{"centre_enu_m": [1, 2], "yaw_deg": 0, "inner_size_m": 1}]}))
    assert skyloop(["fly", "--course", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "gates[0].centre_enu_m: expected 3 finite numbers" in err and "simulated" not in err


def test_preflight_refuses_a_vehicle_outside_the_geofence(tmp_path, quiet_status, free_udp_port):
    # the start lies inside the box but within its 0.5 m margin; the vehicle stands 0.8 m from it, just
    # past the wall: near enough for the course-origin rule (1 m), outside the fence
    course = parse_course({**SHORT, "start": {"pos_enu_m": [9.6, 2.0, 0.0], "yaw_deg": 0}})
    port = free_udp_port()
    prof = load_profile("crazyflie21")
    with SitlVehicle(prof, f"udpout:127.0.0.1:{port}", "ardupilot", np.array([10.4, 2.0, 0.0]),
                     origin="course") as vehicle:
        with MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot") as link:
            with pytest.raises(PreflightError, match="outside the course's geofence"):
                fly_course(link, load_policy(default_policy("ctbr")), course, prof, str(tmp_path / "f.csv"),
                           status=quiet_status)
        assert not vehicle.armed


def test_hall_course_file_is_the_one_flown():
    assert load_course("hall").name == "hall"


def test_flies_through_mavproxy_and_its_tlog_reads_back(tmp_path, capsys, free_udp_port):
    import shutil
    import subprocess
    import sys
    from pymavlink import mavutil
    mavproxy = shutil.which("mavproxy.py") or os.path.join(os.path.dirname(sys.executable), "mavproxy.py")
    if not os.path.exists(mavproxy):
        pytest.skip("MAVProxy is not installed (pip install -e '.[test]' installs it)")
    course_path = tmp_path / "short.json"
    course_path.write_text(json.dumps(SHORT))
    p_vehicle, p_runner = free_udp_port(), free_udp_port()
    tlog = tmp_path / "session.tlog"
    with SitlVehicle("crazyflie21", f"udpout:127.0.0.1:{p_vehicle}", "ardupilot", SHORT["start"]["pos_enu_m"],
                     np.radians(SHORT["start"]["yaw_deg"]), origin="course") as vehicle:     # mocap-like: --connect is local
        proxy = subprocess.Popen([sys.executable, mavproxy, f"--master=udpin:127.0.0.1:{p_vehicle}",
                                  f"--out=udpout:127.0.0.1:{p_runner}", "--daemon", "--non-interactive",
                                  f"--logfile={tlog}", f"--state-basedir={tmp_path}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            rc = skyloop(["fly", "--course", str(course_path), "--connect", f"udpin:127.0.0.1:{p_runner}",
                          "--profile", "crazyflie21", "--json", "--no-plot", "--log", str(tmp_path)])
        finally:
            proxy.terminate()
            proxy.wait(10)
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and summary["gates_passed"] == 2 and summary["failsafe"] is None
        assert landed_and_disarmed(vehicle)
    log = mavutil.mavlink_connection(str(tlog))
    kinds = {}
    while (msg := log.recv_match()) is not None:
        kinds[msg.get_type()] = kinds.get(msg.get_type(), 0) + 1
    assert kinds.get("SET_ATTITUDE_TARGET", 0) > 200 and kinds.get("LOCAL_POSITION_NED", 0) > 100
