"""Fixtures the test files share: the real data set's files (skipping with a clear message when it
is absent), a free loopback UDP port, the simulated vehicle with a MAVLink link to it, a quiet
status line, and a headless Chromium (skipping when there is none; nothing is downloaded).

Timing checks (wall-clock assertions) carry `@pytest.mark.timing`: deselected by default (see
pyproject.toml), run by scripts/benchmarks.sh (`pytest -m timing`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket

import pytest

#: the shared real data set, beside the repository (its README lists the files)
REAL_DATA_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                              "data", "real"))


@pytest.fixture(scope="session")
def real_data():
    """real_data(name) -> the path of a file of ../shared/data/real/, or the test skips, saying which."""
    def path(name: str) -> str:
        p = os.path.join(REAL_DATA_DIR, name)
        if not os.path.exists(p):
            pytest.skip(f"real data {name} not found in {REAL_DATA_DIR} (the shared data set lives next to the "
                        "repository; see its README)")
        return p
    return path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_udp_port():
    """free_udp_port() -> a loopback UDP port nobody holds right now."""
    return _free_udp_port


class QuietStatus:
    """The runner's StatusLine interface, printing nothing."""

    def show(self, *args, **kwargs):
        pass

    def done(self):
        pass


@pytest.fixture(scope="session")
def quiet_status():
    return QuietStatus()


@contextlib.contextmanager
def _vehicle_and_link(course, profile="crazyflie21", autopilot="ardupilot", mode="ctbr", origin="course",
                      lockstep=False, **sitl):
    from flight.cli import default_policy
    from flight.connection import parse_connection
    from flight.link import MavLink
    from flight.realtime import raised_priority
    from flight.sitl import SitlVehicle
    from policy_export import load_policy
    from sim.profiles import load_profile
    port = _free_udp_port()
    prof = load_profile(profile)
    policy = load_policy(default_policy(mode), action_modes=(mode,))
    # real time: the vehicle steps in this process; its threads, the link's and the test's (the control loop)
    # run real time where allowed, as fly does, so a busy machine does not starve them (flight/realtime.py).
    # lockstep: the runner's clock is the vehicle's sim time (flight/link.py LockstepClock); load changes nothing
    with (contextlib.nullcontext() if lockstep else raised_priority()), \
            SitlVehicle(prof, f"udpout:127.0.0.1:{port}", autopilot, course.start_pos_enu_m, course.start_yaw_rad,
                        origin=origin, lockstep=lockstep, **sitl) as vehicle:
        rate_max = policy.metadata["action_scaling"].get("rate_max_rad_s", prof.params["rate_max_rad_s"])
        with MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), autopilot, mode, rate_max, lockstep=lockstep) as link:
            yield vehicle, link, policy, prof


@pytest.fixture(scope="session")
def vehicle_and_link():
    """vehicle_and_link(course, profile=, autopilot=, mode=, lockstep=, **SitlVehicle options): a
    context manager giving (the running simulated vehicle, a MAVLink link to it, the shipped policy
    for the mode, the profile); the vehicle starts at the course's start and, unless origin="start",
    reports the course's frame (as under motion capture), so fly_course's default course_frame
    "local" fits. lockstep=True: vehicle and link in lockstep, for flights whose subject is not real time."""
    return _vehicle_and_link


def find_chromium() -> str | None:
    for candidate in (os.environ.get("SKYLOOP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and (shutil.which(candidate) or (os.path.exists(candidate) and candidate))
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Playwright, shared by the session."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium to drive: install Debian's (`apt-get install -y chromium`) or set SKYLOOP_CHROMIUM "
                    "to a Chrome/Chromium binary (the tests never download a browser)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        yield b
        b.close()
