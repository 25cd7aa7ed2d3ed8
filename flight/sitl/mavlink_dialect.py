"""pymavlink with MAVLink 2 framing and the ArduPilot dialect (the environment variable is read
at pymavlink's first import, so every module of the simulated vehicle imports it from here)."""
import os

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

mav = mavutil.mavlink
