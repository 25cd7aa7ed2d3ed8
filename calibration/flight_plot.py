"""The picture at the end of a flight: the flown path over the course (top and side views), and
the sim's one-step prediction error along it. Reads the flight log, so it works on any log."""
from __future__ import annotations

import numpy as np

from flight.course import Course, parse_course
from skyloop.rowlog import read_row_log


def plot_flight(log_path: str, png_path: str, course: Course | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, meta = read_row_log(log_path)
    if course is None:
        course = parse_course(meta["course"], f"{log_path} sidecar")
    pos = np.stack([data[f"pos_enu_m_{a}"] for a in "xyz"], 1)
    fig, (top, side, err) = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1.6, 1.6, 1]})
    lo, hi = course.bounds_min_enu_m, course.bounds_max_enu_m
    top.add_patch(plt.Rectangle(lo[:2], *(hi - lo)[:2], fill=False, ls="--", color="grey"))
    for i, g in enumerate(course.gates):
        side_dir = np.array([-g.normal_enu[1], g.normal_enu[0]]) * g.width_m / 2
        a, b = g.centre_enu_m[:2] - side_dir, g.centre_enu_m[:2] + side_dir
        top.plot([a[0], b[0]], [a[1], b[1]], "r-", lw=3)
        top.annotate(str(i + 1), g.centre_enu_m[:2] + 0.8 * g.normal_enu[:2], color="r")
        side.plot([g.centre_enu_m[0]] * 2, [g.centre_enu_m[2] - g.height_m / 2, g.centre_enu_m[2] + g.height_m / 2],
                  "r-", lw=3)
    top.plot(pos[:, 0], pos[:, 1], "b-", lw=1.2, label="flown")
    top.plot(*course.start_pos_enu_m[:2], "ko", label="start")
    top.set(xlabel="east [m]", ylabel="north [m]", title="top view", aspect="equal")
    top.legend(loc="upper right")
    side.plot(pos[:, 0], pos[:, 2], "b-", lw=1.2)
    side.set(xlabel="east [m]", ylabel="up [m]", title="side view (gates: red)", ylim=(lo[2], hi[2]))
    t = data["t_s"]
    shadow = np.stack([data[f"shadow_pos_enu_m_{a}"] for a in "xyz"], 1)
    if len(t) > 1:
        miss = np.linalg.norm(shadow[:-1] - pos[1:], axis=1) * 100
        err.plot(t[1:], miss, "m-", lw=0.8)
    err.set(xlabel="time [s]", ylabel="sim one-step prediction error [cm]", title="sim vs flown, per tick")
    ended = meta.get("ended", "?")
    gates = meta.get("gates_passed", "?")
    fig.suptitle(f"{course.name}: {gates}/{len(course.gates) * course.laps} gates, {ended}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
