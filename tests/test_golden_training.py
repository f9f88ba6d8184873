"""Refactors keep training bit-for-bit: each task, trained 2 epochs with a fixed seed on one
thread, gives the losses and log-probabilities recorded before the estimator-as-plug-in change.

``python tests/test_golden_training.py`` (re)records ``tests/data/golden_training.json`` on the
code checked out; run it only when a change of numbers is intended, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from casbi_store.learn.modelfolder import load_model
from casbi_store.learn.trainer import TrainConfig, train

GOLDEN = Path(__file__).parent / "data" / "golden_training.json"
SET = dict(name="g", n_sub_min=3, n_sub_max=6, train_per_n=40, test_per_n=3, seed=4)
CONFIG = dict(epochs=2, batch_size=32, hidden_features=8, num_transforms=2, embedding_dim=8,
              conv_channels=(2, 4), learning_rate=2e-3, patience=10, seed=11)
JOINT_N_SUB = 4
TASKS = {"nsub": {}, "nsub_classifier": {}, "theta": {}, "theta_joint": {"joint_n_sub": JOINT_N_SUB}}
ROWS = 8  # validation rows whose log-probabilities are recorded


def _pairs(store: Path, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta, condition) of the first validation rows, built here from the split's arrays
    (rank 1 for the per-rank model; the rows with N_sub = JOINT_N_SUB for the joint model)."""
    val = xr.open_zarr(store, group=f"training_sets/{SET['name']}/v1/val", consolidated=True)
    x = torch.as_tensor(val.x.values.astype(np.float32))[:, None]
    n_sub = val.n_sub.values
    theta = val.theta.values.astype(np.float64)
    if task.startswith("nsub"):
        return torch.as_tensor(n_sub[:ROWS], dtype=torch.float32)[:, None], x[:ROWS]
    block = np.stack([np.log10(theta[..., 0]), np.log10(theta[..., 1]), theta[..., 2]], axis=-1)
    if task == "theta":
        cond = torch.cat([x[:ROWS].reshape(ROWS, -1),
                          torch.as_tensor(n_sub[:ROWS], dtype=torch.float32)[:, None],
                          torch.ones(ROWS, 1)], dim=1)
        return torch.as_tensor(block[:ROWS, 0], dtype=torch.float32), cond
    keep = np.flatnonzero(n_sub == JOINT_N_SUB)[:ROWS]
    joint = block[keep, :JOINT_N_SUB].reshape(len(keep), 3 * JOINT_N_SUB)
    return torch.as_tensor(joint, dtype=torch.float32), x[keep]


def record(store: Path, folder: Path) -> dict:
    """Per task: each epoch's train and validation loss, and the log-probabilities of the first
    validation rows under the best member."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for task, extra in TASKS.items():
            cfg = TrainConfig(**CONFIG, **extra)
            history = train(store, SET["name"], "v1", task, folder / task, cfg)["members"][0]
            net = load_model(folder / task).members[0]
            theta, cond = _pairs(store, task)
            with torch.no_grad():
                log_prob = (-net.loss(theta, cond)).tolist()
            out[task] = {"train_loss": [h["train_loss"] for h in history],
                         "val_loss": [h["val_loss"] for h in history], "log_prob": log_prob}
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden_store(tiny_store, tmp_path_factory) -> Path:
    from conftest import store_with_set

    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("golden"), **SET)


def test_training_gives_the_recorded_losses_and_log_probs(golden_store, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    now = record(golden_store, tmp_path)
    assert sorted(now) == sorted(golden)
    for task, numbers in golden.items():
        for key, values in numbers.items():
            np.testing.assert_allclose(now[task][key], values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{task} {key}")


def main() -> None:
    """Build the tiny store as tests/conftest.py does, record twice, write the golden file if
    the two runs agree exactly."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TINY_SEED, store_with_set

    from casbi_store.mock import generate_suite, preset
    from casbi_store.store.extraction_run import extract_suite

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_suite(tmp / "suite", preset("tiny", seed=TINY_SEED, defects=True), workers=2,
                       progress=False)
        extract_suite(tmp / "suite", tmp / "tiny.zarr", n_workers=2, progress=False)
        (tmp / "s").mkdir()
        store = store_with_set(tmp / "tiny.zarr", tmp / "s", **SET)
        first, second = record(store, tmp / "a"), record(store, tmp / "b")
        if first != second:
            raise SystemExit(f"two runs differ:\n{first}\n{second}")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(first, indent=1) + "\n")
    print(f"{GOLDEN}: two runs identical; {json.dumps(first)[:400]}...")


if __name__ == "__main__":
    main()
