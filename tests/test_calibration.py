"""Calibration: stand logs -> motor constants -> a drone profile the sim loads (hardware-free, fast).

Synthetic truth comes from the sim's own motor model (calibration.synthetic); the real files are
read from ../shared/data/real/ and the tests that need them skip when they are absent.
"""
import json
import os
import shutil

import numpy as np
import pytest

from calibration.calibrate import calibrate
from calibration.data import CalibrationError, load_log, screen_log
from calibration.fit import fit_square_law
from calibration.hover import hover_closure, read_hover_rpm
from calibration.steps import fit_steps
from calibration.synthetic import synthetic_steps, synthetic_sweep
from sim.profiles import load_profile
from skyloop.cli import main

BITCRAZE = "imrc_bitcraze2021_cf2.1-stock-prop.csv"
TYTO = "tyto_6x3prop_2300KV_RampTest_2024-07-21_144641.csv"
CF_FLIGHT = "cf21_brushed_jana00_fixedFrequency.csv"

STEP_DT_S = 0.002


@pytest.fixture(scope="module")
def truth():
    """A 5-inch motor with distinct up/down time constants, a delay of 5 step samples, a curved throttle curve."""
    p = dict(load_profile("fpv5").params)
    p.update(kf_n_per_rad2s2=1.3e-6, km_nm_per_rad2s2=1.9e-8, motor_tau_up_s=0.025, motor_tau_down_s=0.04,
             motor_delay_s=0.01, throttle_to_omega_rad_s=[300.0, 2500.0, 340.0], omega_max_rad_s=3140.0)
    return p


@pytest.fixture(scope="module")
def synthetic_logs(truth, tmp_path_factory):
    d = tmp_path_factory.mktemp("stand")
    sweep, steps = str(d / "sweep.csv"), str(d / "steps.csv")
    inserted = {"sweep": synthetic_sweep(sweep, truth, v_frac=0.95, seed=1),
                "steps": synthetic_steps(steps, truth, dt_s=STEP_DT_S, seed=2)}
    return sweep, steps, inserted


@pytest.fixture(scope="module")
def synthetic_cal(truth, synthetic_logs):
    sweep, steps, _ = synthetic_logs
    return calibrate([sweep, steps], load_profile("fpv5"))


# ---------------------------------------------------------------- synthetic truth

def test_kf_and_km_come_back_within_2_percent(synthetic_cal, truth):
    for name in ("kf_n_per_rad2s2", "km_nm_per_rad2s2"):
        fit = synthetic_cal.fits[name]
        assert fit.value == pytest.approx(truth[name], rel=0.02), name
        assert abs(fit.value - truth[name]) < 3 * fit.ci95 + 0.005 * truth[name], "CI far too narrow"
        assert fit.r2 > 0.999
        assert "linear_term" not in fit.extra, "no linear term in the truth, none should earn its keep"


def test_time_constants_within_10_percent_and_delay_within_one_sample(synthetic_cal, truth):
    fits = synthetic_cal.fits
    assert fits["motor_tau_up_s"].value == pytest.approx(truth["motor_tau_up_s"], rel=0.10)
    assert fits["motor_tau_down_s"].value == pytest.approx(truth["motor_tau_down_s"], rel=0.10)
    assert abs(fits["motor_delay_s"].value - truth["motor_delay_s"]) < STEP_DT_S


def test_throttle_curve_at_nominal_voltage_from_a_sagged_battery(synthetic_cal, truth):
    """The sweep ran at 95 % of the nominal voltage; the curve must come back at 100 %."""
    u = np.linspace(0.1, 1.0, 10)
    c_true, c_fit = truth["throttle_to_omega_rad_s"], synthetic_cal.fits["throttle_to_omega_rad_s"].value
    np.testing.assert_allclose(np.polyval(c_fit[::-1], u), np.polyval(c_true[::-1], u), rtol=0.02)
    assert synthetic_cal.fits["omega_max_rad_s"].value == pytest.approx(sum(c_true), rel=0.02)
    exponent = synthetic_cal.fits["throttle_to_omega_rad_s"].extra["voltage_exponent"]
    assert exponent["a"] == pytest.approx(1.0, abs=0.1)   # two runs at two voltages pin it down


def test_inserted_faults_are_rejected_and_counted(synthetic_logs):
    """The sweep is tared (a zero rpm under load shows on the load cell); the step log is not (a zero
    between spinning rows is a dropout because a rotor cannot stop and restart that fast)."""
    sweep, steps, inserted = synthetic_logs
    for path, kind in ((sweep, "sweep"), (steps, "steps")):
        _, counts = screen_log(load_log(path)).faulty()
        assert counts.get("zero_rpm", 0) == inserted[kind]["zero_rpm"], kind
        assert sum(v for k, v in counts.items() if k.startswith("spike_")) == inserted[kind]["spikes"], kind
    rows = screen_log(load_log(sweep))
    kf = fit_square_law([rows], "thrust_n")
    assert kf.rejected["zero_rpm"] == 3 and kf.rejected["spike_thrust"] == 2
    assert kf.rows_rejected == sum(kf.rejected.values())
    assert kf.rows_used + kf.rows_rejected <= len(rows) - rows.tare["rows"]


def test_steps_without_rpm_fit_sqrt_thrust(truth, tmp_path):
    path = str(tmp_path / "thrust_only_steps.csv")
    synthetic_steps(path, truth, dt_s=STEP_DT_S, seed=3, with_rpm=False)
    fits = {f.field: f for f in fit_steps([screen_log(load_log(path))])}
    assert fits["motor_tau_up_s"].value == pytest.approx(truth["motor_tau_up_s"], rel=0.10)
    assert fits["motor_tau_down_s"].value == pytest.approx(truth["motor_tau_down_s"], rel=0.10)
    assert abs(fits["motor_delay_s"].value - truth["motor_delay_s"]) < STEP_DT_S
    assert "sqrt(thrust)" in fits["motor_delay_s"].method


# ---------------------------------------------------------------- the command line and the profile

def test_cli_writes_a_profile_the_sim_loads_with_sources_and_a_report(synthetic_logs, tmp_path, capsys):
    sweep, steps, _ = synthetic_logs
    out, report = tmp_path / "mydrone.json", tmp_path / "report"
    rc = main(["calibrate", sweep, steps, "--profile", "fpv5", "-o", str(out), "--json", "--report", str(report),
               "--hover-rpm", "9000"])
    assert rc == 0
    figures = json.loads(capsys.readouterr().out)
    profile = load_profile(str(out))
    assert profile.name == "mydrone"
    for name in ("kf_n_per_rad2s2", "km_nm_per_rad2s2", "motor_tau_up_s", "motor_tau_down_s", "motor_delay_s",
                 "omega_max_rad_s", "throttle_to_omega_rad_s"):
        assert figures[name] == pytest.approx(profile.params[name], rel=1e-5)
        src = profile.source[name]
        assert {"file", "rows_used", "rows_rejected", "r2", "ci95", "method"} <= set(src), name
        assert src["rows_used"] > 0 and ("sweep.csv" in src["file"] or "steps.csv" in src["file"])
    assert profile.params["mass_kg"] == load_profile("fpv5").params["mass_kg"]   # not fitted: kept
    assert figures["r2_thrust"] > 0.999 and figures["r2_torque"] > 0.999
    assert figures["rows_rejected"]["kf_n_per_rad2s2"] > 0 and figures["rows_used"]["kf_n_per_rad2s2"] > 1000
    hover = figures["hover_closure"]
    expected = 4 * profile.params["kf_n_per_rad2s2"] * (9000 * np.pi / 30) ** 2
    assert hover["predicted_thrust_n"] == pytest.approx(expected, rel=1e-4)
    png = report / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "kf_n_per_rad2s2" in (report / "summary.txt").read_text()


def test_cli_refuses_a_profile_that_cannot_hover(synthetic_logs, tmp_path, capsys):
    """A 5-inch motor's constants on a 1.5 kg camera drone: the sim would refuse it, so no file."""
    sweep, _, _ = synthetic_logs
    out = tmp_path / "heavy.json"
    assert main(["calibrate", sweep, "--profile", "camera15", "-o", str(out), "--mass-kg", "5.0"]) == 1
    assert "cannot hover" in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------- bad input gives clear errors

@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("t_s,throttle,rpm,thrust_n\n", "no data rows"),
    ("t_s,throttle,rpm,thrust_n\n0,0.1,1000,0.2\n0.1,0.2,oops,0.4\n", "line 3"),
    ("time,speed\n0,1\n", "unknown header"),
    ("weight[g],pwm,vbat[V],rpm1,rpm2,rpm3,rpm4\n1,100,3.9,5000,5000,5000,5000\n2,200,3.9\n", "line 3"),
])
def test_malformed_logs_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        calibrate([str(path)], load_profile("fpv5"))


def test_a_log_without_rpm_cannot_give_kf(tmp_path):
    path = tmp_path / "no_rpm.csv"
    path.write_text("t_s,throttle,thrust_n\n" + "".join(f"{k * 0.1},{k / 20},{(k / 20) ** 2 * 5}\n" for k in range(21)))
    with pytest.raises(CalibrationError, match="no rpm column"):
        fit_square_law([screen_log(load_log(str(path)))], "thrust_n")
    with pytest.raises(CalibrationError, match="nothing could be fitted.*kf_n_per_rad2s2.*no rpm column"):
        calibrate([str(path)], load_profile("fpv5"))


def test_a_step_test_without_steps_is_an_error(truth, tmp_path):
    """A log that says it is a step test but only ramps: an error naming the largest change."""
    path = str(tmp_path / "ramp.csv")
    synthetic_sweep(path, truth, faults=False)
    meta_path = tmp_path / "ramp.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "procedure": "steps"}))
    with pytest.raises(CalibrationError, match="no throttle steps.*largest change"):
        calibrate([path], load_profile("fpv5"))


def test_hover_closure_and_its_input_checks():
    kf, rpm, mass = 2e-8, 20000.0, 0.034
    h = hover_closure(kf, rpm, mass)
    omega = rpm * 2 * np.pi / 60
    assert h["closure"] == pytest.approx(4 * kf * omega ** 2 / (mass * 9.80665))
    assert hover_closure(kf, [rpm] * 4, mass)["closure"] == pytest.approx(h["closure"])
    with pytest.raises(CalibrationError, match="one positive speed, or 4"):
        hover_closure(kf, [rpm, rpm], mass)


def test_tyto_units_come_from_the_header(tmp_path):
    """Thrust in kgf and torque in N·m, UTF-8 with a BOM, a text column and a trailing comma."""
    path = tmp_path / "tyto_kgf.csv"
    rows = ["Time (s),ESC signal (µs),Torque (N·m),Thrust (kgf),Voltage (V),Motor Optical Speed (RPM),App message,"]
    for k in range(30):
        rpm = 0 if k < 5 else 3000 + 400 * k
        w = rpm * np.pi / 30
        rows.append(f"{k * 0.5},{1000 if k < 5 else 1100 + 25 * k},{1e-8 * w * w:.6g},{1e-6 * w * w / 9.80665:.6g},"
                    f"16.5,{rpm},{'armed' if k == 5 else ''},")
    path.write_bytes("\n".join(rows).encode("utf-8-sig"))
    rows = screen_log(load_log(str(path)))
    assert fit_square_law([rows], "thrust_n").value == pytest.approx(1e-6, rel=1e-3)
    assert fit_square_law([rows], "torque_nm").value == pytest.approx(1e-8, rel=1e-3)


# ---------------------------------------------------------------- real data

def test_crazyflie_stand_gives_kf_near_2e_8_with_faults_counted(real_data):
    cal = calibrate([real_data(BITCRAZE)], load_profile("crazyflie21"))
    kf = cal.fits["kf_n_per_rad2s2"]
    assert 1.8e-8 < kf.value < 2.3e-8 and kf.r2 >= 0.98
    assert kf.rejected.get("motor_dropout", 0) + kf.rejected.get("motors_disagree", 0) > 0
    assert kf.rows_used > 2000
    assert "km_nm_per_rad2s2" in cal.not_fitted            # the Bitcraze stand measures no torque
    assert not cal.problems


def test_tyto_ramp_gives_kf_and_km_with_r2_above_0_97(real_data):
    cal = calibrate([real_data(TYTO)], load_profile("fpv5"))
    kf, km = cal.fits["kf_n_per_rad2s2"], cal.fits["km_nm_per_rad2s2"]
    assert kf.r2 >= 0.97 and km.r2 >= 0.97
    assert 5e-7 < kf.value < 1.5e-6 and 5e-9 < km.value < 1.5e-8   # 6x3 prop on a 2300 KV motor
    assert 0.005 < km.value / kf.value < 0.02                       # torque/thrust ratio of a small prop [m]
    assert kf.rows_used > 120
    assert cal.battery_v_nominal == pytest.approx(14.8)              # 4S, read from the voltages (base is 6S)


def test_crazyflie_hover_closure_from_the_flight_log(real_data):
    hover = read_hover_rpm(real_data(CF_FLIGHT), window_s=1.0)
    assert hover["columns"] == ["rpm.m1", "rpm.m2", "rpm.m3", "rpm.m4"] and hover["rows_used"] > 400
    assert all(15000 < r < 25000 for r in hover["rpm"])
    closure = hover_closure(2.1e-8, hover["rpm"], mass_kg=0.0347)
    assert 0.9 < closure["closure"] < 1.15


def test_a_step_with_no_level_before_it_is_rejected_not_a_crash():
    from calibration.steps import fit_one_step
    t = np.arange(200) * 0.002
    y = np.where(t >= 0.0, 1000.0 - 500.0 * np.exp(-t / 0.02), 500.0)   # the log starts mid-step
    out = fit_one_step(t, y, k_step=0, pre_start=0, end=200, noise=1.0)
    assert out["reject"] == "no_level_before_or_after"


# ---------------------------------------------------------------- export shapes, the sim's model, units

STEPS_2S = "tyto1580_RS1108-5200KV_avan2in-4blade_2S_StepsTest_2020-06-16_214944.csv"


def test_a_step_response_export_with_sparse_columns_reads_and_names_the_columns_used(tmp_path):
    """The Tyto step-response shape: 24 header cells, two columns filled on 5 rows only (the app
    ends the other lines before them), thrust in kgf, no optical speed, BOM and a trailing cell."""
    header = ("Time (s),ESC signal (µs),Servo 1 (µs),Servo 2 (µs),Servo 3 (µs),AccX (g),AccY (g),AccZ (g),"
              "Torque (N·m),Thrust (kgf),Voltage (V),Current (A),Motor Electrical Speed (RPM),"
              "Motor Optical Speed (RPM),Electrical Power (W),Mechanical Power (W),Motor Efficiency (%),"
              "Propeller Mech. Efficiency (kgf/W),Overall Efficiency (kgf/W),Vibration (g),App message,"
              "90% settling time (s),Max acceleration (RPM/s),")
    lines = [header]
    for k in range(40):
        rpm = 8000 + 300 * k
        w = rpm * np.pi / 30
        row = [f"{k * 0.02}", "1500", "", "", "", "0", "0", "-1", f"{1.2e-9 * w * w:.6g}",
               f"{6.5e-8 * w * w / 9.80665:.6g}", "7.6", "1.0", str(rpm), "0", "7.6", "1", "50", "0.001", "0.001",
               "0.1", ""]
        if k % 8 == 0:
            row += ["0.045", "120000", ""]
        lines.append(",".join(row))
    path = tmp_path / "StepResponse.csv"
    path.write_bytes("\n".join(lines).encode("utf-8-sig"))
    stand = load_log(str(path))
    meta = stand.meta
    assert meta["columns_used"]["thrust_n"] == "Thrust (kgf)" and meta["speed_column"] == "Motor Electrical Speed (RPM)"
    assert meta["sparse_columns"] == ["90% settling time (s)", "Max acceleration (RPM/s)"]
    assert "Motor Optical Speed (RPM)" in meta["columns_not_used"]
    assert len(stand) == 40
    assert fit_square_law([screen_log(stand)], "thrust_n").value == pytest.approx(6.5e-8, rel=1e-3)
    # a line short of a column filled everywhere else is broken, and says so
    lines.insert(10, ",".join(lines[10].split(",")[:9]))
    path.write_bytes("\n".join(lines).encode("utf-8-sig"))
    with pytest.raises(ValueError, match="line 11: 9 cells"):
        load_log(str(path))


def test_without_idle_rows_the_fit_goes_through_the_origin_and_reports_the_offset_fit(real_data):
    """The 2S StepsTest export has no idle rows: no offset can be measured, so kf and km are the
    sim's model k w^2 through the origin (within 1 % of a plain through-origin fit of the same rows);
    the fit with an offset is reported beside it, not used."""
    cal = calibrate([real_data(STEPS_2S)], load_profile("fpv5"))
    rows = cal.rows[0]
    assert rows.tare["rows"] == 0 and rows.meta["columns_used"]["thrust_n"] == "Thrust (gf)"
    for field, column in (("kf_n_per_rad2s2", "thrust_n"), ("km_nm_per_rad2s2", "torque_nm")):
        fit = cal.fits[field]
        w, y = fit.plot["x"][fit.plot["used"]], fit.plot["y"][fit.plot["used"]]
        through_origin = float(w ** 2 @ y / np.sum(w ** 4))
        assert fit.value == pytest.approx(through_origin, rel=0.01)
        offset = fit.extra["fit_with_offset"]
        assert "not used" in offset["model"] and abs(offset["difference_pct"]) > 0.1
        assert "no idle rows" in fit.method
    kf = cal.fits["kf_n_per_rad2s2"]
    assert kf.extra["fit_with_offset"]["difference_pct"] > 3      # what the former offset fit added to kf


def test_thrust_logged_in_grams_is_refused_and_the_unit_named(synthetic_logs, tmp_path, capsys):
    sweep, _steps, _ = synthetic_logs
    text = open(sweep, encoding="utf-8").read().splitlines()
    header = text[0].split(",")
    k = header.index("thrust_n")
    grams = []
    for line in text[1:]:
        cells = line.split(",")
        if cells[k]:
            cells[k] = f"{float(cells[k]) / 9.80665e-3:.6g}"
        grams.append(",".join(cells))
    path = tmp_path / "sweep_grams.csv"
    path.write_text("\n".join([text[0]] + grams) + "\n")
    sidecar = sweep[:-4] + ".json"
    if os.path.exists(sidecar):
        shutil.copy(sidecar, str(path)[:-4] + ".json")
    out = tmp_path / "grams.json"
    rc = main(["calibrate", str(path), "--profile", "fpv5", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "grams-force" in err and "thrust-to-weight" in err


def test_the_profile_records_what_was_measured_and_what_was_kept(real_data):
    cal = calibrate([real_data(STEPS_2S)], load_profile("fpv5"))
    record = cal.profile["calibration"]
    assert {"kf_n_per_rad2s2", "km_nm_per_rad2s2"} <= set(record["measured"])
    # one averaged row per step: no step response, so no time constant in either direction
    for name in ("motor_tau_up_s", "motor_tau_down_s", "motor_delay_s"):
        assert name in record["kept_from_base"]
        assert cal.profile["source"][name].startswith("kept from the base profile fpv5 (not measured:")


def test_a_delay_of_200_ms_is_a_valid_profile_and_the_sim_holds_it():
    """Delays of a few hundred ms are real (ESC filtering, slow firmware): the profile's range
    allows them and the sim's delay line is sized for them."""
    from sim.env import DroneEnv
    p = load_profile("crazyflie21").nominal()
    p.params["motor_delay_s"] = 0.2
    env = DroneEnv(1, p, action_mode="motor", task={"ground_start_prob": 0.0, "init_tilt_max_rad": 0.0,
                                                    "init_speed_max_m_s": 0.0, "init_rate_max_rad_s": 0.0})
    env.reset(seed=0)
    env.set_state(0, pos_enu_m=[0, 0, 50])
    h = float(env.core.drone["hover_action"][0, 0])
    dt = env.core.control_dt_s                # step_physics: one control period
    for _ in range(int(round(0.5 / dt))):     # hover until the delay line holds nothing else
        env.step_physics(np.full((1, 4), h, np.float32))
    env.set_state(0, pos_enu_m=[0, 0, 50])
    before = env.state(0)["rotor_rad_s"][0]
    speeds = []
    for _ in range(int(round(0.3 / dt))):
        env.step_physics(np.full((1, 4), h + 0.2, np.float32))
        speeds.append(env.state(0)["rotor_rad_s"][0])
    first = int(np.argmax(np.abs(np.array(speeds) - before) > 1.0))   # speeds[k]: at the end of period k + 1
    assert first * dt == pytest.approx(0.2, abs=dt / 2)   # the command moves the rotor from 0.2 s on


BRUSHLESS_STAND = "imrc_cf21_brushless_calib_log.csv"


def test_a_stand_log_with_unread_load_cell_and_bad_rpm_channels_says_so_and_can_trust_one(real_data):
    """The brushless stand log: weight[g] is 0 throughout (no thrust), rpm1-3 disagree with each
    other (rejected row by row); --rpm-columns rpm4 trusts the good sensor alone."""
    stand_log = real_data(BRUSHLESS_STAND)
    with pytest.raises(CalibrationError, match="load cell was not read"):
        fit_square_law([screen_log(load_log(stand_log))], "thrust_n")
    all_four = calibrate([stand_log], load_profile("crazyflie21"))
    assert all_four.fits["throttle_to_omega_rad_s"].rejected["motors_disagree"] > 3000
    rpm4 = calibrate([stand_log], load_profile("crazyflie21"), rpm_columns=("rpm4",))
    curve = rpm4.fits["throttle_to_omega_rad_s"]
    assert "motors_disagree" not in curve.rejected and curve.r2 > 0.99 and curve.rows_used > 6000
    assert rpm4.rows[0].meta["rpm_columns_not_used"] == ["rpm1", "rpm2", "rpm3"]
    assert "kf_n_per_rad2s2" in rpm4.not_fitted and "load cell was not read" in rpm4.not_fitted["kf_n_per_rad2s2"]


def test_the_brushless_profile_predicts_the_stands_scale_readings_near_hover(real_data):
    """crazyflie21_brushless: kf from the brushless flight, the throttle curve from the stand's rpm4;
    the 13 manual scale readings (pwm vs total grams) were used by neither: near hover (pwm 15000
    to 40000) the profile's 4 kf w(u)^2 is within 10 % of them."""
    table = np.genfromtxt(real_data("imrc_cf21_brushless_calib_scale.csv"), delimiter=",", skip_header=1)
    p = load_profile("crazyflie21_brushless")
    assert "kf_n_per_rad2s2" in p.source and "eckart01" in p.source["kf_n_per_rad2s2"]["file"]
    c0, c1, c2 = p.params["throttle_to_omega_rad_s"]
    near = (table[:, 0] >= 15000) & (table[:, 0] <= 40000)
    u = table[near, 0] / 65535
    grams = 4 * p.params["kf_n_per_rad2s2"] * (c0 + c1 * u + c2 * u * u) ** 2 / 9.80665e-3
    assert np.all(np.abs(grams / table[near, 1] - 1) < 0.10)


def test_the_crazyflie_profile_says_its_motor_dynamics_were_measured():
    p = load_profile("crazyflie21")
    for name in ("motor_tau_up_s", "motor_tau_down_s"):
        assert p.source[name]["file"].startswith("arpl_cf21_sysid_log10") and p.source[name]["ci95"] > 0
    delay = p.source["motor_delay_s"]        # measured: the jana00 flight's rotor speeds against its commands
    assert delay["file"] == "cf21_brushed_jana00_fixedFrequency.csv" and "rotor_lag_from_rpm" in delay["method"]
    assert p.params["motor_delay_s"] <= 0.002 and "radio period" not in json.dumps(delay)
    b = load_profile("crazyflie21_brushless")
    for name in ("motor_tau_up_s", "motor_tau_down_s", "motor_delay_s"):
        assert b.source[name]["file"] == "cf21_brushless_eckart01_fixedFrequency.csv"   # no longer the brushed one's
