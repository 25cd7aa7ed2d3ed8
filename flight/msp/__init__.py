"""MSP (MultiWii Serial Protocol, as Betaflight speaks it): framing, the rate curves, and the link
the flight runner flies a Betaflight quad through.

    with MspLink(parse_connection("tcp:127.0.0.1:5761"), profile, pose=PoseReceiver(9005)) as link:
        link.wait_for_state()
        link.start_offboard(send_hold)          # streams MSP_SET_RAW_RC, raises the ARM switch
        link.send_action(action, shadow)        # per control tick: ctbr -> sticks
        link.land_and_disarm()

Framing (Betaflight src/main/msp/msp_serial.c):
    v1  '$' 'M' dir size:u8 cmd:u8 payload xor(size, cmd, payload)
    v2  '$' 'X' dir flag:u8 cmd:u16le size:u16le payload crc8_dvb_s2(flag .. payload)
dir is '<' to the flight controller, '>' from it, '!' for an error reply.

Betaflight takes no offboard setpoints: the link is a virtual radio. It streams MSP_SET_RAW_RC
(receiver RX_MSP) at `rc_hz` (>= 50 Hz; 60 by default) and turns the policy's body rates into stick
deflections through the inverse of the flight controller's own rate curve (read with MSP_RC_TUNING),
so the commanded rate is the rate Betaflight flies. Telemetry comes in one MSP_MULTIPLE_MSP at a
time. Arming is the configured ARM mode range on an AUX channel (read with MSP_MODE_RANGES). If
the stream stops, Betaflight's own RX failsafe takes over (stage 1 after its signal timeout, then
stage 2: its failsafe procedure, drop by default).

Betaflight's body frame is FLU (x forward, y left, z up: roll right, pitch nose down and yaw
counter-clockwise are positive in its gyro and PID loop); its yaw stick is reversed (stick right =
yaw clockwise). Betaflight knows no position: pose and velocity come from an external source
(motion capture, or the SITL bridge's truth stream: flight/betaflight_sitl/).
"""
from flight.msp.link import (RC_CHANNELS, TELEMETRY_CMDS, TELEMETRY_TIMEOUT_S, MspLink, SerialTransport,  # noqa: F401
                             TcpTransport, open_transport)
from flight.msp.protocol import *  # noqa: F401,F403
from flight.msp.protocol import LinkError, MspError, MspParser, Frame, decode_status  # noqa: F401
from flight.msp.rates import (RATES_TYPES, RC_MAX_US, RC_MID_US, RC_MIN_US, RC_RATE_INCREMENTAL,  # noqa: F401
                              RateProfile, rates_flu_to_channels)
from flight.pose import TRUTH_FORMAT, TRUTH_SIZE, PoseError, PoseReceiver, pack_truth, unpack_truth  # noqa: F401
