"""``casbi-store train``: an estimator (step 1 or 2) on a training set, streaming."""

from __future__ import annotations

import argparse
import os

from .common import add_set_options, add_train_options, split_set, train_config


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train an estimator (step 1 or 2) on a training set, streaming")
    add_set_options(t)
    t.add_argument("--out", required=True, help="model folder (checkpoints, weights, config)")
    add_train_options(t)
    t.set_defaults(func=run)


def train_model(store: str | os.PathLike, set_name: str, version: str, task: str,
                out: str | os.PathLike, config, *, per_member: bool = True) -> dict:
    """Train ``task`` on ``set_name:version`` of ``store`` into the model folder ``out`` with a
    ``trainer.TrainConfig``; print each member's losses (``per_member``) or one line."""
    from casbi_store.learn.trainer import train

    result = train(store, set_name, version, task, out, config)
    if not per_member:
        seconds = sum(r["seconds"] for h in result["members"] for r in h)
        print(f"model {task:<16} {out}: {len(result['members'])} member(s), "
              f"best validation loss {min(result['best_val_loss']):.3f}, {seconds:.0f} s")
        return result
    for k, history in enumerate(result["members"]):
        last = history[-1]
        print(f"  member {k}: {len(history)} epochs, best validation loss "
              f"{result['best_val_loss'][k]:.4f}, weight {result['weights'][k]:.3f} "
              f"(last: train {last['train_loss']:.4f}, val {last['val_loss']:.4f})")
    print(f"{task} model in {out}")
    return result


def run(args: argparse.Namespace) -> int:
    name, version = split_set(args.set)
    train_model(args.store, name, version, args.task, args.out, train_config(args))
    return 0
