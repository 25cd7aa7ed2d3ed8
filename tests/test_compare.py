"""Sim vs real (`skyloop compare`): the flight-log readers on real files, the three comparisons on a
flight with a known truth (flown by the sim itself), an own flight flown through the simulated
MAVLink vehicle, broken logs, and the real-data goals on the Crazyflie figure-8."""
import json
import os

import numpy as np
import pytest

from calibration.compare import compare_flight, model_check, replay, simulate_flight
from calibration.compare_report import plot_trajectory
from calibration.flightlogs import FlightLogError, read_flight_log
from skyloop.frames import motors_from_sim_order, motors_to_sim_order
from sim.profiles import Profile, load_profile
from skyloop.cli import main as skyloop

CF_FLIGHT = "cf21_brushed_jana00_fixedFrequency.csv"
ARDUPILOT = "erle_pxf_copter_5-12-2014_218.BIN"
PX4 = "pyulog_sample.ulg"
G = 9.80665


def perturbed(profile: Profile, **params) -> Profile:
    p = profile.nominal()
    p.params.update(params)
    return p


# ---------------------------------------------------------------- readers on real files

def test_crazyflie_csv_reads_in_si_enu_flu_with_motors_in_sim_order(real_data):
    log = real_data(CF_FLIGHT)
    traj = read_flight_log(log, "crazyflie_usd")
    assert traj.n == 4643 and traj.t_s[0] == 0.0 and 9.1 < traj.t_s[-1] < 9.2
    assert np.median(np.diff(traj.t_s)) == pytest.approx(0.002)
    assert 0.65 < np.median(traj.pos_enu_m[:, 2]) < 0.75                  # the figure-8 at 0.7 m: z up, positive
    assert np.median(traj.accel_flu_m_s2[:, 2]) == pytest.approx(G, rel=0.03)   # hovering reads +g on body z
    assert np.allclose(np.linalg.norm(traj.quat_wxyz, axis=1), 1.0) and np.median(traj.quat_wxyz[:, 0]) > 0.99
    assert 1800 < np.median(traj.rotor_rad_s) < 2300                      # rpm -> rad/s
    assert np.all(np.abs(traj.omega_flu_rad_s) < 1.1)                     # deg/s -> rad/s (60 deg/s at most)
    assert 0.55 < np.median(traj.motor_throttle) < 0.85 and 3.5 < np.median(traj.battery_v) < 3.7
    # Crazyflie M1 FR, M2 BR, M3 BL, M4 FL -> sim FR, BL, FL, BR: the sim's 2nd motor is the log's rpm.m3
    raw = np.genfromtxt(log, delimiter=",", names=True, max_rows=5)
    assert traj.rotor_rad_s[0, 1] == pytest.approx(raw["rpmm3"][0] * 2 * np.pi / 60)
    assert list(motors_to_sim_order(["M1", "M2", "M3", "M4"], "crazyflie")) == ["M1", "M3", "M4", "M2"]
    assert list(motors_from_sim_order(["M1", "M3", "M4", "M2"], "crazyflie")) == ["M1", "M2", "M3", "M4"]
    assert traj.meta["mass_kg"] == 0.0347
    assert any("gap of 14 ms" in i for i in traj.issues) and traj.segment.max() == 1   # split there, not bridged


def test_ardupilot_bin_and_px4_ulog_load_and_draw_a_trajectory(tmp_path, real_data):
    ap = read_flight_log(real_data(ARDUPILOT))
    assert ap.log_format == "ardupilot dataflash" and 330 < ap.t_s[-1] < 340
    assert np.nanmax(ap.pos_enu_m[:, 2]) > 8.0 and np.nanmedian(ap.pos_enu_m[:, 2]) > 2.0   # flying: up is +z
    assert np.nanmedian(ap.accel_flu_m_s2[:, 2]) == pytest.approx(G, rel=0.05)              # FRD -g -> FLU +g
    throttle = ap.motor_throttle[np.isfinite(ap.motor_throttle)]
    assert np.all((throttle >= 0) & (throttle <= 1)) and np.median(throttle) > 0.3          # PWM us -> 0..1
    assert any("estimator not initialised" in i for i in ap.issues)     # EKF zeros before it had a position
    px4 = read_flight_log(real_data(PX4))
    assert px4.log_format == "px4 ulog" and px4.n > 6000
    assert np.nanmedian(px4.accel_flu_m_s2[:, 2]) == pytest.approx(G, rel=0.05)   # on the ground, FLU: +g up
    assert np.allclose(np.linalg.norm(px4.quat_wxyz, axis=1), 1.0)
    for traj, name in ((ap, "ap.png"), (px4, "px4.png")):
        assert os.path.getsize(plot_trajectory(traj, str(tmp_path / name))) > 20_000


# ---------------------------------------------------------------- a flight with a known truth

@pytest.fixture(scope="module")
def synthetic():
    """2 s at 500 Hz of the nominal Crazyflie flown open loop: hover plus small motor wiggles."""
    prof = load_profile("crazyflie21").nominal()
    t = np.arange(1000) / 500.0
    hover = 2 * 0.44 - 1
    actions = np.full((1000, 4), hover) + 0.02 * np.sin(2 * np.pi * 3 * t)[:, None] * [1.0, 1.0, 1.0, 1.0]
    actions[:, [0, 3]] += 0.004 * np.sin(2 * np.pi * 2 * t)[:, None]          # a small roll / pitch wobble
    from calibration.compare import _omega_to_throttle
    w_hover = np.sqrt(prof.params["mass_kg"] * G / (4 * prof.params["kf_n_per_rad2s2"]))
    actions += 2 * _omega_to_throttle(prof.params, w_hover) - 1 - hover     # centred on the hover command
    return prof, simulate_flight(prof, actions, 500.0, start_pos_enu_m=(0, 0, 2))


def test_a_sim_flight_compares_to_itself_with_almost_no_error(synthetic):
    prof, traj = synthetic
    m, _ = model_check(traj, prof)
    mc = m["model_check"]
    assert mc["r2"]["z"] > 0.99 and mc["rmse_m_s2"]["z"] < 0.02
    assert abs(m["hover_closure"]["closure"] - 1.0) < 0.01
    rp, _ = replay(traj, prof, every_s=0.25)
    assert rp["windows"]["1"] >= 3 and rp["error_m"]["1"] < 1e-4 and rp["attitude_error_deg"]["1"] < 1e-3


def test_a_perturbed_profile_shows_the_expected_error(synthetic):
    prof, traj = synthetic
    strong = perturbed(prof, kf_n_per_rad2s2=1.1 * prof.params["kf_n_per_rad2s2"])
    m, _ = model_check(traj, strong)
    assert m["hover_closure"]["closure"] == pytest.approx(1.1, abs=0.01)
    assert m["model_check"]["bias_m_s2"]["z"] == pytest.approx(0.1 * G, rel=0.1)   # 10 % more thrust than weight
    rp, _ = replay(traj, strong, every_s=0.25, translational=True)
    assert rp["error_m"]["1"] == pytest.approx(0.5 * 0.1 * G * 1.0 ** 2, rel=0.25)  # s = a t^2 / 2


# ---------------------------------------------------------------- broken logs

def test_truncated_and_corrupt_logs_say_where_and_keep_what_was_read(tmp_path, capsys, real_data):
    lines = open(real_data(CF_FLIGHT), encoding="utf-8").read().splitlines()
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(lines[:1200]) + "\n" + lines[1200][:25])        # the writer died mid-row
    with pytest.raises(FlightLogError, match="truncated at line 1201") as err:
        read_flight_log(str(cut), "crazyflie_usd")
    assert err.value.partial.n == 1199
    rc = skyloop(["compare", str(cut), "--mapping", "crazyflie_usd", "--profile", "crazyflie21", "--json",
                  "--no-closed-loop"])
    captured = capsys.readouterr()
    assert rc == 1 and "truncated at line 1201" in json.loads(captured.out)["log"]["broken"]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:700] + ["804999,\x00\x17garbage" + "," * 24] + lines[700:]) + "\n")
    with pytest.raises(FlightLogError, match="corrupt at line 701") as err:
        read_flight_log(str(bad), "crazyflie_usd")
    assert err.value.partial.n == 699
    out = tmp_path / "report"
    rc = skyloop(["compare", str(bad), "--mapping", "crazyflie_usd", "--profile", "crazyflie21", "-o", str(out)])
    assert rc == 1 and "line 701" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "line 701" in metrics["log"]["broken"] and metrics["log"]["samples"] == 699
    cut_mid_number = tmp_path / "cut2.csv"
    cut_mid_number.write_text("\n".join(lines[:1200]) + "\n" + lines[1200][:-3])   # a full row count, no line end
    with pytest.raises(FlightLogError, match="no line end") as err:
        read_flight_log(str(cut_mid_number), "crazyflie_usd")
    assert err.value.partial.n == 1199
    garbage = tmp_path / "x.ulg"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(FlightLogError, match="not a readable ULog"):
        read_flight_log(str(garbage))
    with pytest.raises(FlightLogError, match="--mapping"):
        read_flight_log(str(cut))


@pytest.mark.parametrize("name, keep", [("erle_pxf_copter_5-12-2014_218.BIN", 1_000_003), ("pyulog_sample.ulg", 200_000)])
def test_a_binary_log_cut_off_mid_message_is_a_break_not_a_clean_end(tmp_path, name, keep, real_data):
    path = real_data(name)
    whole = read_flight_log(path)
    cut = tmp_path / name
    cut.write_bytes(open(path, "rb").read()[:keep])
    with pytest.raises(FlightLogError, match="truncated at byte") as err:
        read_flight_log(str(cut))
    assert 10 < err.value.partial.n < whole.n


def test_a_tlog_cut_off_mid_message_is_a_break(tmp_path):
    import struct
    os.environ.setdefault("MAVLINK20", "1")
    from pymavlink.dialects.v20 import ardupilotmega as mavlink
    mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    data = b"".join(struct.pack(">Q", int(1.7e15 + k * 1e4)) + mav.attitude_encode(k * 10, 0.01 * k, 0, 0.1, 0, 0, 0).pack(mav)
                    for k in range(200))
    whole, cut = tmp_path / "whole.tlog", tmp_path / "cut.tlog"
    whole.write_bytes(data)
    cut.write_bytes(data[:-7])
    assert read_flight_log(str(whole)).n == 200
    with pytest.raises(FlightLogError, match="truncated") as err:
        read_flight_log(str(cut))
    assert err.value.partial.n == 199


# ---------------------------------------------------------------- the real-data goals

def test_crazyflie_figure8_with_the_calibrated_profile_beats_the_datasheet_one(tmp_path, real_data):
    traj = read_flight_log(real_data(CF_FLIGHT), "crazyflie_usd")
    calibrated = load_profile("crazyflie21")
    # kf per logged rotor speed from this flight (held out in time: see the next test), thrust per command the stand's
    assert calibrated.source["kf_n_per_rad2s2"]["file"] == CF_FLIGHT
    assert calibrated.source["kf_n_per_rad2s2"]["stand_cross_check"]["file"] == "imrc_bitcraze2021_cf2.1-stock-prop.csv"
    # what the profile held before calibration (Foerster 2015's Crazyflie 2.0 identification)
    datasheet = perturbed(calibrated, kf_n_per_rad2s2=2.88e-8, throttle_to_omega_rad_s=[426.0, 1843.0, 0.0],
                          omega_max_rad_s=2600.0)
    datasheet.name = "datasheet"
    results, summary = compare_flight(traj, [calibrated, datasheet])
    cal, old = summary["by_profile"]["crazyflie21"], summary["by_profile"]["datasheet"]
    assert summary["mass_kg"] == 0.0347
    print(json.dumps({k: summary[k] for k in ("model_check", "hover_closure", "replay", "replay_translational")}))
    assert abs(cal["hover_closure"]["error_pct"]) < 2.0                     # the goal: closure within 2 %
    assert abs(old["hover_closure"]["error_pct"]) > 30.0
    assert cal["model_check"]["rmse_m_s2"]["z"] < 0.25 * old["model_check"]["rmse_m_s2"]["z"]
    assert cal["model_check"]["r2"]["x"] > 0.7                              # the horizontal thrust tilt is right
    assert cal["replay_translational"]["error_m"]["1"] < 0.5 * old["replay_translational"]["error_m"]["1"]
    assert cal["replay_translational"]["error_m"]["1"] <= 0.10   # the goal (measured 0.095 m; 0.24 m before the flight fit)
    from calibration.compare_report import write_report
    paths = write_report(traj, results, summary, str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<img" in page and 'src="http' not in page
    assert {"trajectory.png", "model_check.png", "replay.png", "metrics.json", "report.html"} <= \
        {os.path.basename(p) for p in paths}


def test_a_kf_fitted_on_the_first_half_of_a_flight_closes_the_hover_it_did_not_see(real_data):
    """The crazyflie21 kf comes from the jana00 flight: fitted on its first 5.5 s only, it must still
    close the hover window later in the flight (7.75..8.75 s) within 2 %, as the whole-flight fit does."""
    import dataclasses

    from calibration.flightid import identify_flight
    traj = read_flight_log(real_data(CF_FLIGHT), "crazyflie_usd")
    keep = traj.t_s < 5.5
    first = dataclasses.replace(traj, **{f.name: getattr(traj, f.name)[keep] for f in dataclasses.fields(traj)
                                         if isinstance(getattr(traj, f.name), np.ndarray)})
    profile = load_profile("crazyflie21")
    ident = identify_flight(first, profile, traj.meta["mass_kg"])
    kf = ident.fits["kf_n_per_rad2s2"].value
    assert abs(kf / profile.params["kf_n_per_rad2s2"] - 1) < 0.02      # the profile's whole-flight fit agrees
    result, _ = model_check(traj, perturbed(profile, kf_n_per_rad2s2=kf), mass_kg=traj.meta["mass_kg"])
    hover = result["hover_closure"]
    assert hover["window_s"][0] >= 5.5                                   # a hover the fit did not see
    assert abs(hover["closure"] - 1) < 0.02
    # the drag in body x / y from the same half: the attitude-forced replay of the windows after it within 0.10 m at 1 s
    drag = ident.fits["drag_n_per_m_s"].value
    assert all(abs(d / p - 1) < 0.2 for d, p in zip(drag[:2], profile.params["drag_n_per_m_s"][:2]))
    fitted = perturbed(profile, kf_n_per_rad2s2=kf, drag_n_per_m_s=drag)
    _, series = replay(traj, fitted, mass_kg=traj.meta["mass_kg"], translational=True)
    late = traj.t_s[series["starts"]] >= 5.5
    assert late.sum() >= 4 and np.nanmedian(series["per_window"]["1"][late]) < 0.10
    # the stand's kf (another unit, its own rpm sensors) closes the same hover only to ~5 %: the reason for the change
    stand_kf = profile.source["kf_n_per_rad2s2"]["stand_cross_check"]["value"]
    stand, _ = model_check(traj, perturbed(profile, kf_n_per_rad2s2=stand_kf), mass_kg=traj.meta["mass_kg"])
    assert stand["hover_closure"]["closure"] > 1.03


# ---------------------------------------------------------------- our own flight, flown through the simulated vehicle

HOP = {"format": "skyloop.course/1", "name": "hop", "bounds_m": {"min": [-4, -4, 0], "max": [4, 6, 4]},
       "start": {"pos_enu_m": [0.5, 0.0, 0.0], "yaw_deg": 90.0}, "laps": 1,
       "gates": [{"centre_enu_m": [0.5, 2.0, 1.0], "yaw_deg": 90, "inner_size_m": 1.5},
                 {"centre_enu_m": [-1.0, 3.5, 1.2], "yaw_deg": 180, "inner_size_m": 1.5}]}


@pytest.fixture(scope="module")
def own_flight(tmp_path_factory, free_udp_port, quiet_status):
    """A short flight of the shipped policy on the simulated vehicle over loopback, with its flight
    log and .tlog. Real time, as `fly` runs it (the runner does not drive a lockstep vehicle); a
    machine so loaded that the link-loss failsafe fires gets one more try."""
    from flight.cli import default_policy
    from flight.connection import parse_connection
    from flight.course import parse_course
    from flight.link import MavLink
    from flight.runner import fly_course
    from flight.sitl import SitlVehicle
    from policy_export import load_policy
    out = tmp_path_factory.mktemp("own")
    course, prof = parse_course(HOP), load_profile("crazyflie21")
    policy_path = default_policy("ctbr")
    policy = load_policy(policy_path, action_modes=("ctbr",))
    rate_max = policy.metadata["action_scaling"].get("rate_max_rad_s", prof.params["rate_max_rad_s"])
    port = free_udp_port()
    # lockstep (the runner's clock is the vehicle's sim time): the log is the same on a busy machine
    with SitlVehicle(prof, f"udpout:127.0.0.1:{port}", "ardupilot", course.start_pos_enu_m, course.start_yaw_rad,
                     origin="course", lockstep=True):      # the log in the course's frame, as under mocap
        with MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot", "ctbr", rate_max,
                     tlog_path=str(out / "hop.tlog"), lockstep=True) as link:
            result = fly_course(link, policy, course, prof, str(out / "hop.csv"), status=quiet_status,
                                max_time_s=20, meta={"policy": policy_path})
    assert result.failsafe is None and result.gates_passed == 2
    return out


def test_own_flight_log_and_its_tlog_read_with_z_up(own_flight):
    own = read_flight_log(str(own_flight / "hop.csv"))
    assert own.log_format == "skyloop" and own.meta["course"]["name"] == "hop" and own.action.shape == (own.n, 4)
    assert np.nanmax(own.pos_enu_m[:, 2]) > 0.8 and own.pos_enu_m[0, 2] < 0.1     # took off: z up, positive
    assert np.allclose(own.pos_enu_m[0, :2], HOP["start"]["pos_enu_m"][:2], atol=0.05)
    tlog = read_flight_log(str(own_flight / "hop.tlog"))
    assert tlog.log_format == "mavlink tlog" and np.nanmax(tlog.pos_enu_m[:, 2]) > 0.8
    assert np.nanmedian(tlog.accel_flu_m_s2[:, 2]) == pytest.approx(G, rel=0.05)
    assert np.nanmax(tlog.rotor_rad_s) > 1000                                    # ESC telemetry rpm -> rad/s
    m, _ = model_check(tlog, load_profile("crazyflie21"))                        # the vehicle IS the sim: it closes
    # in flight (thrust from the ESC rpm vs mass times the accelerometer), not the calmest second's rpm vs
    # weight: the shipped racer never hovers on this hop (that second brakes at 1.3 m/s and reads 5 % off)
    assert m["model_check"]["r2"]["z"] > 0.95 and abs(m["model_check"]["thrust_closure_in_flight"] - 1) < 0.01
    assert m["hover_closure"]["samples"] >= 5


def test_compare_cli_on_an_own_flight_reports_all_three_comparisons(own_flight, tmp_path, capsys):
    out = tmp_path / "report"
    rc = skyloop(["compare", str(own_flight / "hop.csv"), "--profile", "crazyflie21", "-o", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["model_check"]["r2"]) == {"x", "y", "z"} and summary["hover_closure"]["closure"] > 0
    assert set(summary["replay"]["error_m"]) == {"0.1", "0.5", "1"} and summary["replay"]["error_m"]["0.1"] < 0.05
    cl = summary["closed_loop"]
    assert cl["real"]["gates_passed"] == cl["sim"]["gates_passed"] == 2              # same policy, same course
    assert all(abs(d) < 0.5 for d in cl["gate_time_diff_s"]) and cl["path_error_m"]["median"] < 0.3
    assert json.loads((out / "metrics.json").read_text())["closed_loop"] == cl
    assert (out / "closed_loop.png").stat().st_size > 20_000
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_compare_help_and_a_missing_mapping_are_clear(capsys, real_data):
    with pytest.raises(SystemExit) as exc:
        skyloop(["compare", "--help"])
    assert exc.value.code == 0 and "--mapping" in capsys.readouterr().out
    assert skyloop(["compare", real_data(CF_FLIGHT), "--profile", "crazyflie21", "--mapping", "nosuch"]) == 1
    assert "shipped mappings: ['crazyflie_sysid', 'crazyflie_usd']" in capsys.readouterr().err


def test_a_vehicle_that_never_left_the_ground_is_not_model_checked_and_says_why(capsys, real_data):
    """The PX4 sample is on the ground and disarmed: no model check, no replay, and each says why."""
    rc = skyloop(["compare", real_data(PX4), "--profile", "fpv5", "--json", "--no-closed-loop"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["model_check"] is None and summary["replay"] is None
    assert "on the ground or with the motors off" in summary["skipped"]["model_check"]
    assert "on the ground or with the motors off" in summary["skipped"]["replay"]


def test_near_hover_the_model_check_says_which_figures_mean_something(real_data):
    """jana00's vertical specific force varies by 2.5 % of g: with the stand's kf the model sits ~5 % above
    it, R^2 z is the offset's, and the metrics say so; with the profile's (flight) kf the offset is gone and
    R^2 z is the shape's. Bias and NRMSE are there per axis."""
    traj = read_flight_log(real_data(CF_FLIGHT), "crazyflie_usd")
    profile = load_profile("crazyflie21")
    stand = perturbed(profile, kf_n_per_rad2s2=profile.source["kf_n_per_rad2s2"]["stand_cross_check"]["value"])
    m, _ = model_check(traj, stand, mass_kg=0.0347)
    mc = m["model_check"]
    assert set(mc["nrmse"]) == set(mc["bias_m_s2"]) == {"x", "y", "z"}
    assert mc["supports"]["z"].startswith("bias, rmse and r2_offset_removed") and mc["supports"]["x"].startswith("r2")
    assert m["hover_closure"] is not None and "hover_closure_missing" not in mc
    flight, _ = model_check(traj, profile, mass_kg=0.0347)
    assert flight["model_check"]["supports"]["z"].startswith("r2")
    assert abs(flight["model_check"]["bias_m_s2"]["z"]) < 0.1 * abs(mc["bias_m_s2"]["z"])


def test_an_rpm_channel_reading_half_the_others_drops_the_rotor_speeds_and_says_which(tmp_path, real_data):
    lines = open(real_data(CF_FLIGHT), encoding="utf-8").read().splitlines()
    header = lines[0].split(",")
    k = header.index("rpm.m2")
    rows = []
    for n, line in enumerate(lines[1:]):
        cells = line.split(",")
        cells[k] = str(int(float(cells[k]) * (0.5 if n % 10 < 6 else 0.8)))   # half in 60 % of rows, 20 % low in the rest
        rows.append(",".join(cells))
    bad = tmp_path / "bad_rpm.csv"
    bad.write_text("\n".join([lines[0]] + rows) + "\n")
    assert read_flight_log(real_data(CF_FLIGHT), "crazyflie_usd").has("rotor_rad_s")
    traj = read_flight_log(str(bad), "crazyflie_usd")
    assert not traj.has("rotor_rad_s")
    assert any("faulty RPM channel" in i and "motor 4 (sim order)" in i for i in traj.issues)   # Crazyflie M2 = sim 4


def test_a_tlog_with_euler_attitude_and_scaled_imu_only_is_read(tmp_path):
    import struct
    os.environ.setdefault("MAVLINK20", "1")
    from pymavlink.dialects.v20 import ardupilotmega as mavlink
    mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    data = b""
    for k in range(100):
        t = struct.pack(">Q", int(1.7e15 + k * 1e4))
        data += t + mav.attitude_encode(k * 10, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0).pack(mav)
        data += t + mav.scaled_imu_encode(k * 10, 0, 0, -1000, 0, 0, 0, 0, 0, 0).pack(mav)  # 1 g up (FRD -z)
    path = tmp_path / "euler.tlog"
    path.write_bytes(data)
    traj = read_flight_log(str(path))
    assert traj.has("quat_wxyz") and traj.has("accel_flu_m_s2")
    assert np.allclose(np.nanmedian(traj.accel_flu_m_s2, axis=0), [0, 0, G], atol=1e-3)
    roll = np.degrees(2 * np.arctan2(traj.quat_wxyz[50, 1], traj.quat_wxyz[50, 0]))
    assert roll == pytest.approx(np.degrees(0.1), abs=0.01)
    assert any("ATTITUDE (euler" in i for i in traj.issues) and any("SCALED_IMU" in i for i in traj.issues)


def test_esc_status_without_telemetry_is_not_rotor_speed():
    from types import SimpleNamespace
    from calibration.flightlogs import _ulog_esc_rpm
    esc = SimpleNamespace(name="esc_status", multi_id=0, data={"esc_count": np.zeros(5), "timestamp": np.arange(5)})
    issues = []
    assert _ulog_esc_rpm(SimpleNamespace(data_list=[esc]), lambda *a, **k: np.zeros((5, 4)), issues) is None
    assert "esc_count is 0" in issues[0]
    esc.data["esc_count"] = np.full(5, 4)
    assert _ulog_esc_rpm(SimpleNamespace(data_list=[esc]), lambda *a, **k: np.zeros((5, 4)), issues) is None
    assert "every rpm reads 0" in issues[1]


# ---------------------------------------------------------------- free replay with the flight controller in the loop

def lee_flight(prof: Profile, seconds: float = 6.0, hz: float = 500.0):
    """The sim flown by the Lee controller (firmware gains) along a 2 m x 1 m figure-8 at 1 m, logged as a
    real flight would be: a closed-loop flight with a known truth."""
    import math
    from calibration.compare import _place, sim_env
    from calibration.lee_replay import LEE_GAINS, LeeController, mix
    env = sim_env(prof, 1, hz, "motor")
    d = env.core.drone
    w_hover = math.sqrt(prof.params["mass_kg"] * G / (4 * prof.params["kf_n_per_rad2s2"]))
    _place(env, [0], {"pos_enu_m": [[0.0, 0.0, 1.0]], "vel_enu_m_s": np.zeros((1, 3)), "quat_wxyz": [[1, 0, 0, 0]],
                      "omega_flu_rad_s": np.zeros((1, 3)), "rotor_rad_s": np.full((1, 4), w_hover)}, [[0.0] * 4])
    ctrl = LeeController(1, LEE_GAINS["imrclab"], prof.params["mass_kg"], prof.params["inertia_kg_m2"], 1 / hz)
    w, actions = 2 * math.pi / 4.0, []
    for k in range(int(seconds * hz)):
        t = k / hz
        ref = {"pos": [[math.sin(w * t), 0.5 * math.sin(2 * w * t), 1.0]],
               "vel": [[w * math.cos(w * t), w * math.cos(2 * w * t), 0.0]],
               "acc": [[-w ** 2 * math.sin(w * t), -2 * w ** 2 * math.sin(2 * w * t), 0.0]],
               "jerk": [[-w ** 3 * math.cos(w * t), -4 * w ** 3 * math.cos(2 * w * t), 0.0]], "yaw": [0.0]}
        s = {key: d[key].T.astype(float) for key in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s")}
        a = mix(env, *ctrl(s["pos_enu_m"], s["vel_enu_m_s"], s["quat_wxyz"], s["omega_flu_rad_s"],
                           {key: np.asarray(v, float) for key, v in ref.items()}))
        actions.append(a[0])
        env.step_physics(a.astype(np.float32))
    return simulate_flight(prof, np.array(actions), hz, start_pos_enu_m=(0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def lee_synthetic():
    prof = load_profile("crazyflie21").nominal()
    return prof, lee_flight(prof)


def test_the_controller_replay_of_a_sim_flight_with_its_own_model_agrees_and_a_wrong_model_shows(lee_synthetic):
    """Replayed with the model that flew it, the controller needs the logged commands and the logged tilt
    (the floor, ~4 deg, is the original flight's tracking error: the replay flies the flown path, not the
    figure-8 it was asked for); 10 % more thrust per rotor speed shows as a command bias, triple drag as tilt."""
    from calibration.lee_replay import lee_replay
    prof, traj = lee_synthetic
    same, _ = lee_replay(traj, prof)
    assert same["windows"]["2"] >= 5
    assert max(same["attitude_error_deg"].values()) < 5.0 and max(same["error_m"].values()) < 0.08
    assert max(abs(v) for v in same["command_bias"].values()) < 0.01 and same["command_rmse"]["1"] < 0.03
    kf, _ = lee_replay(traj, perturbed(prof, kf_n_per_rad2s2=1.1 * prof.params["kf_n_per_rad2s2"]))
    assert kf["command_bias"]["1"] < -0.04                                # less throttle for the same thrust
    drag, _ = lee_replay(traj, perturbed(prof, drag_n_per_m_s=[3 * v for v in prof.params["drag_n_per_m_s"]]))
    assert drag["attitude_error_deg"]["0.5"] > 2 * same["attitude_error_deg"]["0.5"]
    late, _ = lee_replay(traj, perturbed(prof, motor_delay_s=0.01))
    assert late["command_rmse"]["2"] > 3 * same["command_rmse"]["2"]


def test_the_rotor_lag_fit_recovers_a_known_motor_delay_and_time_constant():
    from calibration.flightid import rotor_lag_from_rpm
    prof = perturbed(load_profile("crazyflie21"), motor_delay_s=0.006, motor_tau_up_s=0.03, motor_tau_down_s=0.03)
    steps = np.repeat(np.random.default_rng(0).uniform(-0.1, 0.1, (40, 4)), 25, axis=0) + 0.12336
    traj = simulate_flight(prof, steps.astype(np.float32), 500.0, start_pos_enu_m=(0, 0, 50))
    lag = rotor_lag_from_rpm(traj, prof.params, traj.t_s > 0.2)     # after the start's own transient
    assert lag["motor_delay_s"] == pytest.approx(0.006, abs=1e-9)
    assert lag["motor_tau_s"] == pytest.approx(0.03, rel=0.02) and lag["r2_test"] > 0.999


@pytest.mark.parametrize("flight, profile, mass_kg", [(CF_FLIGHT, "crazyflie21", 0.0347),
                                                      ("cf21_brushless_eckart01_fixedFrequency.csv",
                                                       "crazyflie21_brushless", 0.037)])
def test_free_replay_with_the_crazyflie_controller_holds_the_real_figure8(real_data, flight, profile, mass_kg):
    """The goal: free replay attitude error at 0.5 s <= 10 deg. Open loop (logged commands) the sim tumbles
    (> 70 deg); with the firmware's Lee controller (default gains of both firmwares, not fitted) flying the
    sim along the logged path it holds, at every horizon to 2 s and on the windows after 5.5 s, which the
    profile's drag and kf fits (first 5.5 s / first half) did not see. The motor delay is the rotor speeds'
    (flightid.rotor_lag_from_rpm, first half): with the 10 ms the profile held before, the loop drifts off."""
    from calibration.flightid import flying_rows, rotor_lag_from_rpm
    from calibration.lee_replay import lee_replay
    traj = read_flight_log(real_data(flight), "crazyflie_usd")
    prof = load_profile(profile)
    free, _ = replay(traj, prof, mass_kg)
    assert free["attitude_error_deg"]["0.5"] > 70
    for gains in ("imrclab", "bitcraze"):
        m, _ = lee_replay(traj, prof, mass_kg, gains, held_out_from_s=5.5)
        print(flight, gains, json.dumps({k: m[k] for k in ("attitude_error_deg", "error_m", "command_bias")}))
        assert m["windows"]["0.5"] >= 15 and m["held_out"]["windows"]["0.5"] >= 5
        assert max(m["attitude_error_deg"].values()) <= 10.0 and max(m["held_out"]["attitude_error_deg"].values()) <= 10
        assert m["error_m"]["2"] < 0.1
    lag = rotor_lag_from_rpm(traj, prof.params, flying_rows(traj)[0])
    assert lag["motor_delay_s"] == pytest.approx(prof.params["motor_delay_s"], abs=1e-9) and lag["r2_test"] > 0.95
    late, _ = lee_replay(traj, perturbed(prof, motor_delay_s=0.01), mass_kg)
    assert late["attitude_error_deg"]["2"] > 10 and late["error_m"]["2"] > 0.1
