"""A simulated MAVLink quadrotor on our own sim: `skyloop sitl`, and what `fly` flies by default.

    skyloop sitl --profile fpv5 --listen udpin:127.0.0.1:14550 --autopilot px4 [--speed lockstep]

    with SitlVehicle("crazyflie21", "udpout:127.0.0.1:14550", lockstep=True) as vehicle:
        ...                                   # talk MAVLink to it; vehicle.state() is the truth

It behaves like the flight controllers users own, as far as a companion computer sees them
(MAVLink 2, system 1, component 1, the ArduPilot dialect):

- HEARTBEAT: quadrotor, ArduPilot or PX4 (`autopilot=`), armed bit, custom modes numbered as the
  real ones: ArduPilot STABILIZE 0, GUIDED 4, LAND 9, GUIDED_NOGPS 20; PX4 STABILIZED, OFFBOARD,
  AUTO.LAND (main mode in bits 16..23, sub mode in 24..31).
- COMMAND_LONG, answered with COMMAND_ACK: COMPONENT_ARM_DISARM (disarm only on the ground unless
  forced with 21196), DO_SET_MODE, SET_MESSAGE_INTERVAL (0 = default, -1 = off; at most one
  per control step, i.e. 100 Hz), REQUEST_MESSAGE, DO_MOTOR_TEST (disarmed only). SET_MODE.
  PARAM_REQUEST_READ / PARAM_REQUEST_LIST / PARAM_SET -> PARAM_VALUE, for the parameters the runner checks
  (ArduPilot GUID_OPTIONS, GUID_TIMEOUT, MOT_THST_HOVER, ...; PX4 COM_OF_LOSS_T, MPC_THR_HOVER, ...);
  they drive the behaviour. TIMESYNC requests (tc1 = 0) are answered.
- SET_ATTITUDE_TARGET, only in GUIDED / GUIDED_NOGPS / OFFBOARD (ignored elsewhere, as the real
  ones do): body rates + thrust (type_mask 128: attitude ignored) or attitude + thrust (type_mask 7:
  rates ignored; an attitude P loop feeds the sim's rate loop; rates given with the attitude are
  a feed-forward). Thrust is the fraction of the maximum thrust (MOT_THST_HOVER / MPC_THR_HOVER
  report the hover fraction); ArduPilot with GUID_OPTIONS bit 3 clear reads it as a climb rate,
  as the real one does. Validity rules as in ArduPilot's handler: thrust ignored (bit 6), a
  quaternion whose norm is off 1 by more than 1e-3, or only some of the rates ignored -> the
  message is not flown and the vehicle stops (ArduPilot re-initializes guided mode: brake to zero
  velocity, hold altitude); we also refuse NaN/inf. A later valid setpoint resumes control.
- SET_ACTUATOR_CONTROL_TARGET group 0, controls[0..3] = motor throttles 0..1 in the PX4/ArduPilot
  quad-X order, for the `motor` action mode. This is a convention of this simulator: in the
  MAVLink standard group 0 is roll/pitch/yaw/throttle, PX4 since 1.14 (control allocation) no
  longer passes it to the motors, and ArduPilot never accepted it. Real vehicles fly `ctbr`.
- Streams, NED / FRD through skyloop/frames.py (defaults in DEFAULT_RATES_HZ): ATTITUDE,
  ATTITUDE_QUATERNION, LOCAL_POSITION_NED and ODOMETRY (off unless requested; both relative to
  where the vehicle started, as ArduPilot's and PX4's EKF origin with GPS; origin="course": the
  sim's world frame, as under motion capture), HIGHRES_IMU, SYS_STATUS, BATTERY_STATUS (sag under
  load, see models.Battery),
  ESC_TELEMETRY_1_TO_4 (RPM), SERVO_OUTPUT_RAW; STATUSTEXT on failsafes.
- Failsafes: armed in the offboard mode with no valid setpoint for `setpoint_timeout_s` (default
  0.5 s; the GUID_TIMEOUT / COM_OF_LOSS_T parameter) -> `loss_action`, by default the autopilot's:
  "hold" for ArduPilot (level, zero climb rate, stay in the mode: what its GUID_TIMEOUT does, so the
  runner's "left offboard" check cannot see it, as on the real one) and "land" for PX4 (AUTO.LAND,
  level and descend: COM_OBL_ACT 0 without RC); either can be asked for. Battery below 7 % -> LAND.
  In LAND, 1 s standing on the ground -> disarm; landed with low thrust for 10 s in any mode ->
  disarm (DISARM_DELAY); a crash (hard or tilted touchdown) -> disarm. PX4 enters OFFBOARD only
  with a setpoint stream that has lasted 0.5 s (the real one wants 1 s).
- Realism (models.Realism, `--noise`): sensor noise and bias, telemetry latency and loss,
  mean wind and gusts; `randomize=True` flies a drone drawn from the profile's randomization.

Clock. Real time by default (`speed` scales it): a thread steps the sim every control period
(10 ms at 100 Hz) and handles what arrived in between. Lockstep (`lockstep=True`, `--speed
lockstep`): the sim advances only when the client says so, deterministically and as fast as the
client goes:
  * every SET_ATTITUDE_TARGET or SET_ACTUATOR_CONTROL_TARGET received (valid or not, flown or
    not, armed or not) advances the sim by exactly one control step, after being applied;
  * SYSTEM_TIME advances it, step by step, until the sim time reaches time_boot_ms (at most
    10 s per message): a clock tick without a setpoint, e.g. to watch a failsafe;
  * `vehicle.advance(seconds)` does the same in-process.
Streams are paced by sim time, so after each step the client gets the telemetry that falls due.
While nothing advances the clock (e.g. before the first setpoint), the vehicle re-sends its
latest messages every 0.2 s of wall time, unchanged (no new noise draw), so a client can connect
and see a state. The same seed and the same sequence of messages give the same flight bit for bit.

The package: vehicle.py (the state machine, no I/O), mavlink_io.py (SitlVehicle: the connection,
messages in and out), telemetry.py (the streams), clock.py (real time or lockstep), models.py
(battery, wind, realism, the velocity loop), cli.py (`skyloop sitl`).
"""
from __future__ import annotations

from flight.sitl.cli import add_arguments, parse_speed, run  # noqa: F401  (the `skyloop sitl` verb)
from flight.sitl.mavlink_io import SitlVehicle  # noqa: F401
from flight.sitl.telemetry import DEFAULT_RATES_HZ  # noqa: F401
from flight.sitl.vehicle import Setpoint, SitlError, Vehicle, default_params  # noqa: F401
