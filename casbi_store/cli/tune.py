"""``casbi-store tune``: optuna search over a task's training options (resumable)."""

from __future__ import annotations

import argparse
import os

from casbi_store import InputError

from .common import add_set_options, add_train_options, split_set, train_config


def add_parser(sub) -> None:
    tu = sub.add_parser("tune", help="optuna search over learning rate, batch size, flow size and "
                                     "embedding width; re-run to resume")
    add_set_options(tu, "as for train")
    tu.add_argument("--out", required=True,
                    help="tune folder: optuna.db, trial-N model folders, best.json")
    tu.add_argument("--trials", type=int, required=True,
                    help="complete trials to reach (a re-run runs only the missing ones)")
    tu.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default 0)")
    tu.add_argument("--search", nargs="+", metavar="OPTION",
                    help="search only these options (e.g. learning_rate batch_size; default: "
                         "every option the task tunes), the rest as given")
    add_train_options(tu, tuned=True)
    tu.set_defaults(func=run)


def tune_task(store: str | os.PathLike, set_name: str, version: str, task: str,
              out: str | os.PathLike, trials: int, config, *, sampler_seed: int = 0,
              search: tuple[str, ...] | None = None) -> int:
    """Run the missing trials up to ``trials``, print them and the best; 1 if none is complete."""
    from casbi_store.learn.tune import tune

    result = tune(store, set_name, version, task, out, trials, config, seed=sampler_seed,
                  search=search)
    for row in result["trials"]:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        params = ", ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                           for k in result["params"] or {})
        print(f"  trial {row['trial']:>3}  {row['state']:<8}  log-likelihood {value:>9}  {params}")
    if result["best_trial"] is None:
        print(f"no complete trial yet; re-run to resume ({out}/optuna.db)")
        return 1
    print(f"best: trial {result['best_trial']}, validation log-likelihood {result['value']:.4f}, "
          f"model {result['model']} (summary: {out}/best.json)")
    return 0


def run(args: argparse.Namespace) -> int:
    name, version = split_set(args.set)
    return tune_task(args.store, name, version, args.task, args.out, args.trials,
                     train_config(args), sampler_seed=args.sampler_seed,
                     search=tuple(args.search) if args.search else None)


def tuned_config(folder: str | os.PathLike, config):
    """``config`` (a ``trainer.TrainConfig``) with the options of the best trial of the tune
    folder ``folder`` (its ``best.json``); an error naming the file if there is none yet."""
    import dataclasses
    import json
    from pathlib import Path

    path = Path(folder) / "best.json"
    try:
        best = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: no readable tune summary ({exc}); run the tune first") from exc
    if not best.get("params"):
        raise InputError(f"{path}: no complete trial yet; re-run the tune to finish it")
    return dataclasses.replace(config, **best["params"])
