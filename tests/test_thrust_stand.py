"""The thrust stand through a real pseudo-terminal with pyserial: procedures, safety stops, logging,
the Tyto importer and the CLI. The simulated stand runs the sim's own motor model."""
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import serial

from skyloop.cli import main
from thrust_stand.driver import ThrottleLimitError
from thrust_stand.log import read_stand_log
from thrust_stand.plans import PlanError, check_plan, load_plan
from thrust_stand.protocol import FrameError, crc16, decode, encode
from thrust_stand.run import RunAborted, run_plan
from thrust_stand.serial_stand import SerialStand
from thrust_stand.simstand import CORRUPT_THRUST, SimulatedStand

TYTO = "tyto_6x3prop_2300KV_RampTest_2024-07-21_144641.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def stand():
    with SimulatedStand("fpv5", seed=1) as sim:
        yield sim


def short_plan(tmp_path, procedure="sweep", **section) -> str:
    """A quick plan file (sweep by default: 4 levels up and down, 0.3 s each, at 200 Hz)."""
    defaults = {"sweep": {"throttle_min": 0.2, "throttle_max": 0.6, "levels": 4, "dwell_s": 0.3, "settle_s": 0.15,
                          "spin_down_s": 0.2}}
    plan = {"format": "skyloop.stand_plan/1", "procedure": procedure, "sample_rate_hz": 200, "tare_first": True, "idle_s": 0.2,
            "limits": {"max_throttle": 0.8, "max_current_a": 40.0, "max_thrust_n": 25.0},
            procedure: {**defaults.get(procedure, {}), **section}}
    path = tmp_path / f"{procedure}_plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


def csv_rows(path) -> int:
    return sum(1 for _ in open(path)) - 1


def wait_for(condition, timeout_s=1.0):
    """condition() once true (the stand's thread records commands a moment after they are sent)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def after(seconds, action):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


# ---------------------------------------------------------------- protocol

def test_frames_round_trip_and_the_checksum_is_crc16_ccitt_false():
    assert crc16(b"123456789") == 0x29B1          # the standard check value, as PROTOCOL.md says
    frame = encode("THR", 7, 350)
    assert frame.startswith(b"$THR,7,350*") and frame.endswith(b"\n")
    assert decode(frame) == ["THR", "7", "350"]
    with pytest.raises(FrameError) as bad:
        decode(frame.replace(b"350", b"950"))
    assert bad.value.kind == "checksum"
    for junk in (b"hello", b"$THR,7*ZZZZ", b"$*", b"\xff\xfe"):
        with pytest.raises(FrameError) as bad:
            decode(junk)
        assert bad.value.kind == "malformed"


# ---------------------------------------------------------------- procedures

def test_full_sweep_through_the_cli_writes_log_sidecar_and_picture(stand, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    rc = main(["stand", "run", short_plan(tmp_path), "--port", stand.port, "--yes", "-o", str(out),
               "--motor", "2306 1900KV", "--json"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    log = read_stand_log(str(out))
    assert log.meta["ended"] == "completed" and log.meta["procedure"] == "sweep"
    assert log.meta["motor"] == "2306 1900KV" and log.meta["firmware"] == "skyloop-simstand/1"
    assert log.meta["samples"] == len(log) == report["rows"]
    assert 0.8 * 2.5 * 200 < len(log) < 1.2 * 2.5 * 200   # idle 0.2 s, 7 levels x 0.3 s, spin-down 0.2 s at 200 Hz
    assert np.all(np.diff(log.data["t_s"]) > 0) and np.allclose(np.median(np.diff(log.data["t_s"])), 0.005)
    assert Path(report["png"]).read_bytes()[:8] == PNG_MAGIC
    # averaged points: up and down, thrust = kf w^2 of the simulated motor
    points = log.meta["points"]
    assert [p["label"] for p in points] == ["up 1/4", "up 2/4", "up 3/4", "up 4/4", "down 1/3", "down 2/3", "down 3/3"]
    thrust = [p["thrust_n"] for p in points[:4]]
    assert np.all(np.diff(thrust) > 0)
    omega = np.array([p["rpm"] for p in points]) * np.pi / 30
    kf = np.array([p["thrust_n"] for p in points]) / omega ** 2
    assert np.allclose(kf, stand.profile.params["kf_n_per_rad2s2"], rtol=0.05)
    # it ended with throttle 0 and the ESC disarmed
    assert wait_for(lambda: not stand.armed and stand.first_command("STOP") is not None)


def test_steps_procedure_gives_the_calibration_the_motor_tau_and_delay(stand, tmp_path):
    from calibration.data import load_log, screen_log
    from calibration.steps import fit_steps
    result = run_plan(SerialStand(stand.port), load_plan("steps"), str(tmp_path / "steps.csv"), png=False)
    assert result.completed
    log = read_stand_log(result.log_path)
    dt = float(np.median(np.diff(log.data["t_s"])))
    assert dt == pytest.approx(0.001), "steps run at the stand's highest rate"
    fits = {f.field: f.value for f in fit_steps([screen_log(load_log(result.log_path))])}
    truth = stand.profile.params
    assert fits["motor_tau_up_s"] == pytest.approx(truth["motor_tau_up_s"], rel=0.10)
    assert fits["motor_tau_down_s"] == pytest.approx(truth["motor_tau_down_s"], rel=0.10)
    assert abs(fits["motor_delay_s"] - truth["motor_delay_s"]) <= dt


def test_tare_never_spins_the_motor(stand, tmp_path):
    result = run_plan(SerialStand(stand.port), load_plan(short_plan(tmp_path, "tare", record_s=0.3)),
                      str(tmp_path / "tare.csv"), png=False)
    log = read_stand_log(result.log_path)
    assert result.completed and len(log) > 40
    assert not any(k in ("ARM", "THR") for _t, k, _f in stand.commands)
    assert np.all(log.data["rpm"] == 0) and abs(np.mean(log.data["thrust_n"])) < 0.02   # tared (0.05 N before)


# ---------------------------------------------------------------- safety

def test_unplugging_mid_run_aborts_and_keeps_every_received_row(stand, tmp_path):
    stand_driver = SerialStand(stand.port)
    timer = after(0.6, stand.unplug)
    with pytest.raises(RunAborted, match="went away") as aborted:
        run_plan(stand_driver, load_plan(short_plan(tmp_path)), str(tmp_path / "cut.csv"))
    timer.join()
    result = aborted.value.result
    log = read_stand_log(result.log_path)                  # still a valid CSV
    assert log.meta["ended"].startswith("aborted") and "went away" in log.meta["ended"]
    assert len(log) == result.rows == stand_driver.counters["samples"] > 50   # every received sample on disk
    assert csv_rows(result.log_path) == len(log)
    assert Path(result.png_path).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(serial.SerialException):            # the port is gone: nothing can spin it now
        serial.Serial(stand.port, 115200, timeout=0.1).read(1)


def test_corrupted_lines_and_bad_checksums_are_counted_and_never_written(stand, tmp_path):
    stand.corrupt_every(10)
    junk = [b"# firmware debug text: ignored\n", b"garbage\n", b"$S,1,2,3*ZZZZ\n", b"$S,5*0000\n", b"\xff\xfe\n"]
    timers = [after(0.3 + 0.1 * k, lambda raw=raw: stand.inject(raw)) for k, raw in enumerate(junk)]
    result = run_plan(SerialStand(stand.port), load_plan(short_plan(tmp_path)), str(tmp_path / "noisy.csv"), png=False)
    for t in timers:
        t.join()
    log = read_stand_log(result.log_path)
    counters = log.meta["counters"]
    assert result.completed
    assert float(CORRUPT_THRUST) not in log.data["thrust_n"]
    assert np.nanmax(log.data["thrust_n"]) < 20
    # every corrupted sample sent during the run was dropped (the last ones may come after the host stopped reading)
    assert stand.corrupted_sent - 3 <= counters["bad_checksum"] - 1 <= stand.corrupted_sent
    assert counters["malformed"] == 3                      # garbage, a non-hex checksum, a one-field sample
    assert abs(counters["missed_samples"] - (counters["bad_checksum"] - 1)) <= 1   # dropped samples leave seq gaps
    assert len(log) == counters["samples"]


def test_a_throttle_above_the_limit_is_refused_before_anything_is_sent(stand, tmp_path, capsys):
    rc = main(["stand", "run", short_plan(tmp_path), "--port", stand.port, "--yes", "--max-throttle", "0.5",
               "-o", str(tmp_path / "refused.csv")])
    assert rc == 1 and "above this run's limit of 0.5" in capsys.readouterr().err
    time.sleep(0.05)
    assert stand.commands == [] and not (tmp_path / "refused.csv").exists()
    # and in the driver: refused before the line is written
    with SerialStand(stand.port, max_throttle=0.5) as driver:
        driver.arm(100)
        with pytest.raises(ThrottleLimitError):
            driver.set_throttle(0.6)
        driver.set_throttle(0.5)
        driver.read_samples(0.05)
    assert wait_for(lambda: [f[2] for _t, k, f in stand.commands if k == "THR"] == ["500", "0"])


def test_a_current_above_the_limit_stops_the_run(stand, tmp_path, capsys):
    out = tmp_path / "overcurrent.csv"
    rc = main(["stand", "run", short_plan(tmp_path), "--port", stand.port, "--yes", "--max-current-a", "2", "-o", str(out)])
    assert rc == 1 and "above the limit of 2 A" in capsys.readouterr().err
    log = read_stand_log(str(out))
    assert log.meta["ended"].startswith("aborted: current") and log.data["current_a"][-1] > 2   # the row that tripped it
    assert np.all(log.data["current_a"][:-1] <= 2)
    assert wait_for(lambda: not stand.armed and stand.throttle == 0)


def test_spinning_needs_confirmation(stand, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    rc = main(["stand", "run", short_plan(tmp_path), "--port", stand.port, "-o", str(tmp_path / "x.csv")])
    assert rc == 1 and "--yes" in capsys.readouterr().err
    assert stand.commands == []


def test_ctrl_c_stops_the_motor_and_records_the_interruption(stand, tmp_path):
    import _thread
    import signal
    # a background job (CI, nohup) may start with SIGINT ignored, where interrupt_main does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_run(stand, tmp_path, _thread)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_run(stand, tmp_path, _thread):
    pressed = []
    timer = after(0.8, lambda: (pressed.append(time.monotonic()), _thread.interrupt_main()))
    with pytest.raises(KeyboardInterrupt):
        run_plan(SerialStand(stand.port), load_plan(short_plan(tmp_path)), str(tmp_path / "ctrl_c.csv"), png=False)
    timer.join()
    log = read_stand_log(str(tmp_path / "ctrl_c.csv"))
    assert log.meta["ended"] == "aborted: interrupted (Ctrl-C)" and len(log) > 50
    assert log.data["throttle"][-1] >= 0.2, "the motor was spinning when Ctrl-C came"
    assert wait_for(lambda: stand.first_command("THR", pressed[0], "0") and stand.first_command("STOP", pressed[0]))
    assert not stand.armed and stand.throttle == 0


def test_sample_loss_stops_the_motor_within_the_bound(stand, tmp_path):
    timer = after(0.5, stand.go_silent)
    with pytest.raises(RunAborted, match="no sample"):
        run_plan(SerialStand(stand.port), load_plan(short_plan(tmp_path)), str(tmp_path / "silent.csv"), png=False)
    timer.join()
    silence_s = stand.last_sample_sent_s
    stop_s = wait_for(lambda: stand.first_command("THR", since_s=silence_s, arg="0"))
    assert stop_s is not None, "throttle 0 must be commanded"
    latency_s = stop_s - silence_s
    print(f"sample loss -> throttle 0 received by the stand: {latency_s * 1000:.0f} ms")
    assert 0.25 <= latency_s <= 0.35
    # STOP follows THR 0 on the wire; the stand's thread records it a moment later
    assert wait_for(lambda: stand.first_command("STOP", since_s=silence_s) is not None)
    log = read_stand_log(str(tmp_path / "silent.csv"))
    assert log.meta["ended"].startswith("aborted: no sample")


def test_the_stand_stops_the_motor_when_the_host_goes_quiet(stand):
    port = serial.Serial(stand.port, 115200, timeout=0.2)
    for seq, (kind, *args) in enumerate([("HELLO",), ("RATE", 100), ("ARM",), ("THR", 300)], start=1):
        port.write(encode(kind, seq, *args))
    deadline = time.monotonic() + 1.0
    while not stand.watchdog_trips and time.monotonic() < deadline:
        time.sleep(0.01)
    port.close()
    assert stand.watchdog_trips, "the stand's watchdog should trip"
    latency_s = stand.watchdog_trips[0] - stand.commands[-1][0]
    print(f"host silent -> stand throttle 0: {latency_s * 1000:.0f} ms")
    assert 0.25 <= latency_s <= 0.3 and stand.throttle == 0 and not stand.armed


def test_plans_are_checked_and_say_what_is_wrong(tmp_path):
    good = json.loads(Path(short_plan(tmp_path)).read_text())
    with pytest.raises(PlanError, match=r"unknown field\(s\) \['speed'\]; limits.max_current_a must be a positive"):
        check_plan({**good, "limits": {"max_throttle": 0.8, "max_thrust_n": 20}, "speed": 3}, "p.json")
    with pytest.raises(PlanError, match="sweep: unknown field.*dwel_s"):
        check_plan({**good, "sweep": {"dwel_s": 1}}, "p.json")
    with pytest.raises(ThrottleLimitError, match="segment 'up 4/4'"):
        check_plan({**good, "limits": {**good["limits"], "max_throttle": 0.5}}, "p.json")
    assert [s.throttle for s in load_plan("endurance").segments()] == [0.0, 0.5, 0.0]   # idle, hold, spin down


# ---------------------------------------------------------------- MAVLink driver

def _fake_flight_controller(port: int, motor: SimulatedStand, stop: threading.Event, commands: list):
    """ArduPilot as the stand sees it: HEARTBEAT, ESC_TELEMETRY_1_TO_4 of the simulated motor, and
    DO_MOTOR_TEST driving it."""
    from pymavlink import mavutil
    from thrust_stand.mavlink_stand import mavlink2_connection
    mav = mavlink2_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    m = mavutil.mavlink
    next_hb = next_telemetry = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_hb:
            mav.mav.heartbeat_send(m.MAV_TYPE_QUADROTOR, m.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0)
            next_hb = now + 0.1
        if now >= next_telemetry:
            rpm = int(motor._omega * 30 / np.pi)
            mav.mav.esc_telemetry_1_to_4_send([30, 0, 0, 0], [2450, 0, 0, 0], [int(100 * motor._current_a), 0, 0, 0],
                                              [0] * 4, [rpm, 0, 0, 0], [1, 0, 0, 0])
            next_telemetry = now + 0.02
        msg = mav.recv_match(type="COMMAND_LONG", blocking=True, timeout=0.005)
        if msg is not None:
            commands.append(msg)
            if msg.command == m.MAV_CMD_DO_MOTOR_TEST:
                motor.drive(msg.param3 / 100.0)
            mav.mav.command_ack_send(msg.command, m.MAV_RESULT_ACCEPTED)
    mav.close()


def test_mavlink_stand_drives_a_motor_test_and_merges_esc_telemetry_with_the_load_cell(stand, tmp_path,
                                                                                      free_udp_port):
    from thrust_stand.stands import open_stand
    port, stop, commands = free_udp_port(), threading.Event(), []
    fc = threading.Thread(target=_fake_flight_controller, args=(port, stand, stop, commands), daemon=True)
    fc.start()
    try:
        driver = open_stand(f"mavlink:udpin:127.0.0.1:{port}", load_cell=stand.port, max_throttle=0.8)
        result = run_plan(driver, load_plan(short_plan(tmp_path, levels=2, dwell_s=0.4)), str(tmp_path / "fc.csv"),
                          png=False)
    finally:
        stop.set()
        fc.join()
    log = read_stand_log(result.log_path)
    assert result.completed and log.meta["stand"]["driver"] == "mavlink"
    tests = [c for c in commands if c.command == 209]
    assert {(c.param1, c.param2, c.param6) for c in tests} == {(1.0, 0.0, 2.0)}   # output 1, percent, board order
    assert {round(c.param3, 3) for c in tests} >= {20.0, 60.0} and tests[-1].param3 == 0
    assert any(c.command == 511 and c.param1 == 11030 for c in commands)          # ESC telemetry requested
    spinning = log.data["throttle"] >= 0.6
    assert np.nanmedian(log.data["voltage_v"]) == pytest.approx(24.5)             # from ESC_TELEMETRY (cV)
    assert np.nanmedian(log.data["rpm"][spinning]) > 15000                        # from ESC_TELEMETRY
    assert np.nanmedian(log.data["thrust_n"][spinning]) > 5                       # from the load cell


# ---------------------------------------------------------------- Tyto import and the CLI

def test_tyto_export_imports_in_si_with_units_from_the_header(tmp_path, capsys, real_data):
    out = tmp_path / "tyto.csv"
    assert main(["stand", "import", real_data(TYTO), "-o", str(out)]) == 0
    assert "Motor Optical Speed (RPM)" in capsys.readouterr().out
    log = read_stand_log(str(out))
    d = log.data
    assert len(log) == 141 and log.meta["source_format"] == "tyto"
    assert d["t_s"][0] == pytest.approx(0.220378) and d["esc_us"].min() == 1000 and d["esc_us"].max() > 1850
    assert 9.0 < np.nanmax(d["thrust_n"]) < 10.0                  # N, a 6x3 prop at full power
    assert 0.09 < np.nanmax(d["torque_nm"]) < 0.11
    assert 29000 < np.nanmax(d["rpm"]) < 31000 and 15 < np.nanmin(d["voltage_v"]) < np.nanmax(d["voltage_v"]) < 17
    assert 25 < np.nanmax(d["current_a"]) < 32


def test_tyto_units_other_than_si_are_converted_and_unknown_units_refused(tmp_path):
    from thrust_stand.tyto import TytoImportError, read_tyto
    path = tmp_path / "gf.csv"
    path.write_bytes("Time (s),Thrust (gf),Torque (kgf·cm),Motor Electrical Speed (rad/s),App message,\n"
                     "0.5,1000,10,100,armed,\n1.0,500,5,50,,\n".encode("utf-8-sig"))
    d = read_tyto(str(path)).data
    assert d["thrust_n"] == pytest.approx([9.80665, 4.903325])
    assert d["torque_nm"] == pytest.approx([0.980665, 0.4903325])
    assert d["rpm"] == pytest.approx([100 * 30 / np.pi, 50 * 30 / np.pi])
    path.write_bytes("Time (s),Thrust (stone)\n0,1\n".encode("utf-8-sig"))
    with pytest.raises(TytoImportError, match="unit 'stone' unknown"):
        read_tyto(str(path))


def test_stand_cli_help_and_plans(capsys):
    for argv in (["stand", "--help"], ["stand", "run", "--help"], ["stand", "import", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "run" in text and "import" in text and "--max-throttle" in text and "--yes" in text
    assert main(["stand", "plan", "steps"]) == 0
    assert json.loads(capsys.readouterr().out)["procedure"] == "steps"
    assert main(["stand", "run", "nonsense", "--port", "/dev/null"]) == 1
    assert "no plan 'nonsense'" in capsys.readouterr().err
    assert main(["stand", "run", "tare", "--port", "/dev/does-not-exist,115200", "--yes"]) == 1
    assert "cannot open the stand" in capsys.readouterr().err
