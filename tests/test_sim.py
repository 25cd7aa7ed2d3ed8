"""The simulator's physics, conventions, randomization and error handling (hardware-free, fast)."""
import copy
import json

import numpy as np
import pytest

from sim import OBS_FIELDS, OBS_SIZE, ProfileError, SimError, load_profile, observe, obs_slice
from sim.core import PARAM_FIELDS, motor_response
from sim.env import DroneEnv
from sim.profiles import available_profiles, parse_profile

G = 9.80665
STILL = {"ground_start_prob": 0.0, "init_tilt_max_rad": 0.0, "init_speed_max_m_s": 0.0, "init_rate_max_rad_s": 0.0}


def nominal(name="crazyflie21", **param_overrides):
    p = load_profile(name).nominal()
    p.params.update(param_overrides)
    return p


def single(profile, mode="motor", **task):
    env = DroneEnv(1, profile, action_mode=mode, task={**STILL, **task})
    env.reset(seed=0)
    return env


def hover_actions(env):
    h = float(env.core.drone["hover_action"][0, 0])
    return np.array([[h, h, h, h]] if env.action_mode == "motor" else [[h, 0, 0, 0]], np.float32)


@pytest.mark.parametrize("name", ["crazyflie21", "fpv5", "camera15"])
@pytest.mark.parametrize("mode", ["motor", "ctbr"])
def test_hover_equilibrium_holds_within_a_millimetre_for_a_second(name, mode):
    env = single(nominal(name), mode)
    env.set_state(0, pos_enu_m=[0, 0, 2], quat_wxyz=[1, 0, 0, 0])
    start = env.state(0)["pos_enu_m"]
    a = hover_actions(env)
    for _ in range(100):  # 1 s at 100 Hz
        env.step_physics(a)
        assert np.linalg.norm(env.state(0)["pos_enu_m"] - start) < 1e-3


def test_free_fall_matches_half_g_t_squared():
    p = nominal("camera15", throttle_to_omega_rad_s=[0.0, 740.0, 0.0], drag_n_per_m_s=[0.0, 0.0, 0.0])
    env = single(p)
    env.set_state(0, pos_enu_m=[0, 0, 10], vel_enu_m_s=[0, 0, 0], rotor_rad_s=[0, 0, 0, 0])
    env.core.sync(0, held_action=[-1, -1, -1, -1])
    for k in range(1, 51):
        env.step_physics(np.full((1, 4), -1.0, np.float32))
        t = k * env.core.control_dt_s
        assert env.state(0)["pos_enu_m"][2] == pytest.approx(10 - 0.5 * G * t * t, abs=2e-5)
        assert env.state(0)["vel_enu_m_s"][2] == pytest.approx(-G * t, abs=2e-5)


def _tumble(dt):
    """A smooth, non-polynomial manoeuvre: asymmetric inertia spinning fast while the thrust vector
    rotates with the body. Returns the state after 0.6 s."""
    p = nominal("camera15", inertia_kg_m2=[0.01, 0.02, 0.03], drag_n_per_m_s=[0.0, 0.0, 0.0],
                rotor_inertia_kg_m2=0.0, motor_delay_s=0.0)
    env = single(p, physics_dt_s=dt, control_hz=10.0)
    env.set_state(0, pos_enu_m=[0, 0, 50], omega_flu_rad_s=[20.0, 8.0, 14.0], quat_wxyz=[1, 0, 0, 0])
    a = hover_actions(env)
    for _ in range(6):
        env.step_physics(a)
    s = env.state(0)
    return np.concatenate([s["quat_wxyz"], s["omega_flu_rad_s"], s["vel_enu_m_s"]]).astype(np.float64)


def test_rk4_error_shrinks_sixteen_fold_when_dt_halves():
    ref = _tumble(0.00125)
    errors = [np.abs(_tumble(dt) - ref).max() for dt in (0.02, 0.01)]
    ratio = errors[0] / errors[1]
    assert errors[0] > 1e-4, "the manoeuvre must be hard enough to measure the integration error"
    assert 11 < ratio < 22, f"error ratio {ratio:.1f}, errors {errors}: not 4th order"


def test_quaternion_stays_unit_while_tumbling():
    env = DroneEnv(64, "size_family", task={"init_rate_max_rad_s": 20.0, "init_tilt_max_rad": 3.1, "ground_start_prob": 0})
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(200):
        env.step_physics(rng.uniform(-1, 1, (64, 4)).astype(np.float32))
        norms = np.linalg.norm(env.core.drone["quat_wxyz"], axis=0)
        assert np.abs(norms - 1).max() < 2e-6


@pytest.mark.parametrize("direction", ["up", "down"])
def test_motor_step_response_reaches_63_percent_at_tau_after_the_delay(direction):
    p = nominal("fpv5", motor_tau_up_s=0.03, motor_tau_down_s=0.05, motor_delay_s=0.01)
    env = single(p, control_hz=500.0)  # one 2 ms physics step per control step
    lo, hi = -0.6, 0.6
    a0, a1 = (lo, hi) if direction == "up" else (hi, lo)
    curve = p.params["throttle_to_omega_rad_s"]
    w0, w1 = (curve[0] + curve[1] * (a + 1) / 2 for a in (a0, a1))
    env.set_state(0, pos_enu_m=[0, 0, 100], rotor_rad_s=[w0] * 4)
    env.core.sync(0, held_action=[a0] * 4)
    trace = []
    for _ in range(100):
        env.step_physics(np.full((1, 4), a1, np.float32))
        trace.append(env.state(0)["rotor_rad_s"][0])
    frac = (np.array(trace) - w0) / (w1 - w0)  # frac[k] at t = (k+1) * 2 ms
    delay_steps = 5
    assert np.abs(frac[:delay_steps]).max() < 1e-6, "the motor moved before its delay"
    tau = 0.03 if direction == "up" else 0.05
    k_tau = delay_steps + int(round(tau / 0.002)) - 1
    assert frac[k_tau] == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_motor_response_for_the_stand_is_the_same_model_as_in_flight():
    p = nominal("fpv5").params
    u = np.r_[np.full(20, 0.2), np.full(100, 0.7)]
    w = motor_response(p, u, 0.002, omega0_rad_s=p["throttle_to_omega_rad_s"][0] + 0.2 * p["throttle_to_omega_rad_s"][1])
    w_final = p["throttle_to_omega_rad_s"][0] + 0.7 * p["throttle_to_omega_rad_s"][1]
    delay = int(round(p["motor_delay_s"] / 0.002))
    k_tau = 20 + delay + int(round(p["motor_tau_up_s"] / 0.002)) - 1
    w_start = w[19]
    assert (w[k_tau] - w_start) / (w_final - w_start) == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_yaw_torque_sign_matches_the_motor_spin_directions():
    env = single(nominal("camera15"))
    env.set_state(0, pos_enu_m=[0, 0, 50])
    h = hover_actions(env)[0, 0]
    # motors 1 and 2 (front-right, back-left) spin CCW: speeding them up yaws the body clockwise
    for _ in range(20):
        env.step_physics(np.array([[h + 0.1, h + 0.1, h, h]], np.float32))
    assert env.state(0)["omega_flu_rad_s"][2] < -0.02
    env.set_state(0, pos_enu_m=[0, 0, 50], omega_flu_rad_s=[0, 0, 0], quat_wxyz=[1, 0, 0, 0])
    for _ in range(20):
        env.step_physics(np.array([[h, h, h + 0.1, h + 0.1]], np.float32))
    assert env.state(0)["omega_flu_rad_s"][2] > 0.02


def _rot(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_frame_conventions_thrust_up_roll_right_side_down_pitch_nose_down():
    env = single(nominal("camera15"))
    h = hover_actions(env)[0, 0]
    # more thrust on all motors: up (ENU z)
    env.set_state(0, pos_enu_m=[0, 0, 50], quat_wxyz=[1, 0, 0, 0])
    for _ in range(20):
        env.step_physics(np.full((1, 4), h + 0.1, np.float32))
    assert env.state(0)["vel_enu_m_s"][2] > 0.1
    # left motors (2 back-left, 3 front-left) stronger: positive roll rate, the right side goes down
    env.set_state(0, pos_enu_m=[0, 0, 50], quat_wxyz=[1, 0, 0, 0], vel_enu_m_s=[0, 0, 0])
    for _ in range(20):
        env.step_physics(np.array([[h, h + 0.05, h + 0.05, h]], np.float32))
    s = env.state(0)
    assert s["omega_flu_rad_s"][0] > 0.1
    assert _rot(s["quat_wxyz"])[2, 1] > 0.01, "body y (left) should point up: right side down"
    # back motors (2 back-left, 4 back-right) stronger: positive pitch rate, the nose goes down
    env.set_state(0, pos_enu_m=[0, 0, 50], quat_wxyz=[1, 0, 0, 0], omega_flu_rad_s=[0, 0, 0], vel_enu_m_s=[0, 0, 0])
    for _ in range(20):
        env.step_physics(np.array([[h, h + 0.05, h, h + 0.05]], np.float32))
    s = env.state(0)
    assert s["omega_flu_rad_s"][1] > 0.1
    assert _rot(s["quat_wxyz"])[2, 0] < -0.01, "body x (nose) should point down"
    assert s["vel_enu_m_s"][0] > 0.0, "a nose-down drone accelerates forward"


def test_ctbr_rate_loop_tracks_a_roll_rate_step_with_the_right_sign():
    for name in ("crazyflie21", "fpv5", "camera15"):
        env = single(nominal(name), "ctbr", control_hz=500.0)
        env.set_state(0, pos_enu_m=[0, 0, 50])
        h = hover_actions(env)[0, 0]
        rate_max = env.profile.params["rate_max_rad_s"][0]
        for sign in (1, -1):
            env.set_state(0, pos_enu_m=[0, 0, 50], quat_wxyz=[1, 0, 0, 0], omega_flu_rad_s=[0, 0, 0])
            w = []
            for _ in range(200):  # 0.4 s
                env.step_physics(np.array([[h, 0.25 * sign, 0, 0]], np.float32))
                w.append(env.state(0)["omega_flu_rad_s"][0])
            w = np.array(w) / (0.25 * sign * rate_max)
            assert w[-1] == pytest.approx(1.0, abs=0.08), name
            assert w.max() < 1.15, f"{name}: overshoot {w.max():.2f}"
            assert np.argmax(w > 0.63) * 0.002 < 0.2, f"{name}: rate loop too slow"


def test_a_drone_on_the_ground_rests_and_a_hard_landing_is_a_crash():
    env = single(nominal("camera15"), ground_start_prob=1.0)
    assert env.state(0)["pos_enu_m"][2] == 0.0
    for _ in range(100):  # idle on the ground: no sinking, no crash
        _o, _r, term, _t, _i = env.step(np.full((1, 4), -1.0, np.float32))
        assert not term[0]
        assert env.state(0)["pos_enu_m"][2] == 0.0
    env.set_state(0, pos_enu_m=[0, 0, 0.3], vel_enu_m_s=[0, 0, -4.0])
    crashed = False
    for _ in range(20):
        _o, _r, term, _t, info = env.step(np.full((1, 4), -1.0, np.float32))
        if term[0]:
            crashed = bool(info["episode"]["crash"][0])
            break
    assert crashed


def test_randomization_stays_inside_the_profiles_ranges():
    prof = load_profile("size_family")
    r, p = prof.randomization, prof.params
    env = DroneEnv(4000, prof)
    env.reset(seed=11)
    d = env.core.drone
    arm = d["arm_m"][0]
    assert arm.min() >= r["arm_m_range"][0] * 0.999 and arm.max() <= r["arm_m_range"][1] * 1.001
    assert arm.max() / arm.min() > 5, "size families should span the range"
    s = arm / p["arm_m"]
    nominal_mass = p["mass_kg"] * s ** 3
    assert np.all(np.abs(d["mass_kg"][0] / nominal_mass - 1) <= r["mass_frac"] + 1e-5)
    assert np.all(np.abs(d["kf_n_per_rad2s2"][0] / d["nom_kf"][0] - 1) <= r["kf_frac"] + 1e-5)
    assert np.all(np.abs(d["km_nm_per_rad2s2"][0] / d["nom_km"][0] - 1) <= r["km_frac"] + 1e-5)
    assert np.all(np.abs(d["motor_tau_up_s"][0] / p["motor_tau_up_s"] - 1) <= r["motor_tau_frac"] + 1e-5)
    assert np.all(np.abs(d["motor_delay_s"][0] / p["motor_delay_s"] - 1) <= r["motor_delay_frac"] + 1e-5)
    tw = d["nom_thrust_max"][0] / (nominal_mass * G)
    assert tw.min() >= r["thrust_to_weight_range"][0] - 1e-4 and tw.max() <= r["thrust_to_weight_range"][1] + 1e-4
    v = d["battery_v"][0] / p["battery_v_nominal"]
    assert v.min() >= r["battery_v_frac_range"][0] - 1e-6 and v.max() <= r["battery_v_frac_range"][1] + 1e-6
    lat = d["latency_s"][0]
    assert lat.min() >= r["latency_s_range"][0] and lat.max() <= r["latency_s_range"][1] + 1e-9
    weight = d["mass_kg"][0] * G
    assert np.all(np.linalg.norm(d["force_n"], axis=0) <= r["force_frac_of_weight"] * weight + 1e-9)


def test_no_randomization_block_gives_the_exact_nominal_drone():
    data = json.load(open(load_profile("fpv5").path))
    del data["randomization"]
    prof = parse_profile(data)
    env = DroneEnv(50, prof)
    env.reset(seed=3)
    d = env.core.drone
    assert np.all(d["mass_kg"] == np.float32(prof.params["mass_kg"]))
    assert np.all(d["kf_n_per_rad2s2"] == np.float32(prof.params["kf_n_per_rad2s2"]))
    assert np.all(d["omega_scale"] == 1.0) and np.all(d["force_n"] == 0.0)


def _rollout(seed, steps=150, n=256, mode="motor"):
    env = DroneEnv(n, "size_family", action_mode=mode)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(1)
    trace = [obs.copy()]
    for _ in range(steps):
        obs, rew, term, trunc, _info = env.step(rng.uniform(-1, 1, (n, 4)).astype(np.float32))
        trace.append(np.concatenate([obs.ravel(), rew, term, trunc]))
    return trace


def test_a_fixed_seed_reproduces_a_rollout_bit_for_bit():
    a, b, c = _rollout(7), _rollout(7), _rollout(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_observation_layout_comes_from_c_and_the_runner_function_matches_the_env():
    offsets = [(o, n) for _name, o, n in OBS_FIELDS]
    assert offsets[0][0] == 0
    assert all(o1 + n1 == o2 for (o1, n1), (o2, _n2) in zip(offsets, offsets[1:]))
    assert offsets[-1][0] + offsets[-1][1] == OBS_SIZE
    env = DroneEnv(8, load_profile("fpv5").nominal())  # no observation noise
    obs, _ = env.reset(seed=2)
    d = env.core.drone
    for i in range(8):
        o = observe(d["pos_enu_m"][:, i], d["vel_enu_m_s"][:, i], d["quat_wxyz"][:, i], d["omega_flu_rad_s"][:, i],
                    d["target_enu_m"][:, i], d["action_hist"][:, i], d["hover_action"][0, i])
        np.testing.assert_allclose(o, obs[i], atol=1e-6)  # vectorized vs scalar float rounding
    # the target offset is in the body frame: a drone yawed 90 degrees left sees an east target on its right
    o = observe([0, 0, 1], [0, 0, 0], [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)], [0, 0, 0], [1, 0, 1],
                np.zeros(8), 0.0)
    t = o[obs_slice("target_body")]
    assert t[1] < -0.49 and abs(t[0]) < 1e-6 and t[1] == pytest.approx(-0.5, abs=1e-6)  # squashed: 1 m -> 0.5


def test_invalid_actions_raise_a_clear_error_and_change_nothing():
    env = DroneEnv(4, "crazyflie21")
    env.reset(seed=0)
    before = {k: v.copy() for k, v in env.core.drone.items()}
    bad = np.zeros((4, 4), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(SimError, match=r"action\[2, 1\] = nan"):
        env.step(bad)
    bad[2, 1] = 1.5
    with pytest.raises(SimError, match=r"action\[2, 1\] = 1.5 .*\[-1, 1\]"):
        env.step(bad)
    with pytest.raises(SimError, match="shape"):
        env.step(np.zeros((3, 4), np.float32))
    assert all(np.array_equal(before[k], v) for k, v in env.core.drone.items())


def test_bad_profiles_report_every_bad_field_at_once():
    data = json.load(open(load_profile("crazyflie21").path))
    broken = copy.deepcopy(data)
    del broken["params"]["mass_kg"]
    broken["params"]["kf_n_per_rad2s2"] = -1e-8
    broken["params"]["inertia_kg_m2"] = [1e-5, 1e-5]
    broken["randomization"]["mass_fraction"] = 0.1
    with pytest.raises(ProfileError) as err:
        parse_profile(broken, "broken.json")
    msg = str(err.value)
    assert "params.mass_kg: missing" in msg
    assert "params.kf_n_per_rad2s2 = -1e-08 is negative" in msg
    assert "params.inertia_kg_m2: expected 3 number(s)" in msg
    assert "randomization.mass_fraction: unknown field" in msg
    assert len(err.value.problems) == 4


def test_physically_impossible_profiles_and_configs_are_refused():
    with pytest.raises(SimError, match="cannot hover"):
        DroneEnv(1, nominal("camera15", mass_kg=5.0))
    with pytest.raises(SimError, match="unknown action mode 'rpm'"):
        DroneEnv(1, "camera15", action_mode="rpm")
    with pytest.raises(SimError, match="whole number of physics steps"):
        DroneEnv(1, "camera15", task={"control_hz": 30.0})
    with pytest.raises(SimError, match="unknown task fields"):
        DroneEnv(1, "camera15", task={"episode_length": 3})
    with pytest.raises(ProfileError, match="no built-in profile"):
        load_profile("no_such_drone")


def test_malformed_profile_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format": "skyloop.profile/1", "params": {')
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(str(path))


def test_every_shipped_profile_loads_and_says_where_each_number_came_from():
    names = available_profiles()
    assert {"crazyflie21", "fpv5", "camera15", "size_family"} <= set(names)
    for name in names:
        prof = load_profile(name)
        missing = sorted(set(PARAM_FIELDS) - set(prof.source))
        assert not missing, f"{name}: no source for {missing}"
        DroneEnv(4, prof).reset(seed=0)


def test_episode_records_count_success_and_crashes():
    from sim.demo import CascadeController
    env = DroneEnv(32, load_profile("fpv5").nominal(), action_mode="ctbr",
                   task={"ground_start_prob": 0.0, "episode_s": 8.0})
    obs, _ = env.reset(seed=4)
    ctrl = CascadeController(32, env.profile.params["rate_max_rad_s"], env.control_hz)
    records = []
    for _ in range(800):
        obs, _r, _te, _tr, info = env.step(ctrl(obs))
        if "episode" in info:
            records.append(info["episode"])
            ctrl.reset(info["done_index"])
    success = np.concatenate([r["success"] for r in records])
    assert len(success) == 32 and success.mean() > 0.9
    # no thrust at all: every episode ends in a crash, none succeeds
    env = DroneEnv(32, "fpv5", task={"ground_start_prob": 0.0})
    env.reset(seed=4)
    crashes, successes = [], []
    for _ in range(300):
        _o, _r, _te, _tr, info = env.step(np.full((32, 4), -1.0, np.float32))
        if "episode" in info:
            crashes.append(info["episode"]["crash"])
            successes.append(info["episode"]["success"])
    assert np.concatenate(crashes).all() and not np.concatenate(successes).any()


def test_arrays_handed_out_stay_valid_after_the_env_is_dropped():
    """obs from `DroneEnv(...).reset()` is a view of C memory: it must keep that memory alive. Run with
    glibc's MALLOC_PERTURB_ so that freed memory is overwritten at once (it read NaN before the fix)."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np\nfrom sim.env import DroneEnv\n"
            "kept = DroneEnv(64, 'size_family', action_mode='ctbr'); ref = kept.reset(seed=2)[0]\n"
            "for _ in range(5):\n"
            "    obs = DroneEnv(64, 'size_family', action_mode='ctbr').reset(seed=2)[0]\n"
            "    junk = [bytearray(1 << 16) for _ in range(64)]\n"
            "    assert np.array_equal(obs, ref), 'a dropped env freed the obs it handed out'\n")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MALLOC_PERTURB_": "165"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
