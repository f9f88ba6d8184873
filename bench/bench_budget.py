"""What step 2 (``theta``) learns for a fixed CPU budget: schedules, batch size, cheaper steps.

Every variant trains one member on the same set (``--set``, the demo's ``nsub_uniform:v1``),
seed 0, one torch thread, with a number of epochs chosen so that its training costs about what
demo.yaml's settings cost (10 epochs, batch 128, lr 1e-3; per-step costs measured first, see
bench/README.md). Variants are **selected** on ``--halos`` evenly spaced halos of the set's
validation split (new combinations of the training galaxies); ``--final`` judges the named
variants on the set's test split (held-out simulations) and on ``--external`` (another mock
suite, the same bin edges), neither used for selection. θ of rank 1, step 2 conditioned on the
true N_sub (coverage, skill against the prior box, RMSE of the posterior mean), beside ridge and
gradient-boosted baselines fitted on 2,000 training rows (``baselines.py``: summary statistics of
the plane) and a GBR given log10 N_sub too (the flow's own conditions).

``regressor`` variants are the diagnostic of τ: the flow's embedding (the same CNN, N_sub and
rank appended) with an MLP head trained by MSE on the standardised θ for the same steps. If it
also misses τ₁ the limit is the inputs or the optimisation, if it gets τ₁ the limit is the flow.

Each variant runs in its own process (``--only NAME``) and writes ``--out/NAME.json``, so its
CPU seconds (``time.process_time``) are its own; the machine is shared:

    OMP_NUM_THREADS=1 python bench/bench_budget.py --store demo.zarr --set nsub_uniform:v1 \\
        --external ext.zarr:ext:v1 --work models --out results --only "default"
    python bench/bench_budget.py ... --final "default" "onecycle 3e-3"   # test + external
    python bench/bench_budget.py ... --table                              # Markdown tables
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

# demo.yaml's training settings, one member
BASE = dict(epochs=10, patience=3, batch_size=128, learning_rate=1e-3, seed=0)
VARIANTS: dict[str, tuple[str, dict]] = {
    # name: (kind, TrainConfig options over BASE); epochs chosen for ~the default's CPU seconds
    "default": ("flow", {}),
    "onecycle 3e-3": ("flow", {"lr_schedule": "onecycle", "learning_rate": 3e-3}),
    "cosine 1e-3": ("flow", {"lr_schedule": "cosine"}),
    "batch 32, pooled, 8 ep": ("flow", {"batch_size": 32, "embedding": "pooled", "epochs": 8}),
    "batch 32, marginals+mlp, 8 ep": ("flow", {"batch_size": 32, "embedding": "mlp", "epochs": 8,
                                              "representation": "log1p_marginals"}),
    "batch 32, pooled, onecycle 2e-3, 8 ep": ("flow", {"batch_size": 32, "embedding": "pooled",
                                                      "epochs": 8, "lr_schedule": "onecycle",
                                                      "learning_rate": 2e-3}),
    "batch 32, flow 5x50, 8 ep": ("flow", {"batch_size": 32, "num_transforms": 5,
                                          "hidden_features": 50, "epochs": 8}),
    "onecycle 1e-3": ("flow", {"lr_schedule": "onecycle"}),
    "batch 64, onecycle 2e-3, 8 ep": ("flow", {"batch_size": 64, "epochs": 8,
                                              "lr_schedule": "onecycle", "learning_rate": 2e-3}),
    "batch 32, pooled, cosine 2e-3, 8 ep": ("flow", {"batch_size": 32, "embedding": "pooled",
                                                    "epochs": 8, "lr_schedule": "cosine",
                                                    "learning_rate": 2e-3}),
    "batch 32, marginals+mlp, onecycle 2e-3, 8 ep": (
        "flow", {"batch_size": 32, "embedding": "mlp", "epochs": 8, "lr_schedule": "onecycle",
                 "representation": "log1p_marginals", "learning_rate": 2e-3}),
    # references above the budget: what more CPU would buy
    "2x budget: 20 epochs": ("flow", {"epochs": 20}),
    "~4x budget: batch 32, 10 ep": ("flow", {"batch_size": 32}),
    "batch 32, pooled, flow 5x50, 8 ep": ("flow", {"batch_size": 32, "embedding": "pooled",
                                                  "num_transforms": 5, "hidden_features": 50,
                                                  "epochs": 8}),
    "batch 32, flow 5x50, 10 ep": ("flow", {"batch_size": 32, "num_transforms": 5,
                                           "hidden_features": 50}),
    "regressor (cnn, MSE)": ("regressor", {}),
    # the fix of τ that the regressor suggests: its MSE head on the flow's embedding, trained
    # jointly, its estimate appended to the flow's condition (``estimators.PointEstimate``)
    "point estimate 1.0": ("flow", {"point_estimate_weight": 1.0}),
    "point estimate 0.3": ("flow", {"point_estimate_weight": 0.3}),
    "point estimate 3.0": ("flow", {"point_estimate_weight": 3.0}),
    "point estimate 10": ("flow", {"point_estimate_weight": 10.0}),
    "point estimate 30": ("flow", {"point_estimate_weight": 30.0}),
    "point estimate 100": ("flow", {"point_estimate_weight": 100.0}),
}
COLUMNS = ("log10_mstar_1", "log10_mdm_1", "tau_1")  # the flow's theta order, rank 1


def _slug(name: str, seed: int = 0) -> str:
    """File name of a variant (``_s{seed}`` for seeds other than 0)."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") + (f"_s{seed}" if seed else "")


def _config(args, name: str):
    from casbi_store.learn.trainer import TrainConfig

    return TrainConfig(**{**BASE, **VARIANTS[name][1], "seed": args.seed})


def _sets(args) -> dict[str, tuple[str, str, str, str]]:
    """condition -> (store, set, version, split)."""
    name, version = args.set.split(":")
    ext_store, ext_name, ext_version = args.external.rsplit(":", 2)
    return {"val": (args.store, name, version, "val"), "test": (args.store, name, version, "test"),
            "external": (ext_store, ext_name, ext_version, "test")}


def _read(args, condition: str):
    from casbi_store.evaluation import evaluate as ev

    return ev.read_split(*_sets(args)[condition], args.halos)


def baselines(args, condition: str) -> dict:
    """Ridge and GBR on the plane's summary statistics, and GBR with log10 N_sub appended
    (rank-1 targets), fitted on 2,000 training rows; cached in ``--out``."""
    from threadpoolctl import threadpool_limits

    from casbi_store.evaluation import baselines as base

    cache = Path(args.out) / "baselines.json"
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if condition in cached:
        return cached[condition]
    store, name, version, _ = _sets(args)["val"]
    from casbi_store.evaluation import evaluate as ev

    train = ev.read_split(store, name, version, "train", 2000)
    data = _read(args, condition)
    scores = base.score(base.fit(train.x, train.n_sub, train.theta, ranks=1), data.x, data.n_sub,
                        data.theta, ranks=1)

    def features(d):
        return np.concatenate([base.plane_features(d.x), np.log10(d.n_sub)[:, None]], axis=1)

    ytrain, ytest = base.targets(train.n_sub, train.theta, 1), base.targets(data.n_sub, data.theta, 1)
    scores["gbr+n_sub"] = {}
    with threadpool_limits(1):
        for col in COLUMNS:
            model = base._model("gbr", 0).fit(features(train), ytrain[col])
            err = model.predict(features(data)) - ytest[col]
            scores["gbr+n_sub"][col] = {"rmse": float(np.sqrt(np.mean(err ** 2)))}
    cached[condition] = {k: {c: {"rmse": v[c]["rmse"]} for c in COLUMNS if c in v}
                         for k, v in scores.items()}
    cache.write_text(json.dumps(cached, indent=1))
    return cached[condition]


def train_flow(args, name: str) -> dict:
    from casbi_store.learn.trainer import train

    set_name, version = args.set.split(":")
    trained = train(args.store, set_name, version, "theta", Path(args.work) / _slug(name, args.seed),
                    _config(args, name))
    history = trained["members"][0]
    return {"epochs": len(history), "best_val_loss": trained["best_val_loss"][0],
            "val_loss": [h["val_loss"] for h in history]}


def _regressor(stats: dict, cfg):
    import torch

    from casbi_store.learn.estimators import RankedEmbedding, image_embedding

    torch.manual_seed(cfg.seed)
    embedding = RankedEmbedding(image_embedding(stats["mean"], stats["std"], cfg.conv_channels,
                                                cfg.embedding_dim))
    head = torch.nn.Sequential(torch.nn.Linear(cfg.embedding_dim + 3, cfg.hidden_features),
                               torch.nn.ReLU(), torch.nn.Linear(cfg.hidden_features,
                                                                cfg.hidden_features),
                               torch.nn.ReLU(), torch.nn.Linear(cfg.hidden_features, 3))
    return torch.nn.Sequential(embedding, head)


def train_regressor(args, name: str) -> dict:
    """The flow's embedding + an MLP head, MSE on θ standardised by the training example rows,
    the trainer's streams, batches, optimizer, clipping and epochs (no early stopping)."""
    import torch

    from casbi_store.learn import trainer as T
    from casbi_store.learn.streaming import TrainingSetStream
    from casbi_store.learn.tasks import get_task

    cfg = _config(args, name)
    task = get_task("theta")
    set_name, version = args.set.split(":")
    out = Path(args.work) / _slug(name, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    streams = {s: TrainingSetStream(args.store, set_name, version, s, target=task.target,
                                    buffer_chunks=cfg.buffer_chunks, seed=cfg.seed,
                                    shuffle=s == "train") for s in ("train", "val")}
    _, stats = T._prepare(args.store, set_name, version, "theta", out, cfg, streams, None)
    mean = torch.as_tensor(stats["theta_example"].mean(axis=0), dtype=torch.float32)
    std = torch.as_tensor(stats["theta_example"].std(axis=0), dtype=torch.float32)
    net = _regressor(stats, cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    losses = []
    for epoch in range(cfg.epochs):
        streams["train"].set_epoch(epoch)
        for theta, condition in T._pairs(streams["train"], task, cfg, epoch, cfg.seed):
            optimizer.zero_grad()
            loss = ((net(condition) - (theta - mean) / std) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_norm)
            optimizer.step()
        losses.append(loss.item())
    torch.save({"net": net.state_dict(), "mean": mean, "std": std}, out / "regressor.pt")
    return {"epochs": cfg.epochs, "last_train_loss": losses}


def judge(args, name: str, condition: str) -> dict:
    """Rank-1 figures of a trained variant on one condition's halos."""
    import torch

    from casbi_store.evaluation import evaluate as ev
    from casbi_store.learn.modelfolder import load_model

    data = _read(args, condition)
    folder = Path(args.work) / _slug(name, args.seed)
    model = load_model(folder) if VARIANTS[name][0] == "flow" else None
    cpu = time.process_time()
    if model is not None:
        metrics = ev.evaluate_theta(model, data, n_samples=args.samples, ranks=1, seed=0)["metrics"]
        per = {c: {k: metrics.get(f"{k}_{c}") for k in ("coverage_68", "coverage_95", "skill", "rmse")}
               for c in COLUMNS}
    else:
        from casbi_store.learn.modelfolder import read_transform
        from casbi_store.learn.tasks import get_task

        saved = torch.load(folder / "regressor.pt", weights_only=True)
        net = _regressor(read_transform(folder), _config(args, name))
        net.load_state_dict(saved["net"])
        net.eval()
        theta, cond, _ = get_task("theta").evaluation_pairs(
            torch.as_tensor(data.x)[:, None], torch.as_tensor(data.theta), ranks=1)
        with torch.no_grad():
            pred = net(cond) * saved["std"] + saved["mean"]
        err = (pred - theta).double().numpy()
        per = {c: {"rmse": float(np.sqrt(np.mean(err[:, k] ** 2)))} for k, c in enumerate(COLUMNS)}
    return {"parameters": per, "eval_cpu_seconds": time.process_time() - cpu,
            "halos": len(data.x)}


def run(args, name: str) -> None:
    import torch

    out = Path(args.out) / f"{_slug(name, args.seed)}.json"
    row = json.loads(out.read_text()) if out.exists() else {"name": name}
    if "train_cpu_seconds" not in row:
        torch.set_num_threads(1)
        load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        trained = train_flow(args, name) if VARIANTS[name][0] == "flow" else train_regressor(args, name)
        row.update(kind=VARIANTS[name][0], options=VARIANTS[name][1], **trained,
                   train_cpu_seconds=time.process_time() - cpu,
                   train_wall_seconds=time.perf_counter() - wall,
                   load_average=[load, os.getloadavg()[0]])
        out.write_text(json.dumps(row, indent=1, default=float))
    for condition in ("val", *(("test", "external") if args.final else ())):
        if condition not in row:
            row[condition] = judge(args, name, condition)
            out.write_text(json.dumps(row, indent=1, default=float))
    print(json.dumps(row, default=float), flush=True)


def step_costs(args, names: list[str]) -> dict:
    """CPU seconds per epoch's data loading (streamed and in memory), per training step (20
    steps) and per validation pass of each variant's network: where the budget goes."""
    import tempfile

    import torch

    from casbi_store.learn import modelfolder as F
    from casbi_store.learn import trainer as T
    from casbi_store.learn.streaming import TrainingSetStream
    from casbi_store.learn.tasks import get_task

    torch.set_num_threads(1)
    task, (set_name, version) = get_task("theta"), args.set.split(":")
    out = {}
    for name in names:
        cfg = _config(args, name)
        streams = {s: TrainingSetStream(args.store, set_name, version, s, target=task.target,
                                        seed=0, shuffle=s == "train") for s in ("train", "val")}
        folder = Path(tempfile.mkdtemp(prefix="step_costs_"))
        meta, stats = T._prepare(args.store, set_name, version, "theta", folder, cfg, streams, None)
        net = F.build_member(meta, stats, 0)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        row = {}
        for kind, src in (("streamed", streams), ("in_memory", {k: T._InMemory(s) for k, s in
                                                                  streams.items()})):
            cpu = time.process_time()
            batches = list(T._pairs(src["train"], task, cfg, 0, 0))
            row[f"load_epoch_{kind}"] = time.process_time() - cpu
        cpu = time.process_time()
        for theta, condition in batches[:20]:
            optimizer.zero_grad()
            net.loss(theta, condition).mean().backward()
            optimizer.step()
        row.update(steps_per_epoch=len(batches), step=(time.process_time() - cpu) / 20)
        cpu = time.process_time()
        with torch.no_grad():
            for theta, condition in T._pairs(streams["val"], task, cfg, 0, 0):
                net.loss(theta, condition)
        row["validation_pass"] = time.process_time() - cpu
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def _fmt(v, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(args, condition: str) -> str:
    """Markdown: one row per variant, means over the seeds run (n): train CPU seconds, rank-1
    68% coverage and RMSE of each parameter, skill of τ₁, and the score (the mean over the three
    parameters of RMSE / ridge's RMSE on the same halos: < 1 beats the linear baseline)."""
    base = baselines(args, condition)
    head = "| variant | seeds | train CPU-s |"
    head += "".join(f" {c} cov68 / RMSE |" for c in COLUMNS) + " τ₁ skill | score |"
    lines = [head, "|" + "---|" * (5 + len(COLUMNS))]
    for name in VARIANTS:
        rows = [json.loads(p.read_text()) for p in
                (Path(args.out) / f"{_slug(name, seed)}.json" for seed in range(4)) if p.exists()]
        rows = [r for r in rows if condition in r]
        if not rows:
            continue

        def mean(key: str, col: str, rows=rows) -> float | None:
            values = [r[condition]["parameters"][col].get(key) for r in rows]
            return None if None in values else float(np.mean(values))

        cells = f"| {name} | {len(rows)} | {np.mean([r['train_cpu_seconds'] for r in rows]):.0f} |"
        cells += "".join(f" {_fmt(mean('coverage_68', c))} / {_fmt(mean('rmse', c), 3)} |"
                         for c in COLUMNS)
        score = np.mean([mean("rmse", c) / base["ridge"][c]["rmse"] for c in COLUMNS])
        lines.append(cells + f" {_fmt(mean('skill', 'tau_1'))} | {score:.3f} |")
    for kind, per in base.items():
        lines.append(f"| {kind} baseline | | |" + "".join(f" / {_fmt(per[c]['rmse'], 3)} |"
                                                       for c in COLUMNS) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--set", required=True, help="NAME:VERSION every variant trains on")
    p.add_argument("--external", required=True, help="STORE:NAME:VERSION, another suite's set "
                   "binned with --set's edges (its test split)")
    p.add_argument("--work", required=True, help="folder for the model folders")
    p.add_argument("--out", required=True, help="folder for the per-variant JSON files")
    p.add_argument("--halos", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the members' seed (demo.yaml's 2nd: 1)")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--only", nargs="*", help="variant names (default: all, one after another)")
    p.add_argument("--final", action="store_true", help="judge on test and external too")
    p.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    p.add_argument("--step-costs", action="store_true",
                   help="CPU seconds per step, epoch's loading and validation of --only, and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.table:
        for condition in ("val", "test", "external"):
            print(f"\n{condition}:\n{table(args, condition)}")
        return
    if args.step_costs:
        step_costs(args, args.only or ["default"])
        return
    for name in args.only or VARIANTS:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        run(args, name)


if __name__ == "__main__":
    main()
