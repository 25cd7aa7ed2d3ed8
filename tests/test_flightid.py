"""Identification from flight logs (calibration/flightid.py): the geometry it assumes is the sim's,
its row screening names what it leaves out, and on two real Crazyflie flights the model fitted on
one predicts the other (cross-validation). Real data from ../shared/data/real/; skips when absent."""
import json
import os

import numpy as np
import pytest

from calibration.flightid import (MOTOR_MX, MOTOR_MY, MOTOR_SPIN, calibrate_flight, evaluate_flight,
                                  flying_rows)
from calibration.flightlogs import read_flight_log
from sim.env import DroneEnv
from sim.profiles import load_profile, parse_profile
from skyloop.cli import main as skyloop

LOG10 = "arpl_cf21_sysid_log10_fixedFrequency.csv"
LOG15 = "arpl_cf21_sysid_log15_fixedFrequency.csv"
STILL = {"ground_start_prob": 0.0, "init_tilt_max_rad": 0.0, "init_speed_max_m_s": 0.0, "init_rate_max_rad_s": 0.0}


@pytest.mark.parametrize("motor", range(4))
def test_the_motor_geometry_is_the_sims(motor):
    """One motor a little faster from hover: the sim's angular acceleration has the signs of
    (l MY, -l MX, -SPIN km) that the identification assumes."""
    env = DroneEnv(1, load_profile("crazyflie21").nominal(), action_mode="motor", task=STILL)
    env.reset(seed=0)
    env.set_state(0, pos_enu_m=[0, 0, 50])
    h = float(env.core.drone["hover_action"][0, 0])
    a = np.full((1, 4), h, np.float32)
    a[0, motor] += 0.05
    for _ in range(10):
        env.step_physics(a)
    w = env.state(0)["omega_flu_rad_s"]
    assert np.sign(w[0]) == MOTOR_MY[motor] and np.sign(w[1]) == -MOTOR_MX[motor]
    assert np.sign(w[2]) == -MOTOR_SPIN[motor]


def test_flying_rows_leave_out_the_ground_the_motor_cuts_and_the_crash_by_name(real_data):
    traj = read_flight_log(real_data(LOG10), "crazyflie_sysid")
    use, skipped, stretches = flying_rows(traj)
    # this flight cuts its motors in the air for a few 100 ms (excitation) and ends upside down
    assert {"motors_off_or_no_command", "in_flight_motor_cut", "recovery_after_motor_cut",
            "take_off_and_landing_trim", "crash_or_tumble"} <= set(skipped)
    assert use.sum() + sum(skipped.values()) == traj.n
    assert not np.any(traj.motor_throttle[use] == 0)
    assert len(stretches) == 1 and 6 < stretches[0][0] < 8 and 39 < stretches[0][1] < 42


def test_fit_on_one_flight_predicts_the_other_and_the_cli_writes_a_profile(tmp_path, capsys, real_data):
    """Cross-validation on the given flights: the thrust model fitted on log10 predicts log15's
    specific force within 5 % of hover (RMSE; measured 4.83 %), six times better than the stand
    profile's throttle curve; roll / pitch inertia within a factor 1.5 of Foerster 2015."""
    out = tmp_path / "cf_flight.json"
    rc = skyloop(["calibrate", "--flight", real_data(LOG10), "--mapping", "crazyflie_sysid",
                  "--test-flight", real_data(LOG15), "--profile", "crazyflie21", "-o", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    cv = summary["cross_validation"]
    # the goal: <= 5 % (measured 4.83 %, with the battery's discharge fitted on log10; 5.09 % without it)
    assert cv["test"]["battery_discharge_modelled"] and cv["test"]["thrust_rmse_pct_of_hover"] <= 5.0
    assert cv["test"]["thrust_rmse_pct_of_hover"] < cv["test"]["thrust_rmse_pct_of_hover_without_discharge"]
    assert summary["figures"]["battery_discharge"]["per_hover_s"] > 0   # thrust per command falls as it drains
    assert cv["test"]["thrust_rmse_pct_of_hover"] < cv["base_on_test"]["thrust_rmse_pct_of_hover"] / 4
    profile = json.loads(out.read_text())
    parse_profile(profile)
    measured = set(profile["calibration"]["measured"])
    assert {"throttle_to_omega_rad_s", "omega_max_rad_s"} <= measured
    for name, why in profile["calibration"]["kept_from_base"].items():   # what was not measured says why
        source = profile["source"][name]
        assert why and (source.startswith("kept from the base profile") if isinstance(source, str)
                        else "not measured here" in source["kept_by"])   # a base measurement keeps its provenance
    assert "kf_n_per_rad2s2" not in measured        # no rotor speeds: kf stays the base's
    assert "no velocity" in profile["calibration"]["kept_from_base"]["drag_n_per_m_s"]   # no position: no drag
    if "inertia_kg_m2" in measured:
        j = profile["params"]["inertia_kg_m2"]
        assert 1.66e-5 / 1.5 < j[0] < 1.66e-5 * 1.5 and 1.66e-5 / 1.5 < j[1] < 1.66e-5 * 1.5
    assert profile["calibration"]["skipped_rows"]["in_flight_motor_cut"] > 0


def test_a_log_without_motor_commands_is_refused_with_what_is_missing(tmp_path, capsys, real_data):
    mapping = json.load(open(os.path.join(os.path.dirname(__file__), "..", "calibration", "mappings",
                                          "crazyflie_sysid.json")))
    del mapping["fields"]["motor_command"]
    path = tmp_path / "no_commands.json"
    path.write_text(json.dumps(mapping))
    rc = skyloop(["calibrate", "--flight", real_data(LOG10), "--mapping", str(path), "--profile", "crazyflie21",
                  "-o", str(tmp_path / "y.json")])
    assert rc == 1 and "motor_throttle" in capsys.readouterr().err and not (tmp_path / "y.json").exists()


def test_evaluate_reports_thrust_error_in_percent_of_hover(real_data):
    traj = read_flight_log(real_data(LOG15), "crazyflie_sysid")
    base = load_profile("crazyflie21")
    e = evaluate_flight(traj, base.params, 0.027)
    assert e["rows_used"] > 30_000 and e["thrust_rmse_pct_of_hover"] > 10   # the stand curve is far off here


def test_a_flight_with_rotor_speeds_gives_kf_and_a_narrow_one_keeps_the_curve(real_data):
    """The brushless figure-8 logs rotor speeds: kf from m f_z = kf sum w^2; its commands span a
    few % of throttle, too little for a throttle curve, which stays the base's and says why."""
    from calibration.flightid import identify_flight
    traj = read_flight_log(real_data("cf21_brushless_eckart01_fixedFrequency.csv"), "crazyflie_usd")
    ident = identify_flight(traj, load_profile("crazyflie21"), mass_kg=0.037)
    kf = ident.fits["kf_n_per_rad2s2"]
    assert 3.3e-8 < kf.value < 4.1e-8 and kf.ci95 < 0.05 * kf.value
    assert "too narrow" in ident.not_fitted["throttle_to_omega_rad_s"]
