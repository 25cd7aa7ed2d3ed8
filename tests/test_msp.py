"""MSP framing, Betaflight's rate curves and their inverse, the SITL packets, and the MSP link
against a small MSP responder (no firmware needed)."""
import socket
import struct
import threading
import time

import numpy as np
import pytest

from skyloop import frames
from flight.betaflight_sitl import FDM_SIZE, pack_fdm, unpack_fdm, unpack_servo
from flight.connection import parse_connection
from flight.msp import (BOX_ARM, BOX_FAILSAFE, MSP_API_VERSION, MSP_ATTITUDE, MSP_FC_VARIANT, MSP_FEATURE_CONFIG,
                        MSP_MODE_RANGES, MSP_MULTIPLE_MSP, MSP_RAW_IMU, MSP_RC_TUNING, MSP_SET_RAW_RC, MSP_STATUS_EX,
                        FEATURE_RX_MSP, LinkError, MspLink, MspParser, RateProfile, crc8_dvb_s2, decode_status,
                        encode_v1, encode_v2, rates_flu_to_channels)
from sim.profiles import load_profile

# MSP_RC_TUNING as Betaflight 4.6's SITL answers it (defaults: ACTUAL rates, center 70 deg/s, max 670 deg/s)
RC_TUNING_4_6 = bytes.fromhex("07004343430032000000000707000064ce07ce07ce070332")


def test_crc8_dvb_s2_check_value():
    assert crc8_dvb_s2(b"123456789") == 0xBC          # the catalogue check value of CRC-8/DVB-S2


@pytest.mark.parametrize("encode,version", [(encode_v1, 1), (encode_v2, 2)])
def test_frames_round_trip_byte_by_byte_and_skip_garbage(encode, version):
    payload = bytes(range(40))
    wire = b"\x00junk$" + encode(108, payload, ">") + encode(101, b"", ">")
    parser, frames_out = MspParser(), []
    for k in range(len(wire)):                          # the worst case: one byte at a time
        frames_out += parser.feed(wire[k:k + 1])
    assert [(f.version, f.cmd, f.payload, f.direction) for f in frames_out] == \
        [(version, 108, payload, ">"), (version, 101, b"", ">")]
    assert parser.bad_frames == 0 and parser.skipped_bytes >= 5


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_bad_checksum_is_rejected_and_the_next_frame_survives(encode):
    bad = bytearray(encode(105, b"\x01\x02\x03", ">"))
    bad[-1] ^= 0xFF
    flipped = bytearray(encode(105, b"\x01\x02\x03", ">"))
    flipped[-3] ^= 0x10                                   # a payload bit flipped on the wire
    parser = MspParser()
    out = parser.feed(bytes(bad) + bytes(flipped) + encode(2, b"BTFL", ">"))
    assert [(f.cmd, f.payload) for f in out] == [(2, b"BTFL")]
    assert parser.bad_frames == 2


def test_v2_carries_ids_and_payloads_v1_cannot():
    frame = MspParser().feed(encode_v2(0x3003, bytes(300), ">"))[0]
    assert (frame.cmd, len(frame.payload)) == (0x3003, 300)
    with pytest.raises(ValueError, match="encode_v2"):
        encode_v1(0x3003)


def test_rate_profile_decodes_betaflight_4_6_defaults():
    rates = RateProfile.from_msp(RC_TUNING_4_6)
    assert rates.rates_type == "actual"
    assert rates.rc_rate == (7, 7, 7) and rates.rate == (67, 67, 67) and rates.rate_limit_deg_s == (1998,) * 3
    assert rates.rate_deg_s(0, 0.0) == 0.0
    assert rates.max_rate_deg_s(0) == pytest.approx(670.0)
    assert rates.rate_deg_s(0, 1e-4) / 1e-4 == pytest.approx(70.0, rel=1e-3)   # center sensitivity 70 deg/s


@pytest.mark.parametrize("profile", [
    RateProfile("actual", (7, 7, 7), (0, 0, 0), (67, 67, 67), (1998,) * 3),
    RateProfile("actual", (20, 15, 10), (54, 30, 0), (80, 70, 40), (1998,) * 3),
    RateProfile("betaflight", (100, 120, 230), (0, 20, 40), (70, 60, 50), (1998,) * 3),
])
def test_inverting_the_rate_curve_gives_back_the_commanded_rate(profile):
    for axis in range(3):
        top = profile.max_rate_deg_s(axis)
        for rate in np.linspace(-top, top, 41):
            d = profile.deflection(axis, rate)
            assert abs(d) <= 1.0
            assert profile.rate_deg_s(axis, d) == pytest.approx(rate, abs=1e-6)
        assert profile.deflection(axis, 10 * top) == 1.0          # beyond full stick: full stick


def test_unsupported_rates_type_is_refused_with_the_fix():
    with pytest.raises(LinkError, match="ACTUAL or BETAFLIGHT"):
        RateProfile("kiss", (7, 7, 7), (0, 0, 0), (67, 67, 67), (1998,) * 3).max_rate_deg_s(0)


def test_channels_follow_betaflight_axes_and_its_reversed_yaw():
    rates = RateProfile.from_msp(RC_TUNING_4_6)
    roll, pitch, yaw = rates_flu_to_channels(np.radians([70.0 * 0.2, 0.0, 0.0]), rates)
    assert roll > 1500 and pitch == 1500 and yaw == 1500
    # FLU: +y rate is nose down (pitch stick forward, high); +z is counter-clockwise (yaw stick left, low)
    _, pitch, yaw = rates_flu_to_channels(np.radians([0.0, 30.0, 30.0]), rates)
    assert pitch > 1500 and yaw < 1500 and pitch + yaw == 3000


def test_motor_permutation_betaflight_to_sim():
    bf = [1.0, 2.0, 3.0, 4.0]        # Betaflight: rear-right, front-right, rear-left, front-left
    sim = frames.motors_to_sim_order(bf, "betaflight")
    assert sim.tolist() == [2.0, 3.0, 4.0, 1.0]                          # sim: FR, BL, FL, BR
    assert frames.motors_from_sim_order(sim, "betaflight").tolist() == bf


def test_fdm_packet_layout_matches_the_firmware_struct():
    # fdm_packet (src/platform/SIMULATOR/target/SITL/target.h): double timestamp, gyro[3], accel[3],
    # quat[4], velocity_xyz[3], position_xyz[3], pressure: 18 doubles, velocity before position
    q = frames.euler_rpy_to_quat(0.1, -0.2, 0.3)
    wire = pack_fdm(1.5, [0.1, 0.2, 0.3], [0.0, 0.0, 9.8], q, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert len(wire) == FDM_SIZE == 18 * 8
    raw = struct.unpack("<18d", wire)
    assert raw[0] == 1.5
    assert raw[1:4] == (0.1, -0.2, -0.3)                  # body rates FRD
    assert raw[4:7] == (-0.0, -0.0, -9.8)                 # the firmware negates them into its accelerometer
    assert raw[11:14] == (2.0, 1.0, -3.0)                 # velocity NED
    assert raw[14:17] == (5.0, 4.0, -6.0)                 # position NED
    back = unpack_fdm(wire)
    assert np.allclose(back["quat_enu_flu"], q) and np.allclose(back["pos_enu_m"], [4, 5, 6])
    assert np.allclose(back["omega_flu_rad_s"], [0.1, 0.2, 0.3]) and back["pressure_pa"] < 101325


def test_servo_packet_is_clipped_and_checked():
    assert unpack_servo(struct.pack("<4f", 0.5, 1.5, -0.1, 0.25)).tolist() == [0.5, 1.0, 0.0, 0.25]
    with pytest.raises(OSError, match="16"):
        unpack_servo(b"\x00" * 12)


def test_status_decoding_finds_arm_and_failsafe_boxes():
    box_ids = [BOX_ARM, 1, 2, BOX_FAILSAFE]
    payload = bytearray(25)
    payload[6:10] = (0b1001).to_bytes(4, "little")       # ARM and FAILSAFE active
    payload[16] = 29
    payload[17:21] = (1 << 2).to_bytes(4, "little")      # RX_FAILSAFE
    status = decode_status(bytes(payload), box_ids)
    assert status["armed"] and status["failsafe_mode"] and status["arming_disabled"] == ["RX_FAILSAFE"]


# ------------------------------------------------------------------------------------ a small responder
class Responder:
    """A TCP MSP server that answers like Betaflight: arms when AUX1 is high with throttle low, and
    stops answering the arm state as armed (RX failsafe) when the RC stream stops for 0.3 s."""

    def __init__(self, arm_range=True, rx_msp=True, command_s=0.0):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.arm_range, self.rx_msp, self.command_s = arm_range, rx_msp, command_s   # time per command, as
        self.multi_times = []                                    # Betaflight's serial task: one per run
        self.rc_times, self.channels = [], [1500] * 8
        self.armed, self.failsafe = False, False
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _reply(self, cmd, payload=b""):
        if cmd == MSP_MULTIPLE_MSP:                          # [size][reply] per command asked
            return b"".join(bytes([len(r)]) + r for r in map(self._reply, payload))
        if cmd == MSP_FC_VARIANT:
            return b"BTFL"
        if cmd == MSP_API_VERSION:
            return bytes([0, 1, 47])
        if cmd == MSP_FEATURE_CONFIG:
            return struct.pack("<I", FEATURE_RX_MSP if self.rx_msp else 0)
        if cmd == MSP_RC_TUNING:
            return RC_TUNING_4_6
        if cmd == 119:
            return bytes([BOX_ARM, 1, 2, BOX_FAILSAFE])
        if cmd == MSP_MODE_RANGES:
            return bytes([BOX_ARM, 0, 32, 48] if self.arm_range else [0] * 4) + bytes(4 * 19)
        if cmd == MSP_STATUS_EX:
            p = bytearray(25)
            p[6] = int(self.armed) | int(self.failsafe) << 3
            p[16] = 29
            p[17:21] = ((1 << 2) if self.failsafe else 0).to_bytes(4, "little")
            return bytes(p)
        if cmd == MSP_ATTITUDE:
            return struct.pack("<hhh", 100, 0, 90)          # 10 deg right roll, heading east
        if cmd == MSP_RAW_IMU:
            return struct.pack("<9h", 0, 0, 512, 1638, 0, 0, 0, 0, 0)   # 100 deg/s roll
        return b""

    def _serve(self):
        conn, _ = self.server.accept()
        conn.settimeout(0.01)
        parser = MspParser()
        while not self.stop.is_set():
            if self.rc_times and time.monotonic() - self.rc_times[-1] > 0.3 and self.armed:
                self.failsafe, self.armed = True, False         # stage 2, procedure "drop"
            try:
                data = conn.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            for f in parser.feed(data):
                time.sleep(self.command_s)
                if f.cmd == MSP_MULTIPLE_MSP:
                    self.multi_times.append(time.monotonic())
                if f.cmd == MSP_SET_RAW_RC:
                    self.rc_times.append(time.monotonic())
                    self.channels = list(struct.unpack("<8H", f.payload[:16]))
                    if self.channels[4] > 1700 and self.channels[2] < 1100 and not self.failsafe:
                        self.armed = True
                    if self.channels[4] < 1700:
                        self.armed = False
                try:
                    conn.sendall(encode_v1(f.cmd, self._reply(f.cmd, f.payload), ">"))
                except OSError:                                  # the link closed
                    return

    def close(self):
        self.stop.set()
        self.server.close()


class FakePose:
    def __init__(self):
        self.latest = (time.monotonic(), {"pos_enu_m": np.zeros(3), "vel_enu_m_s": np.zeros(3),
                                          "quat_wxyz": np.full(4, np.nan), "omega_flu_rad_s": np.full(3, np.nan),
                                          "rotor_rpm": np.full(4, np.nan)})

    def close(self):
        pass


class FakeShadow:
    hover_action = -0.3


@pytest.fixture
def responder():
    r = Responder()
    yield r
    r.close()


def _link(port, **kw):
    return MspLink(parse_connection(f"tcp:127.0.0.1:{port}"), load_profile("fpv5"), pose=FakePose(),
                   rate_max_rad_s=(10.0, 10.0, 5.0), **kw)


def test_link_streams_rc_arms_on_the_aux_switch_and_follows_the_rate_curve(responder):
    with _link(responder.port) as link:
        state = link.wait_for_state(timeout_s=3.0)
        assert state is not None
        roll, _, _ = frames.quat_to_euler_rpy(state["quat_wxyz"])    # no pose attitude: Betaflight's own
        assert roll == pytest.approx(np.radians(10.0), abs=1e-3)
        assert state["omega_flu_rad_s"][0] == pytest.approx(np.radians(100.0), rel=1e-3)
        link.start_offboard(lambda: link.send_action(np.array([-1, 0, 0, 0], np.float32), FakeShadow()))
        assert link.armed and responder.armed
        sent = link.send_action(np.array([0.0, 0.1, 0.0, 0.0], np.float32), FakeShadow())   # 1 rad/s roll
        time.sleep(0.3)
        rates = RateProfile.from_msp(RC_TUNING_4_6)
        assert responder.channels[0] == sent["channels_us"][0]
        deflection = (responder.channels[0] - 1500) / 500
        assert rates.rate_deg_s(0, deflection) == pytest.approx(np.degrees(1.0), abs=1.0)    # 1 us of stick
        t = np.array(responder.rc_times[-20:])
        assert 1.0 / np.median(np.diff(t)) >= 50.0                                         # the stream's rate
        link.disarm()
        assert not responder.armed
    assert not link.armed


def test_link_reports_betaflight_failsafe_when_the_stream_stops(responder):
    with _link(responder.port) as link:
        link.wait_for_state(timeout_s=3.0)
        link.start_offboard(lambda: None)
        link.uplink = False                                           # the RC stream is lost
        deadline = time.monotonic() + 2.0
        while link.fc_failsafe is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.fc_failsafe is not None and "RX failsafe" in link.fc_failsafe
        assert link.mode_name() == "FAILSAFE" and not link.armed


@pytest.mark.timing
def test_a_stall_of_our_own_process_is_not_read_as_betaflights_silence(responder):
    """After a stall of this process the control loop may run before the link's reader thread: the
    state it asks for first must not be the one from before the stall (0.3 s old: the supervisor
    would call it stale telemetry, Betaflight's fault). The link gives its reader up to
    CATCH_UP_WAIT_S first. (Timing: the reader must answer within those 30 ms of wall time.)"""
    with _link(responder.port) as link:
        assert link.wait_for_state(timeout_s=3.0) is not None
        gate, receive = threading.Event(), link._receive

        def stalled():                                    # the reader thread, held as by a stall
            gate.wait()
            receive()
        link._receive = stalled
        time.sleep(0.3)
        link.pose.latest = (time.monotonic(), link.pose.latest[1])       # the pose stream is fresh
        threading.Timer(0.005, gate.set).start()          # the reader resumes just after the control loop
        state = link.latest_state()
        assert time.monotonic() - state["t_s"] < 0.1, time.monotonic() - state["t_s"]


def test_link_refuses_a_controller_without_arm_switch_or_msp_receiver():
    for kw, match in (({"arm_range": False}, "ARM switch"), ({"rx_msp": False}, "RX_MSP")):
        r = Responder(**kw)
        try:
            with pytest.raises(LinkError, match=match):
                _link(r.port).open()
        finally:
            r.close()


def test_link_refuses_motor_mode_and_slow_streams():
    with pytest.raises(LinkError, match="ctbr"):
        MspLink(parse_connection("tcp:127.0.0.1:1"), load_profile("fpv5"), action_mode="motor")
    with pytest.raises(LinkError, match="50 Hz"):
        MspLink(parse_connection("tcp:127.0.0.1:1"), load_profile("fpv5"), rc_hz=20)


@pytest.mark.timing
def test_link_asks_for_telemetry_only_once_answered_so_a_slow_controller_gets_no_queue():
    """Betaflight answers one MSP command per serial task run (10 ms by default): a link that polls
    faster than that builds a queue, and the RC frames wait behind it."""
    r = Responder(command_s=0.01)
    try:
        with _link(r.port) as link:
            assert link.wait_for_state(timeout_s=3.0) is not None
            time.sleep(1.0)
            latency_ms = link.latency_ms()
    finally:
        r.close()
    rc = np.diff(r.rc_times[-30:])
    assert len(rc) / rc.sum() >= 50.0                         # RC keeps its rate
    assert latency_ms < 40.0                                  # a request waits behind at most one RC frame
    assert 20 <= len(r.multi_times) <= 60                     # about what the 100 commands/s leave to it
