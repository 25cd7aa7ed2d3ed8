"""A PNG of a stand run: throttle, rotor speed, thrust and torque, voltage and current over time."""
from __future__ import annotations

import os

import numpy as np

from thrust_stand.log import read_stand_log


def plot_run(log_path: str, png_path: str | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stand_log = read_stand_log(log_path)
    d, meta = stand_log.data, stand_log.meta
    png_path = png_path or os.path.splitext(log_path)[0] + ".png"
    t = d["t_s"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    panels = [
        (axes[0], [("throttle", "throttle (0..1)", "tab:blue")]),
        (axes[1], [("rpm", "rotor speed (rpm)", "tab:orange")]),
        (axes[2], [("thrust_n", "thrust (N)", "tab:green"), ("torque_nm", "torque (N·m)", "tab:red")]),
        (axes[3], [("current_a", "current (A)", "tab:purple"), ("voltage_v", "voltage (V)", "tab:gray")]),
    ]
    for ax, series in panels:
        for k, (column, label, color) in enumerate(series):
            target = ax if k == 0 else ax.twinx()
            if np.isfinite(d[column]).any():
                target.plot(t, d[column], lw=0.8 if k == 0 else 0.6, alpha=1.0 if k == 0 else 0.7, color=color)
            target.set_ylabel(label, color=color)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    title = f"{meta.get('procedure', 'stand run')}: {meta.get('ended', '?')}"
    counters = meta.get("counters") or {}
    if counters:
        title += (f"\n{len(t)} samples, {counters.get('bad_checksum', 0)} bad checksums, "
                  f"{counters.get('malformed', 0)} malformed, {counters.get('missed_samples', 0)} missed")
    fig.suptitle(title[:200], fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
