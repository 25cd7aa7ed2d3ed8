"""The firmware's process: its settings (typed once into its CLI over MSP), starting it with
the bridge (BetaflightSitl). `skyloop sitl --betaflight` (flight/sitl/cli.py) serves it."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time


from flight.betaflight_sitl import build
from flight.betaflight_sitl.bridge import MSP_TCP_PORT, PORT_PWM, POSE_PORT, BetaflightSitlError, SitlBridge
from flight.msp.protocol import MSP_API_VERSION, MspParser, encode_v1
from flight.service import FirmwareSitl
from sim.profiles import Profile, load_profile

log = logging.getLogger(__name__)
START_ATTEMPTS = 3
RESTART_PAUSE_S = 1.0          # between two starts: lets whatever held a port let go of it
# the firmware's own log line when it cannot bind its MSP port ("bind port 5761 for UART1 failed!!"):
# it then runs without MSP; seen once, seconds after another flight, and gone on the next start
BIND_FAILED = f"bind port {MSP_TCP_PORT} for UART1 failed"
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


def msp_socket(port: int = MSP_TCP_PORT, timeout_s: float = 20.0, hopeless=lambda: None) -> socket.socket:
    """A TCP connection to the firmware's MSP port once it answers (its init is done); before that
    its TCP server accepts and resets connections. It takes one client at a time: close this one
    (and give it CLOSE_GRACE_S to notice) before the next connects. `hopeless()`, asked between
    tries, returns why waiting on is pointless (raised at once), or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        why = hopeless()
        if why:
            raise BetaflightSitlError(why)
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


class BetaflightSitl(FirmwareSitl):
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

    def start(self) -> None:
        """Starts the firmware and the bridge. Now and then a start fails in a way the next one
        does not, and is made again, up to START_ATTEMPTS times: the PID loop stalled (MSP answers,
        but no motor packet comes and MSP_STATUS_EX reports a cycle time of 0; seen in 5 of 14 starts
        before the timer-slack fix, cause unknown), the MSP port could not be bound (BIND_FAILED), or the
        firmware runs but its MSP port stays silent (seen once in CI: bound, no answer in 20 s)."""
        exe = build.build_sitl(self.build_dir)
        if _port_open(MSP_TCP_PORT):
            raise BetaflightSitlError(f"tcp port {MSP_TCP_PORT} is taken: another Betaflight SITL runs on this machine "
                                      "(they use fixed ports); stop it, or fly it with --connect tcp:127.0.0.1:5761")
        eeprom = configured_eeprom(exe)
        failures = []
        for attempt in range(1, START_ATTEMPTS + 1):
            self.bridge = SitlBridge(self.profile, self.start_pos_enu_m, self.start_yaw_rad, self.pose_port)
            self.workdir = tempfile.TemporaryDirectory(prefix="betaflight-sitl-")
            try:
                self._launch(exe, eeprom)
                why = self._wait_for_msp()         # its init is done: only then the physics
                if why is None:
                    time.sleep(CLOSE_GRACE_S)
                    self.bridge.start()
                    if self._motor_packets_flow():
                        break
                    why = f"its PID loop stalled (no motor packets on udp {PORT_PWM})"
            except BaseException:
                self.stop()
                raise
            failures.append(why)
            self.stop()
            if attempt < START_ATTEMPTS:
                log.warning("the Betaflight SITL start %d of %d failed: %s; starting it again", attempt, START_ATTEMPTS, why)
                time.sleep(RESTART_PAUSE_S)
        else:
            hint = (f"something on this machine holds tcp port {MSP_TCP_PORT} (`ss -tanp | grep {MSP_TCP_PORT}` shows "
                    "what); stop it" if any(BIND_FAILED in f for f in failures) else "is the machine overloaded?")
            raise BetaflightSitlError(f"the Betaflight SITL failed to start {START_ATTEMPTS} times "
                                      f"({'; '.join(failures)}): {hint}")
        log.info("Betaflight SITL (pid %d) flying %s; MSP on tcp:127.0.0.1:%d", self.process.pid, self.profile.name,
                 MSP_TCP_PORT)

    def _log_tail(self, chars: int = 1500) -> str:
        with open(os.path.join(self.workdir.name, "sitl.log"), errors="replace") as f:
            return f.read()[-chars:]

    def _wait_for_msp(self, timeout_s: float = 20.0) -> str | None:
        """None once MSP answers; why not when another start is worth making: the firmware could not
        bind its MSP port, or it runs and stays silent. Raises, with the firmware's output, when it exited."""
        def hopeless():
            if self.process.poll() is not None:
                return f"the Betaflight SITL exited (code {self.process.returncode}) before answering MSP"
            tail = self._log_tail()
            return next((line.strip() for line in tail.splitlines() if BIND_FAILED in line), None)
        try:
            msp_socket(timeout_s=timeout_s, hopeless=hopeless).close()
            return None
        except BetaflightSitlError as exc:
            if BIND_FAILED in str(exc):
                return str(exc)
            if self.process.poll() is None:
                return f"{exc} in {timeout_s:g} s, while it runs"
            raise BetaflightSitlError(f"{exc}; its output ends:\n{self._log_tail()}") from None

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
            raise BetaflightSitlError(f"the Betaflight SITL exited at start:\n{self._log_tail(2000)}")


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
