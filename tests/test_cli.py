"""The `skyloop` command line as a user runs it: sim demo picture, benchmark figures, errors."""
import json
import subprocess
import sys

import numpy as np


def skyloop(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "skyloop", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_verbs():
    out = skyloop("--help")
    assert out.returncode == 0
    assert "sim" in out.stdout and "bench" in out.stdout
    out = skyloop("nonsense")
    assert out.returncode == 2 and "unknown verb 'nonsense'" in out.stderr


def test_sim_demo_writes_a_picture_of_drones_reaching_their_targets(tmp_path):
    png = tmp_path / "demo.png"
    out = skyloop("sim", "--demo", "-o", str(png), "--drones", "6")
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    img = mpimg.imread(str(png))
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert np.std(img[..., :3]) > 0.05, "the picture should not be blank"
    errors = [float(line.split()[-2]) for line in out.stdout.splitlines() if line.startswith("drone")]
    assert len(errors) == 6
    assert np.median(errors) < 0.2, f"drones should reach their targets, final errors {errors}"


def test_bench_sim_json_reports_the_figures():
    out = skyloop("bench", "sim", "--json", "--drones", "1", "64", "--seconds", "0.2")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    sweep = [r for r in data["results"] if r["tasks"] == "hover"]
    assert [r["drones"] for r in sweep] == [1, 64]
    others = {r["tasks"]: r for r in data["results"] if r["tasks"] != "hover"}
    assert set(others) == {"race", "orbit", "follow", "formation", "obstacles", "all"}
    assert others["all"]["drones"] == 512 and others["all"]["drones_per_space"] == 512
    assert data["build"]["lanes"] * 4 == data["build"]["vector_bytes"] and data["build"]["isa"]
    for row in data["results"]:
        assert row["agent_steps_per_s"] > 1e4
        # counted by the kernels: every drone integrated 5 substeps per agent step, no more, no less
        assert abs(row["substeps_per_s"] - 5 * row["agent_steps_per_s"]) < 1e-6 * row["substeps_per_s"]
        assert row["substeps_integrated"] % (5 * row["drones"]) == 0
        # measured: what the environment allocated, divided by its drones (fixed costs weigh on few drones)
        assert abs(row["bytes_per_drone"] * row["drones"] - row["bytes_allocated"]) <= row["drones"]
        assert 200 < row["bytes_per_drone"] < (10000 if row["drones"] >= 64 else 200000)


def test_a_bad_profile_is_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "skyloop.profile/1", "params": {"mass_kg": -1}}))
    out = skyloop("sim", "--demo", "--profile", str(bad), "-o", str(tmp_path / "x.png"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "params.mass_kg = -1 is negative" in out.stderr and "params.arm_m: missing" in out.stderr
