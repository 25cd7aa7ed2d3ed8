"""Abuse: what a hostile or broken file, argument, disk or stand does must end in one clear line
(the file and the field named, exit status non-zero) or be handled, never a traceback, a hang,
lost rows or a limit switched off. Bounded: seeded inputs, a few hundred cases, loopback only,
every case well under a second."""
import contextlib
import errno
import json
import math
import os
import random
import time

import numpy as np
import pytest

from flight.course import CourseError, load_course, parse_course
from flight.safety import Limits
from skyloop.cli import main
from skyloop.inputs import read_json
from thrust_stand.driver import StandError, ThrottleLimitError, check_throttle
from thrust_stand.plans import PlanError, check_plan, load_plan

PLAN = {"format": "skyloop.stand_plan/1", "procedure": "sweep", "sample_rate_hz": 200, "idle_s": 0.1,
        "limits": {"max_throttle": 0.8, "max_current_a": 40.0, "max_thrust_n": 25.0},
        "sweep": {"throttle_min": 0.2, "throttle_max": 0.6, "levels": 4, "dwell_s": 0.3, "settle_s": 0.15,
                  "spin_down_s": 0.2}}
HALL = json.load(open(load_course("hall").path))
POLICIES = os.path.join(os.path.dirname(__file__), "..", "flight", "policies")

#: the ways a file can be unreadable, each as the bytes on disk
BAD_FILES = {
    "binary": bytes(range(256)) * 4,
    "utf16": json.dumps(PLAN).encode("utf-16"),
    "latin1": '{"notes": "caf\xe9"}'.encode("latin-1"),
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "truncated": json.dumps(PLAN).encode()[:-20],
    "empty": b"",
    "not_an_object": b"[1, 2, 3]",
    "a_string": b'"sweep"',
}


# ------------------------------------------------------------------ files handed to the CLI

@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unreadable_plan_is_one_error_line_naming_the_file(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.json"
    path.write_bytes(BAD_FILES[kind])
    start = time.monotonic()
    rc = main(["stand", "run", str(path), "--port", "sim", "--yes", "-o", str(tmp_path / "x.csv")])
    assert rc == 1 and time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unreadable_course_is_one_error_line_naming_the_file(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.json"
    path.write_bytes(BAD_FILES[kind])
    rc = main(["fly", "--course", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and str(path) in err, err


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unreadable_profile_is_a_clear_error_naming_the_file(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.json"
    path.write_bytes(BAD_FILES[kind])
    rc = main(["eval", os.path.join(POLICIES, "default.pt"), "--profile", str(path), "--episodes", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and f"profile {path}" in err, err


# ------------------------------------------------------------------ NaN, inf and out-of-range limits

@pytest.mark.parametrize("flag", ["--max-throttle", "--max-current-a", "--max-thrust-n"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "-1", "0"])
def test_a_stand_limit_that_is_not_a_finite_positive_number_is_refused(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stand", "run", "sweep", "--port", "sim", "--yes", flag, value, "-o", str(tmp_path / "x.csv")])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def _plan_with(path: str, value):
    data = json.loads(json.dumps(PLAN))
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    return data


@pytest.mark.parametrize("field", ["limits.max_throttle", "limits.max_current_a", "limits.max_thrust_n",
                                   "sweep.throttle_max", "sweep.dwell_s", "idle_s", "sample_rate_hz"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, True, "0.5", [0.5], None, 1e300])
def test_every_plan_number_is_finite_typed_and_in_range(field, value):
    with pytest.raises((PlanError, ThrottleLimitError)) as err:
        check_plan(_plan_with(field, value), "p.json")
    assert "p.json" in str(err.value)
    if not isinstance(err.value, ThrottleLimitError):
        assert field.split(".")[-1] in str(err.value)


def test_a_nan_limit_never_lets_a_throttle_through():
    for limit in (math.nan, math.inf, -0.5, 2.0):
        with pytest.raises(ThrottleLimitError):
            check_throttle(0.9, limit)
    with pytest.raises(ThrottleLimitError):
        check_throttle(math.nan, 0.8)


def test_a_billion_levels_are_refused_before_anything_is_allocated():
    start = time.monotonic()
    for levels in (1e9, 10**9, 10**400, -3, 2.5):
        with pytest.raises(PlanError, match="sweep.levels"):
            check_plan(_plan_with("sweep.levels", levels), "p.json")
    steps = {k: v for k, v in PLAN.items() if k != "sweep"}
    with pytest.raises(PlanError, match="steps.levels must list 2 to 1000 throttles"):
        check_plan({**steps, "procedure": "steps", "steps": {"levels": [0.3] * 100_000}}, "p.json")
    assert time.monotonic() - start < 1.0


def test_a_400_digit_integer_is_refused_by_its_field(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PLAN).replace('"levels": 4', '"levels": ' + "9" * 400))
    with pytest.raises(PlanError, match=r"p.json: .*sweep.levels must be a whole number"):
        load_plan(str(path))


@pytest.mark.parametrize("field,value", [("max_tilt_rad", math.nan), ("max_rate_rad_s", math.inf),
                                         ("geofence_margin_m", -1.0), ("link_timeout_s", 1e30),
                                         ("stale_telemetry_s", math.nan), ("battery_critical_v_per_cell", math.nan),
                                         ("max_tilt_rad", 4.0)])
def test_flight_safety_limits_must_be_finite_and_in_range(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


# ------------------------------------------------------------------ the policy contract

def _contract(**changes):
    from policy_export.contract import installed_layout
    values = {"format": "skyloop.onnx_policy/1", **installed_layout(), "action_mode": "ctbr",
              "action_scaling": {"rate_max_rad_s": 10.0}, "control_hz": 100.0, "recurrent": False, "state_size": 0}
    values.update(changes)
    return values


@pytest.mark.parametrize("changes,field", [
    ({"control_hz": 0.5}, "control_hz"), ({"control_hz": True}, "control_hz"), ({"control_hz": math.nan}, "control_hz"),
    ({"control_hz": 1e30}, "control_hz"), ({"control_hz": "100"}, "control_hz"),
    ({"action_scaling": {"rate_max_rad_s": 1e30}}, "rate_max_rad_s"),
    ({"action_scaling": {"rate_max_rad_s": [10.0, math.nan, 5.0]}}, "rate_max_rad_s[1]"),
    ({"action_scaling": {"rate_max_rad_s": -1}}, "rate_max_rad_s"),
    ({"action_scaling": "fast"}, "action_scaling"), ({"recurrent": "no"}, "recurrent"),
    ({"state_size": 10**12}, "state_size")])
def test_contract_values_out_of_range_are_refused(changes, field):
    from policy_export.contract import PolicyContractError, check_contract
    check_contract(_contract(), "p.onnx", ("ctbr",))                      # the unchanged contract flies
    with pytest.raises(PolicyContractError, match=rf"p.onnx: .*{field.replace('[', '.').replace(']', '.')}"):
        check_contract(_contract(**changes), "p.onnx", ("ctbr",))


def test_a_re_signed_contract_with_rate_max_1e30_is_refused_by_the_loader(tmp_path):
    onnx = pytest.importorskip("onnx")
    from flight.cli import default_policy
    from policy_export.contract import PolicyContractError, encode_metadata, load_policy, read_metadata
    src = default_policy("ctbr")
    props = read_metadata(src)
    values = json.loads(props["action_scaling"])
    values["rate_max_rad_s"] = 1e30
    model = onnx.load(src)
    edited = {k: v for k, v in props.items()}
    edited["action_scaling"] = json.dumps(values)
    edited = encode_metadata({k: (v if k in ("format", "action_mode", "sim_git_revision", "checkpoint_sha256")
                                  else json.loads(v)) for k, v in edited.items() if k != "contract_sha256"})
    del model.metadata_props[:]
    for key, value in edited.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    bad = str(tmp_path / "fast.onnx")
    onnx.save(model, bad)
    with pytest.raises(PolicyContractError, match="rate_max_rad_s"):
        load_policy(bad)


# ------------------------------------------------------------------ courses

def _grid_course(n: int) -> dict:
    side = int(math.ceil(math.sqrt(n)))
    gates = [{"centre_enu_m": [-90 + 2.0 * (k % side), -90 + 2.0 * (k // side), 2.0], "yaw_deg": 0.0,
              "inner_size_m": 1.0} for k in range(n)]
    return {**HALL, "bounds_m": {"min": [-100, -100, 0], "max": [100, 100, 8]},
            "start": {"pos_enu_m": [-95, -95, 0], "yaw_deg": 0}, "gates": gates}


def test_2000_gates_load_fast_and_10000_are_refused_at_once():
    start = time.monotonic()
    course = parse_course(_grid_course(2000), "big.json")
    assert len(course.gates) == 2000 and time.monotonic() - start < 3.0
    start = time.monotonic()
    with pytest.raises(CourseError, match="a course holds at most 5000"):
        parse_course(_grid_course(10_000), "huge.json")
    assert time.monotonic() - start < 1.0


def test_overlapping_gates_are_listed_but_capped():
    data = _grid_course(2000)
    for g in data["gates"]:
        g["centre_enu_m"] = [0.0, 0.0, 2.0]                       # all on one spot: 2 million overlapping pairs
    start = time.monotonic()
    with pytest.raises(CourseError, match="overlap") as err:
        parse_course(data, "stack.json")
    assert time.monotonic() - start < 3.0 and len(str(err.value).splitlines()) <= 22


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "..", "a/b\\c", "\x00x", 42, "", "." * 300])
def test_a_course_name_never_becomes_a_path(name):
    course = parse_course({**HALL, "name": name}, "hall.json")
    assert "/" not in course.name and "\\" not in course.name and not course.name.startswith(".")
    assert 0 < len(course.name) <= 64


@pytest.mark.parametrize("field,value", [("laps", 10**400), ("laps", True), ("laps", math.nan),
                                         ("bounds_m", {"min": [-1e300, -1e300, 0], "max": [1e300, 1e300, 8]}),
                                         ("bounds_m", {"min": [math.nan, 0, 0], "max": [1, 1, 1]}),
                                         ("start", {"pos_enu_m": [0, 0, 0], "yaw_deg": math.inf})])
def test_course_numbers_are_checked(field, value):
    with pytest.raises(CourseError, match=field.split("_")[0]):
        parse_course({**HALL, field: value}, "c.json")


# ------------------------------------------------------------------ fuzzed JSON: never a traceback

def _mutations(rng: random.Random, value, depth=0):
    """Random type swaps and extreme numbers inside a valid document."""
    if isinstance(value, dict):
        return {k: _mutations(rng, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutations(rng, v, depth + 1) for v in value]
    if rng.random() < 0.15:
        return rng.choice([math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, True, None, "x", [], {}, -1, 0])
    return value


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_plans_and_courses_raise_only_their_typed_errors(seed):
    rng = random.Random(seed)
    start = time.monotonic()
    for _ in range(100):
        try:
            check_plan(_mutations(rng, PLAN), "fuzz.json")
        except (PlanError, ThrottleLimitError) as exc:
            assert "fuzz.json" in str(exc)
        try:
            parse_course(_mutations(rng, HALL), "fuzz.json")
        except CourseError as exc:
            assert "fuzz.json" in str(exc)
    assert time.monotonic() - start < 10


def test_random_bytes_read_as_json_give_one_typed_error(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "noise.json"
    for k in range(50):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
        with pytest.raises(PlanError, match="noise.json"):
            value = read_json(str(path), PlanError)
            check_plan(value, str(path))


# ------------------------------------------------------------------ logs on a full disk

class FullDisk:
    """A raw file that accepts `ok_writes` writes, then fails with ENOSPC until `free()`."""

    def __init__(self, path, ok_writes):
        self.f = open(path, "wb", buffering=0)
        self.ok_writes, self.full = ok_writes, False

    def write(self, data):
        if self.ok_writes <= 0 and self.full is not None:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok_writes -= 1
        return self.f.write(data)

    def free(self):
        self.full = None

    def close(self):
        self.f.close()


def test_a_full_disk_never_raises_from_a_row_log_and_nothing_is_torn(tmp_path, monkeypatch):
    from skyloop import rowlog
    disks = []
    monkeypatch.setattr(rowlog, "open_raw", lambda p: disks.append(FullDisk(p, ok_writes=11)) or disks[-1])
    monkeypatch.setattr(rowlog.LogFile, "RETRY_S", 0.0)
    path = tmp_path / "flight.csv"
    log = rowlog.RowLogWriter(str(path), ("t_s", "x"), "skyloop.test/1")
    for k in range(100):
        log.write(t_s=k * 0.01, x=float(k))                     # header + 10 rows fit, then the disk is full
    assert log.fault and "No space left" in log.fault and log.rows == 100 and log.rows_lost == 90
    disks[0].free()                                              # space again: the buffered rows follow, in order
    log.write(t_s=1.0, x=100.0)
    log.finish("completed")
    data, meta = rowlog.read_row_log(str(path))
    assert data["x"].tolist() == [float(k) for k in range(101)]
    assert "No space left" in meta["log_fault"] and meta["rows_lost"] == 0


def test_rows_beyond_the_memory_bound_are_dropped_counted_and_reported(tmp_path, monkeypatch):
    from skyloop import rowlog
    monkeypatch.setattr(rowlog, "open_raw", lambda p: FullDisk(p, ok_writes=1))
    log = rowlog.RowLogWriter(str(tmp_path / "f.csv"), ("t_s",), "skyloop.test/1")
    log._file.max_pending_bytes = 1000
    for k in range(1000):
        log.write(t_s=float(k))
    log.finish("completed")
    meta = rowlog.read_sidecar(str(tmp_path / "f.csv"))
    assert meta["rows_lost"] == 1000 and "dropped while the buffer was full" in meta["log_fault"]


def test_a_stand_run_on_a_full_disk_stops_the_motor_and_says_why(tmp_path, monkeypatch):
    from skyloop import rowlog
    from thrust_stand.run import RunAborted, run_plan
    from thrust_stand.serial_stand import SerialStand
    from thrust_stand.simstand import SimulatedStand
    monkeypatch.setattr(rowlog, "open_raw", lambda p: FullDisk(p, ok_writes=20))
    plan = check_plan(PLAN, "p.json")
    with SimulatedStand("fpv5", seed=1) as stand:
        with pytest.raises(RunAborted, match="No space left"):
            run_plan(SerialStand(stand.port), plan, str(tmp_path / "full.csv"), png=False)
        deadline = time.monotonic() + 1.0
        while (stand.armed or stand.throttle) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not stand.armed and stand.throttle == 0


# ------------------------------------------------------------------ the stand's clock and a stalled host

def _recorder(tmp_path):
    from thrust_stand.log import StandLogWriter
    from thrust_stand.run import Recorder, StatusLine
    writer = StandLogWriter(str(tmp_path / "clock.csv"))
    from thrust_stand.driver import StandDriver
    return Recorder(writer, PLAN["limits"], StandDriver(), StatusLine(None)), writer


def _sample(seq, t_us):
    from thrust_stand.protocol import Sample
    return Sample(seq, t_us, 0.3, math.nan, 1000.0, 1.0, 0.01, 16.0, 2.0)


def test_one_sample_whose_clock_goes_backwards_is_dropped_not_taken_as_a_wrap(tmp_path):
    from skyloop.rowlog import read_row_log
    from thrust_stand.plans import Segment
    from thrust_stand.protocol import T_US_MOD
    rec, writer = _recorder(tmp_path)
    seg = Segment(0.3, 1.0, "x")
    rec.start_segment()
    times = [(T_US_MOD - 100_000 + 5000 * k) % T_US_MOD for k in range(40)]   # the clock wraps at k = 20
    times[5] = times[0] - 100_000                                # one glitch: 0.1 s before the first sample
    for k, t in enumerate(times):
        rec.add(_sample(k, t), seg, 1, 1)
    writer.finish("completed")
    t = read_row_log(str(tmp_path / "clock.csv"))[0]["t_s"]
    assert len(t) == len(times) - 1 and rec.stand.counters["clock_backwards"] == 1
    assert np.allclose(np.diff(t), [0.005] * 4 + [0.010] + [0.005] * 33)   # no +4294.7 s jump; the wrap followed
    assert t[-1] == pytest.approx(0.195)


def test_a_stand_clock_that_restarts_aborts_the_run(tmp_path):
    from thrust_stand.plans import Segment
    rec, writer = _recorder(tmp_path)
    rec.start_segment()
    with pytest.raises(StandError, match="clock went backwards"):
        for k, t in enumerate([5_000_000, 5_005_000, 100, 5100, 10100, 15100]):
            rec.add(_sample(k, t), Segment(0.3, 1.0, "x"), 1, 1)
    writer.finish("aborted")


def test_after_a_host_stall_the_samples_already_received_are_read_first(tmp_path):
    from thrust_stand.serial_stand import SerialStand
    from thrust_stand.simstand import SimulatedStand
    with SimulatedStand("fpv5", seed=1) as stand:
        with SerialStand(stand.port) as driver:
            driver.arm(100)
            driver.set_throttle(0.2)
            got = driver.read_samples(0.05)
            time.sleep(0.6)                                      # the host stalls; the stand's watchdog stops it
            samples = []
            with pytest.raises(StandError):
                for _ in range(200):
                    samples += driver.read_samples(0.02)
        assert len(samples) >= 20, "the samples sent during the stall must be read, not dropped"
        seqs = [s.seq for s in got + samples]
        assert seqs == sorted(seqs) and driver.counters["missed_samples"] == 0
        assert stand.watchdog_trips and not stand.armed


# ------------------------------------------------------------------ flights: a full disk, a lossy link, bad parameters
# lockstep: the runner's clock is the simulated vehicle's sim time (flight/link.py LockstepClock), so a busy
# machine changes nothing

SHORT = {"format": "skyloop.course/1", "name": "short", "bounds_m": {"min": [-6, -6, 0], "max": [10, 8, 5]},
         "start": {"pos_enu_m": [3.0, 2.0, 0.0], "yaw_deg": 135.0}, "laps": 1,
         "gates": [{"centre_enu_m": [3.0, 6.0, 1.5], "yaw_deg": 90, "inner_size_m": 1.5},
                   {"centre_enu_m": [-2.0, 4.0, 1.5], "yaw_deg": 200, "inner_size_m": 1.5}]}


class LossyProxy:
    """A loopback UDP relay between the vehicle and the link that drops `loss` of the packets each way
    (seeded) and every vehicle HEARTBEAT numbered in `drop_heartbeats`."""

    def __init__(self, target_port: int, loss: float, drop_heartbeats=range(0), seed: int = 5):
        import socket
        import threading
        self.vehicle_side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.vehicle_side.bind(("127.0.0.1", 0))
        self.link_side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.link_side.bind(("127.0.0.1", 0))
        self.port = self.vehicle_side.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        self.loss, self.drop_heartbeats, self.rng = loss, set(drop_heartbeats), random.Random(seed)
        self.heartbeats = self.dropped = self.passed = 0
        self.vehicle_addr = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import select
        while not self._stop.is_set():
            ready, _, _ = select.select([self.vehicle_side, self.link_side], [], [], 0.05)
            for sock in ready:
                data, addr = sock.recvfrom(65536)
                if sock is self.vehicle_side:
                    self.vehicle_addr = addr
                    if data[:1] == b"\xfd" and len(data) > 9 and data[7:10] == b"\x00\x00\x00":   # HEARTBEAT
                        self.heartbeats += 1
                        if self.heartbeats in self.drop_heartbeats:
                            self.dropped += 1
                            continue
                    out, to = self.link_side, self.target
                else:
                    out, to = self.vehicle_side, self.vehicle_addr
                if to is None or self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                self.passed += 1
                out.sendto(data, to)

    def close(self):
        self._stop.set()
        self._thread.join(1.0)
        self.vehicle_side.close()
        self.link_side.close()


@contextlib.contextmanager
def _flight(tlog_path=None, loss=None, drop_heartbeats=range(0), before_link=lambda vehicle: None, **sitl):
    """(course, vehicle, link, policy, profile, proxy), in lockstep; before_link(vehicle) runs before the link opens."""
    from flight.cli import default_policy
    from flight.connection import parse_connection
    from flight.link import MavLink
    from flight.sitl import SitlVehicle
    from policy_export import load_policy
    from sim.profiles import load_profile
    course = parse_course(SHORT)
    prof = load_profile("crazyflie21")
    policy = load_policy(default_policy("ctbr"), action_modes=("ctbr",))
    link_port = _free_port()
    proxy = LossyProxy(link_port, loss, drop_heartbeats) if loss is not None else None
    vehicle_port = proxy.port if proxy else link_port
    try:
        with SitlVehicle(prof, f"udpout:127.0.0.1:{vehicle_port}", "ardupilot", course.start_pos_enu_m,
                         course.start_yaw_rad, lockstep=True, origin="course", **sitl) as vehicle:
            before_link(vehicle)
            with MavLink(parse_connection(f"udpin:127.0.0.1:{link_port}"), "ardupilot", "ctbr",
                         policy.metadata["action_scaling"]["rate_max_rad_s"], tlog_path=tlog_path,
                         lockstep=True) as link:
                yield course, vehicle, link, policy, prof, proxy
    finally:
        if proxy:
            proxy.close()


def _free_port():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quiet:
    def show(self, *a, **k):
        pass

    def done(self):
        pass


class FullThenFree(FullDisk):
    """Accepts `ok_writes`, then fails with ENOSPC for `full_s` seconds of `clock()`, then has space again."""

    def __init__(self, path, ok_writes, full_s, clock=time.monotonic):
        super().__init__(path, ok_writes)
        self.full_s, self.full_until, self.clock = full_s, None, clock

    def write(self, data):
        if self.ok_writes <= 0:
            self.full_until = self.full_until or self.clock() + self.full_s
            if self.clock() < self.full_until:
                raise OSError(errno.ENOSPC, "No space left on device")
        self.ok_writes -= 1
        return self.f.write(data)


def test_a_full_disk_mid_flight_never_stops_the_control_loop_and_the_landing_is_logged(tmp_path, monkeypatch):
    from flight.runner import fly_course
    from skyloop import rowlog
    log_path, tlog = str(tmp_path / "f.csv"), str(tmp_path / "f.tlog")

    def full_disk(vehicle):                  # full for 2 s of the flight's time: the vehicle's sim time in lockstep
        monkeypatch.setattr(rowlog, "open_raw", lambda p: FullThenFree(p, ok_writes=150, full_s=2.0,
                                                                        clock=lambda: vehicle.sim_time_s))
    with _flight(tlog, before_link=full_disk) as (course, vehicle, link, policy, prof, _):
        result = fly_course(link, policy, course, prof, log_path, status=Quiet(), max_time_s=5)
        assert result.failsafe.startswith("time limit"), result.failsafe     # flown to the end, not aborted
        assert not vehicle.armed and vehicle.state()["pos_enu_m"][2] < 0.1, "landed and disarmed"
        assert "No space left" in result.log_fault and "f.csv" in result.log_fault
    data, meta = rowlog.read_row_log(log_path)
    assert meta["rows_lost"] == 0 and "No space left" in meta["log_fault"]     # the space came back: all rows
    assert meta["ended"].startswith("failsafe: time limit")
    phases = data["phase"]
    assert phases.index("landing") == result.ticks and set(phases[result.ticks:]) == {"landing"}
    assert data["armed"][-1] == 0 and data["armed"][result.ticks] == 1, "logged from the failsafe until disarmed"
    assert data["pos_enu_m_z"][-1] < 0.1


def test_lost_heartbeats_and_5_percent_packet_loss_do_not_end_a_flight(tmp_path):
    from flight.runner import fly_course
    with _flight(loss=0.05, drop_heartbeats=range(20, 40)) as (course, vehicle, link, policy, prof, proxy):
        result = fly_course(link, policy, course, prof, str(tmp_path / "f.csv"), status=Quiet(), max_time_s=5)
    assert proxy.dropped > 100 and proxy.heartbeats > 40, (proxy.dropped, proxy.heartbeats)
    assert result.failsafe.startswith("time limit"), result.failsafe            # not "link lost"


def test_the_link_asks_for_heartbeats_at_10_hz_so_a_mode_change_is_seen_within_a_tenth(tmp_path):
    from flight.link import STREAMS_HZ
    assert STREAMS_HZ["HEARTBEAT"] >= 10
    with _flight() as (course, vehicle, link, policy, prof, _):
        deadline = time.monotonic() + 3.0
        while vehicle.rates_hz.get("HEARTBEAT") != STREAMS_HZ["HEARTBEAT"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vehicle.rates_hz["HEARTBEAT"] == STREAMS_HZ["HEARTBEAT"]


def test_a_lost_stream_rate_request_is_sent_again(monkeypatch):
    """One lost SET_MESSAGE_INTERVAL for HEARTBEAT (a lossy link) left the heartbeat at 1 Hz: the
    vehicle's own failsafe was then seen up to a second late."""
    from flight.link import STREAMS_HZ, mav        # the link's MAVLink module (MAVLink 2, its dialect)
    dropped = []
    send = mav.MAVLink.command_long_send

    def lose_the_first_heartbeat_request(self, system, component, command, confirmation, msg_id, *rest, **kw):
        if command == mav.MAV_CMD_SET_MESSAGE_INTERVAL and msg_id == mav.MAVLINK_MSG_ID_HEARTBEAT and not dropped:
            dropped.append(confirmation)
            return None
        return send(self, system, component, command, confirmation, msg_id, *rest, **kw)
    monkeypatch.setattr(mav.MAVLink, "command_long_send", lose_the_first_heartbeat_request)
    with _flight() as (course, vehicle, link, policy, prof, _):
        assert dropped and vehicle.rates_hz["HEARTBEAT"] == STREAMS_HZ["HEARTBEAT"]


@pytest.mark.parametrize("name,value", [("LAND_SPEED", -300.0), ("GUID_TIMEOUT", 1e30), ("GUID_TIMEOUT", 0.0),
                                        ("MOT_THST_HOVER", 5.0), ("WPNAV_SPEED_DN", 1e9)])
def test_the_simulated_vehicle_refuses_out_of_range_parameters(name, value):
    from flight.sitl.vehicle import PARAM_RANGES, param_problem
    assert name in PARAM_RANGES and "outside" in param_problem(name, value)
    assert param_problem(name, float("nan")) is not None
    lo, hi = PARAM_RANGES[name]
    assert param_problem(name, (lo + hi) / 2) is None


def test_a_param_set_out_of_range_reads_back_unchanged_over_mavlink():
    from flight.link import mav
    with _flight() as (course, vehicle, link, policy, prof, _):
        before = dict(vehicle.params)
        for name, value in (("LAND_SPEED", -300.0), ("GUID_TIMEOUT", 1e30), ("GUID_TIMEOUT", 0.3)):
            link.master.mav.param_set_send(1, 1, name.encode(), value, mav.MAV_PARAM_TYPE_REAL32)
        deadline = time.monotonic() + 3.0
        while vehicle.params["GUID_TIMEOUT"] != pytest.approx(0.3) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert vehicle.params["GUID_TIMEOUT"] == pytest.approx(0.3)        # in range: set
        assert vehicle.params["LAND_SPEED"] == before["LAND_SPEED"]         # -300 would climb: refused


@pytest.mark.parametrize("kwargs", [{"setpoint_timeout_s": math.nan}, {"setpoint_timeout_s": 1e30},
                                    {"battery_soc": math.nan}, {"battery_soc": 2.0}])
def test_the_simulated_vehicle_refuses_bad_failsafe_and_battery_settings(kwargs):
    from flight.sitl.vehicle import SitlError, Vehicle
    with pytest.raises(SitlError):
        Vehicle("crazyflie21", **kwargs)


@pytest.mark.parametrize("args", [["--setpoint-timeout", "nan"], ["--battery", "nan"], ["--battery", "inf"],
                                  ["--start", "0", "0", "nan", "0"]])
def test_sitl_cli_refuses_non_finite_settings(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sitl"] + args)
    assert exit_.value.code == 2 and args[0] in capsys.readouterr().err


def test_two_runs_in_the_same_second_get_their_own_log_files(tmp_path):
    from skyloop.rowlog import reserve_log_path
    paths = {reserve_log_path(str(tmp_path), "hall") for _ in range(5)}
    assert len(paths) == 5 and all(os.path.exists(p) for p in paths)
    for bad in ("../up", "/abs", ".hidden", ""):
        with pytest.raises(ValueError):
            reserve_log_path(str(tmp_path), bad)


def test_a_stand_that_does_not_open_leaves_no_empty_log_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["stand", "run", "tare", "--port", str(tmp_path / "no_such_tty")])
    assert rc == 1 and "cannot open" in capsys.readouterr().err
    assert not (tmp_path / "stand_logs").exists() or not os.listdir(tmp_path / "stand_logs")
