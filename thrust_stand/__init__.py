"""Skyloop thrust_stand: drive a motor on a stand safely and record everything (see DESIGN.md).

    skyloop stand run sweep --port /dev/ttyUSB0,115200      skyloop stand sim
    skyloop stand import EXPORT.csv -o stand_log.csv        skyloop stand plan steps > my_steps.json

Modules:
    protocol       the serial line protocol's frames and checksum (PROTOCOL.md)
    driver         the driver interface and its errors
    stands         `open_stand(port string)` -> the driver for it
    serial_stand   a stand speaking PROTOCOL.md over pyserial
    mavlink_stand  a flight controller (DO_MOTOR_TEST, ESC telemetry) plus a serial load cell
    simstand       a simulated stand on a pseudo-terminal, backed by sim.core.motor_response
    plans          procedure plans (plans/*.json: tare, sweep, steps, endurance)
    run            runs a plan: log every sample, limits, throttle 0 on any stop, status line
    log            the stand log writer and reader (CSV + JSON sidecar)
    plot           the PNG of a run
    tyto           Tyto Robotics / RCbenchmark CSV exports into the stand log
    cli            the `skyloop stand` verb
"""
