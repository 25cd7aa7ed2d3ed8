"""The safety supervisor on its own: every failsafe fires with its reason, a good state flies on."""
import math
import os

import numpy as np
import pytest

from flight.course import load_course
from flight.safety import Limits, Supervisor, preflight, tilt_rad

HALL = load_course("hall")


def state(t_s=10.0, pos=(0.0, 0.0, 2.0), vel=(0.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0), omega=(0.0, 0.0, 0.0)):
    return {"t_s": t_s, "pos_enu_m": np.array(pos), "vel_enu_m_s": np.array(vel), "quat_wxyz": np.array(quat),
            "omega_flu_rad_s": np.array(omega)}


def roll(deg):
    return (math.cos(math.radians(deg) / 2), math.sin(math.radians(deg) / 2), 0.0, 0.0)


def test_a_good_state_flies_on():
    s = Supervisor(HALL, cells=4)
    assert s.check(10.05, state(), np.zeros(4), last_message_s=9.5, battery_v=15.6) is None


@pytest.mark.parametrize("now,st,action,hb,batt,words", [
    (10.0, state(), np.zeros(4), 8.0, None, "link lost"),
    (10.3, state(t_s=10.0), np.zeros(4), 10.2, None, "stale telemetry"),
    (10.0, None, np.zeros(4), 10.0, None, "stale telemetry: the newest state arrived never"),
    (10.0, state(), np.array([0.1, np.nan, 0, 0]), 10.0, None, "non-finite action"),
    (10.0, state(pos=(0, 0, np.nan)), np.zeros(4), 10.0, None, "not finite"),
    (10.0, state(pos=(19.8, 0, 2)), np.zeros(4), 10.0, None, "geofence"),
    (10.0, state(pos=(0, 0, 7.9)), np.zeros(4), 10.0, None, "geofence"),
    (10.0, state(quat=roll(80)), np.zeros(4), 10.0, None, "excessive tilt: 80 deg"),
    (10.0, state(omega=(25, 0, 0)), np.zeros(4), 10.0, None, "excessive body rate"),
    (10.0, state(), np.zeros(4), 10.0, 12.9, "battery critical"),
])
def test_each_failsafe_fires_with_its_reason(now, st, action, hb, batt, words):
    reason = Supervisor(HALL, Limits(battery_critical_hold_s=0.0), cells=4).check(now, st, action, last_message_s=hb,
                                                                               battery_v=batt)
    assert reason is not None and words in reason


def test_a_sag_under_load_flies_on_and_a_flat_battery_stops_after_the_hold_time():
    s = Supervisor(HALL, cells=4)           # critical: 13.2 V, held for 2 s
    for k in range(3):                      # three punches of throttle: 1.5 s below critical, then recovered
        for t in np.arange(0.0, 1.5, 0.01):
            now = 10.0 + 3 * k + t
            assert s.check(now, state(t_s=now), np.zeros(4), now, battery_v=12.9) is None
        assert s.check(now + 0.01, state(t_s=now + 0.01), np.zeros(4), now + 0.01, battery_v=14.8) is None
    for t in np.arange(0.0, 1.95, 0.01):    # then it stays low
        assert s.check(20.0 + t, state(t_s=20.0 + t), np.zeros(4), 20.0 + t, battery_v=12.9) is None
    assert "battery critical: 12.90 V for 4 cells" in s.check(22.0, state(t_s=22.0), np.zeros(4), 22.0, battery_v=12.9)


def test_the_first_reason_sticks():
    s = Supervisor(HALL)
    assert "excessive tilt" in s.check(10.0, state(quat=roll(90)), np.zeros(4), 10.0)
    assert "excessive tilt" in s.check(10.1, state(t_s=10.1), np.zeros(4), 10.1)   # recovered, still stopped


def test_tilt_of_a_quaternion():
    assert tilt_rad((1, 0, 0, 0)) == 0.0
    assert tilt_rad(roll(30)) == pytest.approx(math.radians(30), abs=1e-9)
    yaw_only = (math.cos(1.0), 0.0, 0.0, math.sin(1.0))
    assert tilt_rad(yaw_only) == pytest.approx(0.0, abs=1e-9)


def test_preflight_refuses_what_must_not_take_off():
    start = state(pos=HALL.start_pos_enu_m)                      # standing on the floor
    assert HALL.start_pos_enu_m[2] == 0.0
    assert preflight(HALL, start, battery_v=16.4, cells=4) == []
    assert "no state estimate" in preflight(HALL, None, None, None)[0]
    assert "outside the course's geofence" in preflight(HALL, state(pos=(30, 0, 1)), None, None)[0]
    assert "moving" in preflight(HALL, state(pos=(0, 0, 1), vel=(1, 0, 0)), None, None)[0]
    assert any("charge it" in p for p in preflight(HALL, start, battery_v=13.5, cells=4))
    assert any("widen bounds_m" in p for p in preflight(HALL, start, None, None, Limits(geofence_margin_m=5.0)))


# ---------------------------------------------------------------- CPU priority (flight/realtime.py)
def test_priority_falls_back_to_nice_then_to_normal_and_says_so(monkeypatch):
    import os

    from flight import realtime

    def refused(*_):
        raise PermissionError(1, "Operation not permitted")
    niced = []
    monkeypatch.setattr(os, "sched_setscheduler", refused)
    monkeypatch.setattr(os, "nice", lambda inc: niced.append(inc) or 0)
    assert realtime.raise_priority() == "nice -10 (real-time refused: Operation not permitted)"
    assert niced == [0, -10]
    monkeypatch.setattr(os, "nice", refused)
    assert realtime.raise_priority().startswith("normal")


def test_a_real_time_flight_process_starts_its_helpers_at_normal_priority(tmp_path):
    """The control loop is real time where allowed; the ghost and the page server (spawned from it)
    are not: they drop to normal scheduling and never compete with it."""
    import subprocess
    import sys
    script = ("import multiprocessing as mp, os\n"
              "from flight import realtime\n"
              "def child(q):\n"
              "    realtime.lower_priority(3)\n"
              "    q.put((os.sched_getscheduler(0), os.nice(0)))\n"
              "if __name__ == '__main__':\n"
              "    got = realtime.raise_priority()\n"
              "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,)); p.start()\n"
              "    print(got, os.sched_getscheduler(0) == os.SCHED_FIFO, q.get(timeout=60) == (os.SCHED_OTHER, os.nice(0) + 3))\n"
              "    p.join()\n")
    (tmp_path / "priorities.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "priorities.py")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))})
    assert out.returncode == 0, out.stderr
    words, is_fifo, child_normal = out.stdout.rsplit(" ", 2)
    if not words.startswith("real-time"):
        pytest.skip(f"this machine does not allow real-time priority here ({words})")
    assert is_fifo == "True" and child_normal.strip() == "True"
