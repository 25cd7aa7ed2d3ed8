"""ArduPilot's parameters that decide whether this runner can fly it, read and set over a
MAVLink link (flight/link.py's MavLink: its `master`, `target` and the `_params` its receiver
thread fills from PARAM_VALUE)."""
from __future__ import annotations

import logging
import time

from flight.linkbase import LinkError

log = logging.getLogger(__name__)

#: ArduPilot: a stalled companion computer's last rates + thrust keep flying for GUID_TIMEOUT (default 3 s)
GUID_TIMEOUT_S, GUID_TIMEOUT_MAX_S = 0.2, 1.0       # (a runner stall over 0.5 s ends the flight)


def read(link, name: str, timeout_s: float = 2.0) -> float | None:
    """PARAM_REQUEST_READ, asked up to three times; the value, or None if the vehicle never answered."""
    for _ in range(3):
        link.master.mav.param_request_read_send(link.target[0], link.target[1], name.encode(), -1)
        deadline = time.monotonic() + timeout_s / 3
        while time.monotonic() < deadline:
            if name in link._params:
                return link._params[name]
            time.sleep(0.01)
    return None


def write(link, name: str, value: float) -> None:
    """PARAM_SET, confirmed by the vehicle's PARAM_VALUE echo; LinkError if it never takes it."""
    from pymavlink.mavutil import mavlink     # here: flight/link.py has chosen MAVLink 2 before the import
    for _ in range(3):
        link._params.pop(name, None)
        link.master.mav.param_set_send(link.target[0], link.target[1], name.encode(), float(value),
                                       mavlink.MAV_PARAM_TYPE_REAL32)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if name in link._params and abs(link._params[name] - value) < 1e-4:
                log.info("set %s = %g on the vehicle", name, value)
                return
            time.sleep(0.01)
    raise LinkError(f"the vehicle did not take {name} = {value:g} (it answered "
                    f"{link._params.get(name, 'nothing')}): set it by hand in a ground station")


def check(link) -> None:
    """GUID_OPTIONS bit 3 (thrust is thrust), GUID_TIMEOUT short (a stalled runner's last command
    stops being flown), ATC_ANGLE_BOOST off (the policy was trained without it: boost raises the
    thrust by 1/cos(tilt), a climb in every turn). Refused (boost: a warning) with the fix named;
    with link.set_params (the user's consent, --set-params) they are set, live (no reboot needed).
    Then reads MOT_THST_HOVER and MOT_SPOOL_TIME into link.hover_throttle and link.spool_s."""
    options, timeout, boost = (read(link, n) for n in ("GUID_OPTIONS", "GUID_TIMEOUT", "ATC_ANGLE_BOOST"))
    wanted, problems = {}, []
    if options is None or not int(options) & 8:
        wanted["GUID_OPTIONS"] = float(int(options or 0) | 8)
        problems.append(f"GUID_OPTIONS {'unknown' if options is None else int(options)} lacks bit 3 (8), so "
                        "SET_ATTITUDE_TARGET thrust would be read as a climb rate: add 8 to it")
    if timeout is None or timeout > GUID_TIMEOUT_MAX_S:
        wanted["GUID_TIMEOUT"] = GUID_TIMEOUT_S
        problems.append(f"GUID_TIMEOUT is {'unknown' if timeout is None else f'{timeout:g} s'}: if this program "
                        "stalls, the vehicle keeps flying its last rates and thrust that long; set it to "
                        f"{GUID_TIMEOUT_S:g}")
    if boost is None or boost != 0:
        wanted["ATC_ANGLE_BOOST"] = 0.0
        if not link.set_params:
            log.warning("ATC_ANGLE_BOOST is on: ArduPilot raises the thrust by 1/cos(tilt), which the policy was "
                        "not trained with (it climbs in turns); --set-params turns it off")
    if link.set_params:
        for name, value in wanted.items():
            write(link, name, value)
    elif problems:
        commands = ", ".join(f"`param set {n} {v:g}`" for n, v in wanted.items())
        raise LinkError("ArduPilot is not set up for this runner: " + "; ".join(problems) + ". Set them on the "
                        f"vehicle (e.g. MAVProxy: {commands}; no reboot needed), or pass --set-params to let "
                        "fly set them")
    link.hover_throttle = read(link, "MOT_THST_HOVER")
    spool = read(link, "MOT_SPOOL_TIME")            # to ground idle, then to full authority: twice
    link.spool_s = 2.0 * spool + 0.2 if spool is not None else link.spool_s
