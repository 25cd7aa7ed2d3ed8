"""Cross-check against a peer simulator: L2F ("Learning to Fly", RLtools; PyPI `l2f`), which has
flown real Crazyflies.

Both models are given the same Crazyflie-class drone in a form both express exactly:
  - thrust kf w^2 per rotor (L2F: thrust polynomial [0, 0, kf] in its rotor state, here rad/s);
  - reaction torque km w^2 (L2F: torque constant km / kf times the thrust);
  - the same linear command -> rotor-speed map (L2F's action limits = our throttle curve end points);
  - the same first-order rotor lag, up and down time constants, integrated inside RK4 in both;
  - rotors listed in our motor order, so the actions are identical.
Deliberate modelling differences, switched off on our side for the comparison: L2F has no motor
delay, command latency, linear drag, rotor gyroscopic term, ground contact or battery model.
"""
import json

import numpy as np
import pytest

from sim import load_profile
from sim.env import DroneEnv

l2f = pytest.importorskip("l2f", reason="the peer simulator l2f (pip install l2f==2.0.18) is not installed: "
                                        "the README's install command installs it")

MX, MY, SPIN = (1, -1, 1, -1), (-1, 1, 1, -1), (1, 1, -1, -1)  # our quad-X order: FR, BL, FL, BR


def l2f_dynamics(p):
    c0, c1, _c2 = p["throttle_to_omega_rad_s"]
    l = p["arm_m"] / np.sqrt(2.0)
    J = np.diag(p["inertia_kg_m2"])
    return {
        "rotor_positions": [[MX[m] * l, MY[m] * l, 0.0] for m in range(4)],
        "rotor_thrust_directions": [[0.0, 0.0, 1.0]] * 4,
        "rotor_torque_directions": [[0.0, 0.0, -float(SPIN[m])] for m in range(4)],  # CCW pushes the body CW
        "rotor_thrust_coefficients": [[0.0, 0.0, p["kf_n_per_rad2s2"]]] * 4,
        "rotor_torque_constants": [p["km_nm_per_rad2s2"] / p["kf_n_per_rad2s2"]] * 4,
        "rotor_time_constants_rising": [p["motor_tau_up_s"]] * 4,
        "rotor_time_constants_falling": [p["motor_tau_down_s"]] * 4,
        "mass": p["mass_kg"],
        "gravity": [0.0, 0.0, -9.80665],
        "J": J.tolist(),
        "J_inv": np.linalg.inv(J).tolist(),
        "hovering_throttle_relative": 0.5,
        "action_limit": {"min": c0, "max": c0 + c1},
    }


def run_l2f(p, pos0, rotor0, actions, dt):
    device, env, params, rng = l2f.Device(), l2f.Environment(), l2f.Parameters(), l2f.Rng()
    l2f.initialize_environment(device, env)
    l2f.initialize_rng(device, rng, 0)
    l2f.initial_parameters(device, env, params)
    full = json.loads(l2f.parameters_to_json(device, env, params))  # read-back is rounded: replace what we use
    full["dynamics"] = l2f_dynamics(p)
    full["integration"]["dt"] = dt
    full["mdp"]["action_noise"]["normalized_rpm"] = 0.0
    for key in full["mdp"]["observation_noise"]:
        full["mdp"]["observation_noise"][key] = 0.0
    for key in ("random_force", "random_torque"):
        full["disturbances"][key] = {"mean": 0.0, "std": 0.0}
    for key in full["domain_randomization"]:
        full["domain_randomization"][key] = 0.0
    l2f.parameters_from_json(device, env, json.dumps(full), params)
    state, nxt = l2f.State(), l2f.State()
    l2f.initial_state(device, env, params, state)  # zeroes the hidden disturbance state
    state.position = list(map(float, pos0))
    state.orientation = [1.0, 0.0, 0.0, 0.0]
    state.linear_velocity = [0.0, 0.0, 0.0]
    state.angular_velocity = [0.0, 0.0, 0.0]
    state.rpm = [float(rotor0)] * 4
    positions = []
    for a in actions:
        l2f.step(device, env, params, state, [float(x) for x in a], nxt, rng)
        state.assign(nxt)
        positions.append(np.array(state.position, dtype=np.float64))
    return np.array(positions), np.array(state.orientation), np.array(state.angular_velocity)


def test_trajectory_agrees_with_l2f_within_a_centimetre_after_a_hover_plus_step_manoeuvre():
    prof = load_profile("crazyflie21").nominal()
    # what both models express exactly: no delay, drag or rotor inertia; different up / down lags are fine
    prof.params.update(motor_delay_s=0.0, drag_n_per_m_s=[0.0, 0.0, 0.0], rotor_inertia_kg_m2=0.0,
                       motor_tau_up_s=0.03, motor_tau_down_s=0.08,
                       throttle_to_omega_rad_s=prof.params["throttle_to_omega_rad_s"][:2] + [0.0])   # L2F's map is linear
    p = prof.params
    dt = 0.002
    env = DroneEnv(1, prof, task={"control_hz": 1.0 / dt, "ground_start_prob": 0.0, "init_tilt_max_rad": 0.0,
                                  "init_speed_max_m_s": 0.0, "init_rate_max_rad_s": 0.0})
    env.reset(seed=0)
    c0, c1, _ = p["throttle_to_omega_rad_s"]
    w_hover = np.sqrt(p["mass_kg"] * 9.80665 / (4 * p["kf_n_per_rad2s2"]))
    a_hover = 2 * (w_hover - c0) / c1 - 1
    a_step = 2 * (1.03 * w_hover - c0) / c1 - 1
    actions = np.full((250, 4), a_hover)
    actions[125:, [0, 2]] = a_step  # front-right and front-left 3 % faster: the nose pitches up
    env.set_state(0, pos_enu_m=[0, 0, 2], quat_wxyz=[1, 0, 0, 0], vel_enu_m_s=[0, 0, 0],
                  omega_flu_rad_s=[0, 0, 0], rotor_rad_s=[w_hover] * 4)
    ours = []
    for a in actions:
        env.step_physics(a[None].astype(np.float32))
        ours.append(env.state(0)["pos_enu_m"].astype(np.float64))
    ours = np.array(ours)
    theirs, q_l2f, w_l2f = run_l2f(p, [0, 0, 2], w_hover, actions, dt)

    moved = np.linalg.norm(ours[-1] - ours[0])
    assert moved > 0.01, "the manoeuvre must move the drone enough to compare"
    assert np.linalg.norm(ours[-1] - theirs[-1]) < 0.01       # the requirement: 1 cm after 0.5 s
    assert np.abs(ours - theirs).max() < 1e-4                  # in fact they agree to float rounding
    np.testing.assert_allclose(env.state(0)["quat_wxyz"], q_l2f, atol=1e-5)
    np.testing.assert_allclose(env.state(0)["omega_flu_rad_s"], w_l2f, atol=1e-3)
    assert ours[-1][0] < -0.005, "nose up tilts the thrust backwards: the drone moves to -x"
