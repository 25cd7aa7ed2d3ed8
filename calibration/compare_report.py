"""The sim-vs-real report: PNGs, `metrics.json` and one self-contained HTML page (images embedded
as base64) a person can open anywhere. Draws what `calibration.compare` measured; measures nothing."""
from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from calibration.flightlogs import Trajectory

COLORS = ("tab:red", "tab:green", "tab:purple", "tab:orange")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def _draw_gates(top, side, course) -> None:
    for i, g in enumerate(course.gates):
        across = np.array([-g.normal_enu[1], g.normal_enu[0]]) * g.width_m / 2
        a, b = g.centre_enu_m[:2] - across, g.centre_enu_m[:2] + across
        top.plot([a[0], b[0]], [a[1], b[1]], "k-", lw=3)
        top.annotate(str(i + 1), g.centre_enu_m[:2] + 0.6 * g.normal_enu[:2])
        side.plot([g.centre_enu_m[0]] * 2, [g.centre_enu_m[2] - g.height_m / 2, g.centre_enu_m[2] + g.height_m / 2],
                  "k-", lw=3)


def plot_trajectory(traj: Trajectory, path: str) -> str:
    """The logged flight: top and side views, and position and attitude over time."""
    from skyloop.frames import quat_to_euler_rpy
    plt = _plt()
    fig, ax = plt.subplots(2, 2, figsize=(13, 8))
    p = traj.pos_enu_m
    ax[0, 0].plot(p[:, 0], p[:, 1], "b-", lw=1)
    ax[0, 0].set(xlabel="x (east) [m]", ylabel="y (north) [m]", title="top view", aspect="equal")
    ax[0, 1].plot(p[:, 0], p[:, 2], "b-", lw=1)
    ax[0, 1].set(xlabel="x (east) [m]", ylabel="z (up) [m]", title="side view")
    for k, a in enumerate("xyz"):
        ax[1, 0].plot(traj.t_s, p[:, k], lw=1, label=a)
    ax[1, 0].set(xlabel="time [s]", ylabel="position [m]", title="position (ENU)")
    ax[1, 0].legend()
    euler = np.degrees(np.array([quat_to_euler_rpy(q) if np.all(np.isfinite(q)) else (np.nan,) * 3
                                 for q in traj.quat_wxyz]))
    for k, a in enumerate(("roll", "pitch", "yaw")):
        ax[1, 1].plot(traj.t_s, euler[:, k], lw=1, label=a)
    ax[1, 1].set(xlabel="time [s]", ylabel="[deg]", title="attitude (FLU body in ENU)")
    ax[1, 1].legend()
    fig.suptitle(f"{os.path.basename(traj.source)} ({traj.log_format}): {traj.n} samples, {traj.t_s[-1]:.1f} s")
    return _save(fig, path)


def plot_model_check(results: dict, path: str) -> str:
    """Measured vs predicted specific force and angular acceleration, per axis, per profile."""
    plt = _plt()
    fig, ax = plt.subplots(2, 3, figsize=(15, 7), sharex=True)
    first = True
    for c, (name, res) in zip(COLORS, results.items()):
        s = res["series"]["model_check"]
        mc = res["metrics"]["model_check"]
        for k, a in enumerate("xyz"):
            if first:
                ax[0, k].plot(s["t_s"], s["meas_accel"][:, k], "k-", lw=0.8, label="measured (accelerometer)")
                ax[1, k].plot(s["t_s"], s["meas_alpha"][:, k], "k-", lw=0.8, label="measured (d gyro / dt)")
            r2 = mc["r2"][a]
            ax[0, k].plot(s["t_s"], s["pred_accel"][:, k], "-", color=c, lw=0.8,
                          label=f"{name}: R² {r2:.2f}" if r2 is not None else name)
            r2a = mc["angular"]["r2"][a]
            ax[1, k].plot(s["t_s"], s["pred_alpha"][:, k], "-", color=c, lw=0.8,
                          label=f"{name}: R² {r2a:.2f}" if r2a is not None else name)
            ax[0, k].set(title=f"specific force {a} (body FLU)", ylabel="[m/s²]")
            ax[1, k].set(title=f"angular acceleration {a}", ylabel="[rad/s²]", xlabel="time [s]")
        first = False
    for a in ax.flat:
        a.legend(fontsize=8, loc="upper right")
    fig.suptitle("model check: the sim's force and torque model at every logged sample")
    return _save(fig, path)


def plot_replay(results: dict, traj: Trajectory, path: str) -> str:
    """Open-loop prediction error against horizon, and the replayed windows over the logged path."""
    plt = _plt()
    fig, (err, top) = plt.subplots(1, 2, figsize=(14, 5.5))
    for c, (name, res) in zip(COLORS, results.items()):
        for key, style, what in (("replay", "o-", "free"), ("replay_translational", "s:", "attitude forced")):
            m = res["metrics"].get(key)
            if not m:
                continue
            h = [float(k) for k in m["error_m"]]
            err.plot(h, [np.nan if v is None else v for v in m["error_m"].values()], style, color=c,
                     label=f"{name}, {what}: median")
    err.set(xlabel="horizon [s]", ylabel="position error [m]",
            title="open-loop replay: where the sim ends up vs the log\n(free: commands only; attitude forced: "
                  "attitude, rates, rotor speeds from the log)")
    err.legend(fontsize=8)
    top.plot(traj.pos_enu_m[:, 0], traj.pos_enu_m[:, 1], "k-", lw=1, label="logged")
    for c, (name, res) in zip(COLORS, results.items()):
        s = res["series"]["replay"]
        for w in range(s["pos_sim"].shape[1]):
            top.plot(s["pos_sim"][:, w, 0], s["pos_sim"][:, w, 1], "-", color=c, lw=0.8, alpha=0.7,
                     label=f"{name}: replayed windows" if w == 0 else None)
    top.set(xlabel="x [m]", ylabel="y [m]", title="replayed windows (1 s each) over the logged path", aspect="equal")
    top.legend(fontsize=8)
    return _save(fig, path)


def plot_closed_loop(results: dict, path: str) -> str:
    """Sim and real paths of the same policy on the same course: top, side, per axis, with gate passes."""
    plt = _plt()
    fig, ax = plt.subplot_mosaic([["top"] * 3 + ["side"] * 3, ["x", "x", "y", "y", "z", "z"]], figsize=(15, 9))
    top, side, axes = ax["top"], ax["side"], [ax[a] for a in "xyz"]
    first = True
    for c, (name, res) in zip(COLORS, results.items()):
        if "closed_loop" not in res["series"]:
            continue
        s, m = res["series"]["closed_loop"], res["metrics"]["closed_loop"]
        if first:
            _draw_gates(top, side, s["course"])
            top.plot(s["pos_real"][:, 0], s["pos_real"][:, 1], "b-", lw=1.2, label="real")
            side.plot(s["pos_real"][:, 0], s["pos_real"][:, 2], "b-", lw=1.2)
            for k in range(3):
                axes[k].plot(s["t_real"], s["pos_real"][:, k], "b-", lw=1.2, label="real")
                for t in m["real"]["gate_times_s"]:
                    axes[k].axvline(t, color="b", lw=0.5, alpha=0.5)
            first = False
        top.plot(s["pos_sim"][:, 0], s["pos_sim"][:, 1], "-", color=c, lw=1.2, label=f"sim ({name})")
        side.plot(s["pos_sim"][:, 0], s["pos_sim"][:, 2], "-", color=c, lw=1.2)
        for k, a in enumerate("xyz"):
            axes[k].plot(s["t_sim"], s["pos_sim"][:, k], "-", color=c, lw=1.2, label=f"sim ({name})")
            for t in m["sim"]["gate_times_s"]:
                axes[k].axvline(t, color=c, lw=0.5, ls="--", alpha=0.5)
            axes[k].set(xlabel="time [s]", ylabel=f"{a} [m]", title=f"{a} (gate passes: vertical lines)")
    top.set(xlabel="east [m]", ylabel="north [m]", title="top view (gates: black)", aspect="equal")
    side.set(xlabel="east [m]", ylabel="up [m]", title="side view")
    top.legend(fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("closed loop: the same policy, course and start, real vs sim")
    return _save(fig, path)


# ---------------------------------------------------------------- HTML

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metric_rows(metrics: dict) -> str:
    rows = []
    for name, m in metrics["by_profile"].items():
        mc, hc, rp = m.get("model_check") or {}, m.get("hover_closure") or {}, m.get("replay") or {}
        rows.append([name, mc.get("mass_kg"), mc.get("kf_n_per_rad2s2"),
                     *[(mc.get("r2") or {}).get(a) for a in "xyz"],
                     *[(mc.get("rmse_m_s2") or {}).get(a) for a in "xyz"],
                     hc.get("closure"), mc.get("thrust_closure_in_flight"),
                     *[(rp.get("error_m") or {}).get(h) for h in ("0.1", "0.5", "1")],
                     *[((m.get("replay_translational") or {}).get("error_m") or {}).get(h)
                       for h in ("0.1", "0.5", "1")]])
    header = ["profile", "mass [kg]", "kf", "R² x", "R² y", "R² z", "RMSE x [m/s²]", "RMSE y", "RMSE z",
              "hover closure", "thrust closure in flight", "replay 0.1 s [m]", "0.5 s [m]", "1 s [m]",
              "attitude-forced replay 0.1 s [m]", "0.5 s [m]", "1 s [m]"]
    return _table(header, rows)


def _closed_rows(metrics: dict) -> str:
    rows = []
    for name, m in metrics["by_profile"].items():
        cl = m.get("closed_loop")
        if not cl:
            continue
        rows.append([name, f"{cl['real']['gates_passed']}/{cl['real']['gates_total']}",
                     f"{cl['sim']['gates_passed']}/{cl['sim']['gates_total']}", cl["real"]["lap_time_s"],
                     cl["sim"]["lap_time_s"], ", ".join(f"{t:.2f}" for t in cl["real"]["gate_times_s"]),
                     ", ".join(f"{t:.2f}" for t in cl["sim"]["gate_times_s"]), cl["path_error_m"]["median"]])
    if not rows:
        return ""
    return "<h2>Closed loop</h2>" + _table(["profile", "gates real", "gates sim", "lap real [s]", "lap sim [s]",
                                            "gate times real [s]", "gate times sim [s]", "median path gap [m]"], rows)


STYLE = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
         "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}.note{color:#555;font-size:0.92em}")


def plot_controller_replay(results: dict, traj: Trajectory, path: str) -> str:
    """Attitude error against time for each replayed window: open loop (logged commands) and with the
    Lee controller in the loop; and the controller's collective command against the logged one."""
    plt = _plt()
    fig, (att, cmd) = plt.subplots(1, 2, figsize=(14, 5.5))
    for c, (name, res) in zip(COLORS, results.items()):
        s, m = res["series"]["replay_controller"], res["metrics"]["replay_controller"]
        t = np.arange(s["attitude_error_deg"].shape[0]) * s["step_s"]
        for w in range(s["attitude_error_deg"].shape[1]):
            att.plot(t, s["attitude_error_deg"][:, w], "-", color=c, lw=0.7, alpha=0.6,
                     label=f"{name}: Lee controller in the loop ({m['gains']} gains), each window" if w == 0 else None)
        free = (res["metrics"].get("replay") or {}).get("attitude_error_deg") or {}
        att.plot([float(h) for h in free], [np.nan if v is None else v for v in free.values()], "o--", color=c,
                 label=f"{name}: open loop (logged commands), median")
        u_sim = (np.mean(s["command_sim"], axis=2) + 1) / 2          # [steps, windows]
        for w, t0 in enumerate(s["t_start_s"]):
            cmd.plot(t0 + t[:-1], u_sim[:, w], "-", color=c, lw=0.8,
                     label=f"{name}: the controller in the sim, each window" if w == 0 else None)
    cmd.plot(traj.t_s, np.nanmean(traj.motor_throttle, axis=1), "k-", lw=0.8, label="logged (real controller)")
    att.axhline(10, color="gray", ls=":", lw=1, label="goal at 0.5 s: 10°")
    att.set(xlabel="time into the window [s]", ylabel="attitude error [deg]", yscale="symlog", ylim=(0, 200),
            title="free replay: attitude error vs the log\n(the controller flies the sim along the logged path)")
    att.legend(fontsize=8)
    cmd.set(xlabel="flight time [s]", ylabel="mean motor throttle 0..1",
            title="the command the sim's controller needs vs the logged one\n(a wrong thrust per command shows here)")
    cmd.legend(fontsize=8)
    return _save(fig, path)


def write_html(metrics: dict, images: list[str], path: str) -> str:
    log_info = metrics["log"]
    issues = "".join(f"<li>{html.escape(i)}</li>" for i in log_info.get("issues", [])) or "<li>none</li>"
    blocks = []
    for img in images:
        with open(img, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        blocks.append(f'<h3>{html.escape(os.path.basename(img))}</h3><img alt="{html.escape(os.path.basename(img))}" '
                      f'src="data:image/png;base64,{data}">')
    broken = (f"<p><b>The log is broken:</b> {html.escape(log_info['broken'])}</p>" if log_info.get("broken") else "")
    name = html.escape(os.path.basename(log_info["file"]))
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>sim vs real: {name}</title>
<style>{STYLE}</style></head><body>
<h1>Sim vs real: {name}</h1>
<p>{_fmt(log_info['format'])}, {log_info['samples']} samples, {log_info['duration_s']:.2f} s at
{_fmt(log_info['rate_hz'])} Hz,
{log_info['segments']} gap-free segment(s); streams: {html.escape(', '.join(log_info['streams']))}.</p>{broken}
<h2>What was wrong with the log</h2><ul>{issues}</ul>
<h2>Model check and open-loop replay</h2>{_metric_rows(metrics)}
<p class="note">Model check: at every sample the sim is put in the logged state with the logged rotor speeds and
stepped once; its acceleration (specific force, body FLU) is compared with the accelerometer (R² = 1 − SS_res / SS_tot
about the measured mean, after the same smoothing on both). Hover closure = Σ kf ω² / (m g) at the median rotor
speeds of the calmest second (1 = the profile holds the drone up exactly). Replay: the sim starts at the logged
state every {_fmt((next(iter(metrics['by_profile'].values())).get('replay') or {}).get('every_s'))} s, is fed the
logged commands, and the median position error after each horizon is shown; in the attitude-forced replay the
attitude, body rates and rotor speeds are set to the logged ones at every step, so only the translation (thrust and
drag) is predicted.</p>
{_closed_rows(metrics)}
<h2>Pictures</h2>{''.join(blocks)}
<h2>All figures</h2><pre>{html.escape(json.dumps(metrics, indent=1))}</pre>
</body></html>"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def write_report(traj: Trajectory, results: dict, metrics: dict, out_dir: str) -> list[str]:
    """PNGs, metrics.json and report.html in out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    images = [plot_trajectory(traj, os.path.join(out_dir, "trajectory.png"))]
    if all("model_check" in r["series"] for r in results.values()):
        images.append(plot_model_check(results, os.path.join(out_dir, "model_check.png")))
    if all("replay" in r["series"] for r in results.values()):
        images.append(plot_replay(results, traj, os.path.join(out_dir, "replay.png")))
    if all("replay_controller" in r["series"] for r in results.values()):
        images.append(plot_controller_replay(results, traj, os.path.join(out_dir, "replay_controller.png")))
    if any("closed_loop" in r["series"] for r in results.values()):
        images.append(plot_closed_loop(results, os.path.join(out_dir, "closed_loop.png")))
    metrics_path = os.path.join(out_dir, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    return images + [metrics_path, write_html(metrics, images, os.path.join(out_dir, "report.html"))]
