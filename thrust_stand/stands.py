"""`open_stand`: a port string -> the stand driver that speaks it (not yet opened: use it in a
`with`). Apart from thrust_stand/driver.py (the interface the drivers implement), so the drivers
import the interface and this module imports the drivers: one direction.

    with open_stand("/dev/ttyUSB0,115200", max_throttle=0.8) as stand:   # handshake on enter
        ...
"""
from __future__ import annotations

from thrust_stand.driver import StandDriver
from thrust_stand.protocol import WATCHDOG_S


def open_stand(port: str, *, max_throttle: float = 1.0, load_cell: str | None = None, motor: int = 1,
               loss_timeout_s: float = WATCHDOG_S) -> StandDriver:
    """A driver for a port string (not yet opened: use it in a `with`):

    - `/dev/ttyUSB0,115200` (or `/dev/ttyUSB0`, 115200 baud): a stand speaking PROTOCOL.md;
    - `mavlink:CONNECTION` (e.g. `mavlink:udpin:0.0.0.0:14550`, `mavlink:/dev/ttyACM0,921600`): a
      flight controller driving the motor with MAV_CMD_DO_MOTOR_TEST, thrust from `load_cell`.
    """
    if port.startswith("mavlink:"):
        from thrust_stand.mavlink_stand import MavlinkStand
        if not load_cell:
            raise ValueError("a MAVLink stand needs --load-cell PORT (a serial load cell speaking PROTOCOL.md) "
                             "for thrust; the flight controller reports only rpm, voltage and current")
        return MavlinkStand(port[len("mavlink:"):], load_cell, motor=motor, max_throttle=max_throttle,
                            loss_timeout_s=loss_timeout_s)
    from thrust_stand.serial_stand import SerialStand
    return SerialStand(port, max_throttle=max_throttle, loss_timeout_s=loss_timeout_s)
