"""Evaluation and report: metrics against independent computations, a self-contained page."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import store_with_set

from casbi_store.posteriors import credible_set
from casbi_store.trainer import TrainConfig, train

TINY = TrainConfig(epochs=2, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def models(tiny_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    store = store_with_set(tiny_store[0], folder, name="t", n_sub_min=3, n_sub_max=8,
                           train_per_n=100, test_per_n=20, seed=5)
    out = {}
    for task in ("nsub", "nsub_classifier", "theta"):
        train(store, "t", "v1", task, folder / task, TINY)
        out[task] = folder / task
    return store, out


def test_credible_set_is_the_smallest_set_reaching_the_level():
    p = np.array([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(credible_set(p, 0.68), [[0, 1, 1, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(credible_set(p, 0.5), [[0, 1, 0, 0], [1, 1, 0, 0]])


def test_nsub_metrics_match_a_direct_computation(models):
    from casbi_store.evaluate import evaluate_nsub, read_split
    from casbi_store.modelfolder import load_model

    store, paths = models
    model = load_model(paths["nsub_classifier"])
    data = read_split(store, "t", "v1", "test", max_halos=1000)
    assert len(data.x) == len(np.unique(data.rows)) and set(np.unique(data.n_sub)) <= set(range(3, 9))
    result = evaluate_nsub(model, data)
    with torch.no_grad():  # independent: the single member's softmax, by hand
        probs = torch.softmax(model.members[0].logits(torch.as_tensor(data.x)[:, None]), 1).numpy()
    np.testing.assert_allclose(result["probs"], probs, rtol=1e-5, atol=1e-7)
    mode = np.argmax(probs, axis=1) + 3
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(mode == data.n_sub))
    covered = []
    for p, n in zip(probs, data.n_sub, strict=True):
        order = np.argsort(-p)
        k = np.searchsorted(np.cumsum(p[order]), 0.68) + 1
        covered.append(n - 3 in order[:k])
    assert result["metrics"]["coverage_68"] == pytest.approx(np.mean(covered))
    assert result["confusion"].sum() == len(data.x)
    assert np.array_equal(result["confusion"].sum(axis=1), np.bincount(data.n_sub - 3, minlength=6))


def test_report_page_embeds_every_image(models, tmp_path):
    store, paths = models
    proc = subprocess.run([sys.executable, "-m", "casbi_store.cli", "evaluate",
                           *(str(p) for p in paths.values()), "--out", str(tmp_path / "rep"),
                           "--halos", "120", "--samples", "60"],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "report" in proc.stdout and "tarp_max_deviation" in proc.stdout
    page = (tmp_path / "rep" / "report.html").read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == 7  # halos, training, N_sub, theta means + TARP + SBC, corner
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.findall(r'(?:href|src)="(?!data:)[^"#]+"', page)  # nothing outside the page
    import json

    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    theta = next(m for m in metrics["models"].values() if m["task"] == "theta")["metrics"]
    assert -1 <= theta["tarp_atc"] <= 1 and len(theta["sbc_ks_pvalues"]) == 3
    assert set(metrics["headline"]) == {"nsub_coverage_68", "nsub_median_rel_error",
                                        "tarp_max_deviation", "r2_log10_mstar_1"}
