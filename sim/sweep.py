"""Hyperparameter sweeps of the trainer on Ray Tune: `skyloop sweep --trials N --time-budget S`.

    skyloop sweep --trials 8 --time-budget 30 --json                 # on this machine, no set-up
    skyloop sweep --trials 64 --time-budget 60 --address ray://head:10001 --train.tasks all

Each trial is one `skyloop train` run (sim/train.py) with a config drawn from SEARCH_SPACE (plus
any --train.FIELD VALUE given, which every trial shares), for S seconds of training, then the
usual evaluation on fresh randomized drones; Tune runs the trials (in parallel where there are
cores, each on one torch thread) and the sweep prints the best config and its evaluation. With
--address the trials run on a Ray cluster; its nodes need skyloop installed (`pip install -e .`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile

log = logging.getLogger(__name__)


class SweepError(ValueError):
    """A sweep that cannot run (Ray missing, bad arguments, every trial failed); says what to do."""

#: what a trial may vary, as (kind, arguments) of ray.tune's samplers
SEARCH_SPACE = {
    "lr": ("loguniform", (1e-3, 1e-2)),
    "num_drones": ("choice", ([256, 512, 1024],)),
    "horizon": ("choice", ([32, 64],)),
    "epochs": ("choice", ([1, 2, 3],)),
    "minibatches": ("choice", ([1, 2, 4, 8],)),
    "gamma": ("choice", ([0.97, 0.98, 0.99],)),
    "init_log_std": ("uniform", (-1.5, -0.5)),
}


def _search_space():
    from ray import tune
    return {name: getattr(tune, kind)(*args) for name, (kind, args) in SEARCH_SPACE.items()}


def run_trial(params: dict, overrides: list[str], time_budget_s: float, eval_episodes: int, threads: int,
              device: str) -> dict:
    """One trial: train with `params` on top of `overrides`, evaluate, return the figures."""
    from sim.train import TrainConfig, parse_overrides, train

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_overrides(overrides, TrainConfig(output=os.path.join(tmp, "policy.pt"), threads=threads,
                                                        time_budget_s=time_budget_s, eval_episodes=eval_episodes,
                                                        device=device))
        for name, value in params.items():
            setattr(config, name, type(getattr(config, name))(value))
        metrics = train(config, progress_stream=io.StringIO())
    return {"success_rate": metrics["eval_success_rate"], "crash_rate": metrics["eval_crash_rate"],
            "steps": metrics["steps"], "steps_per_s": metrics["steps_per_s"]}


def _trainable(params, overrides, time_budget_s, eval_episodes, threads, device):
    from ray import tune
    tune.report(run_trial(params, overrides, time_budget_s, eval_episodes, threads, device))


def sweep(trials: int, time_budget_s: float, overrides: list[str] | None = None, eval_episodes: int = 1000,
          address: str | None = None, gpus_per_trial: float = 0.0, seed: int = 0) -> dict:
    """Runs `trials` trials on Ray Tune (a local Ray started here unless `address` names a
    cluster); returns {"best_config", "best_eval", "trials"}."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SweepError("skyloop sweep needs Ray Tune: pip install -e '.[train]' (it brings ray[tune])") from None
    from sim.train import TrainConfig, parse_overrides

    overrides = list(overrides or [])
    parse_overrides(overrides, TrainConfig()).validate()          # a bad override fails here, not in N trials
    if trials < 1 or not time_budget_s > 0:
        raise SweepError("--trials must be at least 1 and --time-budget positive")
    device = "cuda" if gpus_per_trial > 0 else "cpu"
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        started = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainable = tune.with_parameters(_trainable, overrides=overrides, time_budget_s=time_budget_s,
                                             eval_episodes=eval_episodes, threads=1, device=device)
            trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": gpus_per_trial})
            search = tune.search.BasicVariantGenerator(random_state=seed)
            tuner = tune.Tuner(
                trainable, param_space=_search_space(),
                tune_config=tune.TuneConfig(num_samples=trials, metric="success_rate", mode="max", search_alg=search),
                run_config=tune.RunConfig(name="skyloop-sweep", storage_path=tmp if not address else None, verbose=0))
            with contextlib.redirect_stdout(sys.stderr):      # Tune's tables; stdout is for our result
                results = tuner.fit()
            rows = []
            for result in results:
                if result.error is not None:
                    rows.append({"config": result.config, "error": str(result.error).splitlines()[-1][:300]})
                else:
                    rows.append({"config": result.config, "eval": {k: result.metrics[k] for k in
                                                                   ("success_rate", "crash_rate", "steps",
                                                                    "steps_per_s")}})
    finally:
        if started:
            ray.shutdown()
    done = [r for r in rows if "eval" in r]
    if not done:
        raise SweepError(f"every trial failed; the first: {rows[0].get('error')}")
    best = max(done, key=lambda r: (r["eval"]["success_rate"], -r["eval"]["crash_rate"]))
    return {"best_config": best["config"], "best_eval": best["eval"], "trials": rows,
            "train_command": "skyloop train " + " ".join(overrides + [f"--train.{k} {v}" for k, v in best["config"].items()])}


def add_arguments(parser) -> None:
    parser.add_argument("--trials", type=int, default=8, help="configs to try")
    parser.add_argument("--time-budget", type=float, default=30.0, dest="time_budget_s",
                        help="training seconds per trial")
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per trial (fresh drones)")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster (ray://HOST:PORT); default: start Ray on this machine")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (trains on cuda when > 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the config draws")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.epilog = ("Any --train.FIELD VALUE / --task.FIELD VALUE is passed to every trial. Varied per trial: "
                     + ", ".join(SEARCH_SPACE))


def run(args, extra: list[str]) -> int:
    if not args.json:
        print(f"skyloop sweep: {args.trials} trials of {args.time_budget_s:g} s on "
              f"{args.address or 'a local Ray'}", file=sys.stderr, flush=True)
    result = sweep(args.trials, args.time_budget_s, extra, args.episodes, args.address, args.gpus_per_trial, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    for row in sorted(result["trials"], key=lambda r: -r.get("eval", {}).get("success_rate", -1)):
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["config"].items())
        figures = (f"success {100 * row['eval']['success_rate']:5.1f} %  crash {100 * row['eval']['crash_rate']:5.1f} %"
                   if "eval" in row else f"failed: {row['error']}")
        print(f"  {figures}  {params}")
    print(f"best: {result['train_command']}")
    return 0
