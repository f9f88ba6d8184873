"""Does the point-estimate head help step 1? The N_sub NPE (``--task nsub``) or classifier
(``--task nsub_classifier``) trained with demo.yaml's settings (one member, 10 epochs (``--epochs``), batch
128, lr 1e-3, seed 0 or ``--seed``) with ``point_estimate_weight`` W, judged with
``evaluate.evaluate_nsub`` (500 samples) on 200 halos each of the set's validation split (in
distribution), its test split (held-out simulations) and ``--external`` (another suite, the same
bin edges); with ``--weight 0`` the demo's classifier (``--classifier``) is judged beside it.

    OMP_NUM_THREADS=1 python bench/bench_nsub_point_estimate.py --store demo/store.zarr \\
        --set nsub_uniform:v1 --external external/store.zarr:ext:v1 --classifier \\
        demo/models/nsub_classifier --work models --out bench/results/point_estimate --weight 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--set", required=True, help="NAME:VERSION to train on")
    p.add_argument("--external", required=True, help="STORE:NAME:VERSION (its test split)")
    p.add_argument("--classifier", help="a step-1 model folder judged beside (with --weight 0)")
    p.add_argument("--work", required=True, help="folder for the model folders")
    p.add_argument("--out", required=True, help="folder for the JSON")
    p.add_argument("--weight", type=float, required=True)
    p.add_argument("--task", choices=("nsub", "nsub_classifier"), default="nsub")
    p.add_argument("--seed", type=int, default=0, help="the member's seed")
    p.add_argument("--epochs", type=int, default=10, help="at most (patience 3; demo.yaml: 10)")
    args = p.parse_args(argv)

    import torch

    from casbi_store.evaluation import evaluate as ev
    from casbi_store.learn.modelfolder import load_model
    from casbi_store.learn.trainer import TrainConfig, train

    torch.set_num_threads(1)
    name, version = args.set.split(":")
    ext_store, ext_name, ext_version = args.external.rsplit(":", 2)
    sets = {"val": (args.store, name, version, "val"), "test": (args.store, name, version, "test"),
            "external": (ext_store, ext_name, ext_version, "test")}
    slug = (f"{args.task}_pe{args.weight:g}" + (f"_s{args.seed}" if args.seed else "")
            + (f"_e{args.epochs}" if args.epochs != 10 else ""))
    folder = Path(args.work) / slug
    row: dict = {}
    if not (folder / "ensemble.json").exists():
        cpu = time.process_time()
        train(args.store, name, version, args.task, folder,
              TrainConfig(epochs=args.epochs, patience=3, batch_size=128, learning_rate=1e-3,
                          seed=args.seed,
                          point_estimate_weight=args.weight))
        row["train_cpu_seconds"] = time.process_time() - cpu
    models = {f"{args.task} pe {args.weight:g}": folder}
    if args.weight == 0 and args.classifier:
        models["demo classifier"] = Path(args.classifier)
    keep = ("coverage_68", "coverage_95", "median_rel_error", "skill", "rmse")
    for label, path in models.items():
        model = load_model(path)
        for condition, where in sets.items():
            metrics = ev.evaluate_nsub(model, ev.read_split(*where, 200), n_samples=500,
                                       seed=0)["metrics"]
            row[f"{label} {condition}"] = {k: metrics[k] for k in keep if k in metrics}
            print(label, condition, row[f"{label} {condition}"], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{slug}.json").write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
