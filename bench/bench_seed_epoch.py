"""CPU cost of one training epoch at the seed's network size, per halo: what an epoch of the
seed's full set (``pipelines/seed.yaml``: 79,200 training + 19,800 validation halos) costs.

One epoch of the seed's networks (classifier: ResNet (8, 16, 32) -> 128; theta: NSF 10
transforms x 100 hidden, CNN 64x64 -> 128; batch 128), on any published set, timed in CPU-seconds
of this process (the robust figure on a shared machine) and wall seconds, then scaled to the
seed's set by its number of halos (the cost of an epoch is linear in the halos it visits):

    python bench/bench_seed_epoch.py --store lcurve/sims012/store.zarr --set curve:v1 --out bench/results

``--device cuda --epochs 3`` times the same networks on a GPU (``bench/gpu_check.sh``): wall
seconds per epoch are then the figure, the first epoch's set-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SEED_TRAIN, SEED_VAL = 79_200, 19_800


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--set", required=True, help="NAME:VERSION")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", nargs="+", default=["nsub_classifier", "theta"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from casbi_store.learn.trainer import TrainConfig, train
    from casbi_store.store import trainingsets

    torch.set_num_threads(args.threads)
    name, _, version = args.set.partition(":")
    halos = {s: trainingsets.open_split_group(args.store, name, version, s)["x"].shape[0]
             for s in ("train", "val")}
    figures: dict = {"set": args.set, "halos": halos, "threads": args.threads,
                     "device": args.device, "epochs": args.epochs, "tasks": {}}
    if args.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()
            start, cpu = time.perf_counter(), time.process_time()
            train(args.store, name, version, task, Path(tmp) / task,
                  TrainConfig(epochs=args.epochs, patience=args.epochs, in_memory=True,
                              device=args.device))  # the seed's network size
            wall, cpu = ((time.perf_counter() - start) / args.epochs,
                         (time.process_time() - cpu) / args.epochs)  # per epoch
        scale = (SEED_TRAIN + SEED_VAL) / (halos["train"] + halos["val"])
        figures["tasks"][task] = {"cpu_s": cpu, "wall_s": wall, "load_before": load,
                                  "load_after": os.getloadavg(),
                                  "cpu_s_per_seed_epoch": cpu * scale,
                                  "wall_s_per_seed_epoch": wall * scale}
        print(f"{task} ({args.device}): one epoch of {halos['train']} + {halos['val']} halos: "
              f"{cpu:.1f} CPU-s, {wall:.1f} s wall (load {load[0]:.0f}); the seed's set: "
              f"~{cpu * scale:.0f} CPU-s, ~{wall * scale:.0f} s wall per epoch", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "seed_epoch.json" if args.device == "cpu" else f"seed_epoch_{args.device}.json"
    (out / name).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
