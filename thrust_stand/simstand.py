"""A simulated stand on a pseudo-terminal: speaks PROTOCOL.md, backed by the sim's motor model.

    stand = SimulatedStand("fpv5").start()       # a thread; stand.port is the pty's device path
    ... `skyloop stand run sweep --port <stand.port>` ...
    stand.close()

The motor is `sim.core.motor_response` (the profile's throttle curve, pure delay and up/down lag,
with the battery ratio), stepped every TICK_S; the pure delay is kept here as a FIFO of commands
so the model can be advanced chunk by chunk in real time. Sensors: rpm (0.3 % + 5 rpm noise,
reads 0 below ~500 rpm like an optical sensor), load cells for thrust kf*w^2 and torque km*w^2
(noise, an offset until TARE), a battery with internal resistance and charge (voltage sags with
current and with charge used), current = idle + mechanical power / (efficiency * voltage). The
default resistance (5 mOhm per cell) is a large pack or a bench supply: a sagging battery makes
the speed target fall during a step up, so a step fit then reads tau_up short (about 11 % at
20 mOhm per cell on the fpv5 motor).

Row convention (as in `calibration.synthetic`): a sample at tick k holds the throttle in force
during tick k and the rotor speed at the start of tick k.

Fault injection for tests: `corrupt_every(n)`, `inject(raw_bytes)`, `go_silent()`, `unplug()`.
What happened is recorded: `commands` (monotonic time, type, fields), `samples_sent`,
`corrupted_sent`, `last_sample_sent_s`, `watchdog_trips`.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import select
import threading
import time
import tty

import numpy as np

from thrust_stand.protocol import (SEQ_MOD, THROTTLE_SCALE, WATCHDOG_S, FrameError, LineSplitter, Sample, decode,
                                   encode, encode_sample)

log = logging.getLogger(__name__)

TICK_S = 0.001               # model step; sample rates are 1000 / whole number
MAX_RATE_HZ = 1000
STAND_HEARTBEAT_S = 0.1
MAX_CATCH_UP_TICKS = 500     # after a long stall (a suspended process) the stand skips ahead
RPM_PER_RAD_S = 60.0 / (2.0 * math.pi)
FIRMWARE = "skyloop-simstand/1"
CORRUPT_THRUST = b"999"      # what corrupt_every() puts in the thrust field: never to be logged


class SimulatedStand:
    def __init__(self, profile="fpv5", *, seed: int = 0, noise: bool = True, battery_cells: int | None = None,
                 battery_capacity_ah: float = 1.3, battery_r_ohm_per_cell: float = 0.005, efficiency: float = 0.8):
        from sim.profiles import Profile, load_profile
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        p = self.profile.params
        self._params = dict(p, motor_delay_s=0.0)          # the delay is the FIFO below
        self._delay_ticks = int(round(p["motor_delay_s"] / TICK_S))
        self._fifo = collections.deque([0.0] * self._delay_ticks)
        self._rng = np.random.default_rng(seed)
        self._noise = 1.0 if noise else 0.0
        self.cells = battery_cells or max(1, round(p["battery_v_nominal"] / 3.7))
        self._capacity_c = battery_capacity_ah * 3600.0
        self._r_ohm = battery_r_ohm_per_cell * self.cells
        self._efficiency = efficiency
        self._charge_used_c = 0.0
        self._current_a = 0.0
        self._omega = 0.0
        self._thrust_offset_n, self._torque_offset_nm = 0.05, 0.002   # until TARE
        # protocol state
        self.armed = False
        self.throttle = 0.0          # in force now
        self._period_ticks = 0       # 0: not streaming
        self._sample_seq = 0
        self._hb_seq = 0
        self._ticks = 0
        self._last_cmd_s = 0.0
        self._last_hb_s = 0.0
        self._external = False       # driven by drive() (as a MAVLink test's motor), not by commands
        # fault injection and records
        self._corrupt_every = 0
        self._silent = False
        self._inject: list[bytes] = []
        self.commands: list[tuple[float, str, list[str]]] = []
        self.bad_commands = 0
        self.samples_sent = 0
        self.corrupted_sent = 0
        self.tx_dropped = 0
        self.last_sample_sent_s = 0.0
        self.watchdog_trips: list[float] = []
        self._master = self._slave = None
        self._thread = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.port = None

    # -- lifecycle
    def start(self) -> "SimulatedStand":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)                 # no echo, no line editing, bytes as they are
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="simulated-stand", daemon=True)
        self._thread.start()
        log.info("simulated stand (%s) on %s", self.profile.name, self.port)
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- fault injection
    def corrupt_every(self, n: int) -> None:
        """Every n-th sample goes out with thrust CORRUPT_THRUST under the old checksum (0: none)."""
        self._corrupt_every = n

    def inject(self, raw: bytes) -> None:
        with self._lock:
            self._inject.append(raw)

    def go_silent(self) -> None:
        """Stop sending anything (samples, heartbeats, replies); commands are still received."""
        self._silent = True

    def unplug(self) -> None:
        """The cable is pulled: the pty's master end closes; the host sees its port fail."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        os.close(self._master)
        self._master = None

    def drive(self, throttle: float) -> None:
        """Set the ESC directly (a flight controller's motor test in a MAVLink test)."""
        self._external = True
        self.armed = throttle > 0 or self.armed
        self.throttle = float(throttle)

    def first_command(self, kind: str, since_s: float = 0.0, arg: str | None = None) -> float | None:
        """Monotonic time of the first received command of this type after since_s (and argument)."""
        for t, k, fields in list(self.commands):
            if k == kind and t >= since_s and (arg is None or fields[2:3] == [arg]):
                return t
        return None

    # -- the stand's main loop
    def _run(self) -> None:
        lines = LineSplitter()
        while not self._closing.is_set():
            period = self._period_ticks * TICK_S if self._period_ticks else 0.02
            wait = max(0.0, min(period, 0.02) - (time.monotonic() - self._t0 - self._ticks * TICK_S))
            try:
                ready, _, _ = select.select([self._master], [], [], wait)
                data = os.read(self._master, 4096) if ready else b""
            except (OSError, ValueError):
                return                                   # unplugged or closed
            self._advance_to(time.monotonic())
            for line in lines.feed(data):
                self._command(line)
            self._housekeeping(time.monotonic())

    def _send(self, frame: bytes) -> bool:
        if self._silent or self._master is None:
            return False
        try:
            os.write(self._master, frame)
            return True
        except BlockingIOError:
            self.tx_dropped += 1           # nobody reading: a UART would drop it too
        except OSError:
            pass
        return False

    def _housekeeping(self, now: float) -> None:
        if self.armed and not self._external and now - self._last_cmd_s > WATCHDOG_S:
            self.armed, self.throttle = False, 0.0
            self.watchdog_trips.append(now)
            self._send(encode("ERR", 0, "watchdog", f"no command for {WATCHDOG_S * 1000:.0f} ms; throttle 0"))
        if now - self._last_hb_s >= STAND_HEARTBEAT_S:
            self._hb_seq = (self._hb_seq + 1) % SEQ_MOD
            self._send(encode("HB", self._hb_seq, "ARMED" if self.armed else "DISARMED"))
            self._last_hb_s = now
        with self._lock:
            pending, self._inject = self._inject, []
        for raw in pending:
            self._send(raw)

    def _command(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            fields = decode(line)
            seq = fields[1]
        except (FrameError, IndexError):
            self.bad_commands += 1
            return
        now = time.monotonic()
        self.commands.append((now, fields[0], fields))
        self._last_cmd_s = now
        kind, args = fields[0], fields[2:]
        if kind == "HB":
            return
        reply = self._handle(kind, args)
        if reply is None:
            self._send(encode("ACK", seq, kind))
        elif reply[0] == "INFO":
            self._send(encode("INFO", seq, *reply[1:]))
        else:
            self._send(encode("NAK", seq, kind, reply))

    def _handle(self, kind: str, args: list[str]):
        """None to acknowledge, a reason text to refuse, or ('INFO', fields...)."""
        if kind == "HELLO":
            return ("INFO", f"fw={FIRMWARE}", f"max_rate_hz={MAX_RATE_HZ}", "sensors=rpm+thrust+torque+voltage+current",
                    "esc=pwm", f"motor={self.profile.name}")
        if kind == "STOP":
            self.armed, self.throttle = False, 0.0
            return None
        if kind == "ARM":
            self.armed, self.throttle = True, 0.0
            return None
        if kind in ("THR", "RATE"):
            try:
                value = int(args[0])
            except (IndexError, ValueError):
                return "bad_argument"
            if kind == "RATE":
                if not 0 <= value <= MAX_RATE_HZ:
                    return "rate_out_of_range"
                self._period_ticks = round(MAX_RATE_HZ / value) if value else 0
                return None
            if not 0 <= value <= THROTTLE_SCALE:
                return "throttle_out_of_range"
            if not self.armed:
                return "not_armed"
            self.throttle = value / THROTTLE_SCALE
            return None
        if kind == "TARE":
            if self.armed and self.throttle > 0:
                return "spinning"
            self._thrust_offset_n = 0.0005 * self._noise * self._rng.standard_normal()
            self._torque_offset_nm = 0.00002 * self._noise * self._rng.standard_normal()
            return None
        return "unknown_command"

    # -- the motor and the sensors
    def _open_circuit_v(self) -> float:
        soc = max(0.0, 1.0 - self._charge_used_c / self._capacity_c)
        return self.cells * (3.5 + 0.7 * soc)

    def _advance_to(self, now: float) -> None:
        due = int((now - self._t0) / TICK_S) - self._ticks
        if due <= 0:
            return
        if due > MAX_CATCH_UP_TICKS:
            self._ticks += due - MAX_CATCH_UP_TICKS
            due = MAX_CATCH_UP_TICKS
        u_now = self.throttle if self.armed else 0.0
        history = list(self._fifo) + [u_now] * due
        delayed, self._fifo = history[:due], collections.deque(history[due:])
        v_oc = self._open_circuit_v()
        v_frac = (v_oc - self._r_ohm * self._current_a) / self.profile.params["battery_v_nominal"]
        omega_end = self._motor(np.asarray(delayed), v_frac)
        omega_start = np.r_[self._omega, omega_end[:-1]].astype(np.float64)
        p = self.profile.params
        mech_w = p["km_nm_per_rad2s2"] * omega_start ** 3
        current = (0.3 if self.armed else 0.05) + mech_w / (self._efficiency * max(v_oc - self._r_ohm * self._current_a, 1.0))
        self._current_a = float(current[-1])
        self._charge_used_c += float(current.sum()) * TICK_S
        self._omega = float(omega_end[-1])
        frames, corrupted = [], 0
        if self._period_ticks:
            ticks = self._ticks + np.arange(due)
            for k in np.flatnonzero(ticks % self._period_ticks == 0):
                frame, bad = self._sample_frame(int(ticks[k]), u_now, float(omega_start[k]), float(current[k]),
                                                v_oc - self._r_ohm * float(current[k]))
                frames.append(frame)
                corrupted += bad
        self._ticks += due
        if frames and self._send(b"".join(frames)):
            self.samples_sent += len(frames)
            self.corrupted_sent += corrupted
            self.last_sample_sent_s = time.monotonic()

    def _motor(self, throttle: np.ndarray, v_frac: float) -> np.ndarray:
        """Rotor speed at the end of each tick. At throttle 0 the ESC's output is off (a PWM ESC at its
        low end): the rotor coasts down with the model's down time constant instead of idling."""
        from sim.core import motor_response
        out = np.empty(len(throttle))
        omega, start = self._omega, 0
        while start < len(throttle):
            off = throttle[start] <= 0
            end = start + 1
            while end < len(throttle) and (throttle[end] <= 0) == off:
                end += 1
            if off:
                out[start:end] = omega * np.exp(-np.arange(1, end - start + 1) * TICK_S / self._params["motor_tau_down_s"])
            else:
                out[start:end] = motor_response(self._params, throttle[start:end], TICK_S, v_frac=v_frac,
                                                omega0_rad_s=omega)
            omega, start = float(out[end - 1]), end
        return out

    def _sample_frame(self, tick: int, throttle: float, omega: float, current_a: float,
                      voltage_v: float) -> tuple[bytes, bool]:
        p, n, rng = self.profile.params, self._noise, self._rng
        rpm = omega * RPM_PER_RAD_S
        t_max = p["kf_n_per_rad2s2"] * p["omega_max_rad_s"] ** 2
        q_max = p["km_nm_per_rad2s2"] * p["omega_max_rad_s"] ** 2
        sample = Sample(
            seq=self._sample_seq, t_us=int(round(tick * TICK_S * 1e6)), throttle=throttle,
            esc_us=1000.0 + 1000.0 * throttle,
            rpm=round(rpm * (1 + 0.003 * n * rng.standard_normal()) + 5 * n * rng.standard_normal()) if rpm > 500 else 0,
            thrust_n=self._thrust_offset_n + p["kf_n_per_rad2s2"] * omega ** 2 * (1 + 0.004 * n * rng.standard_normal())
            + 0.002 * t_max * n * rng.standard_normal(),
            torque_nm=self._torque_offset_nm + p["km_nm_per_rad2s2"] * omega ** 2 * (1 + 0.004 * n * rng.standard_normal())
            + 0.003 * q_max * n * rng.standard_normal(),
            voltage_v=voltage_v * (1 + 0.002 * n * rng.standard_normal()),
            current_a=current_a * (1 + 0.01 * n * rng.standard_normal()) + 0.02 * n * rng.standard_normal())
        self._sample_seq = (self._sample_seq + 1) % SEQ_MOD
        frame = encode_sample(sample)
        if self._corrupt_every and sample.seq % self._corrupt_every == self._corrupt_every - 1:
            body, crc = frame.split(b"*")
            fields = body.split(b",")
            fields[6] = CORRUPT_THRUST                     # a wrong thrust under the old checksum
            return b",".join(fields) + b"*" + crc, True
        return frame, False
