#!/usr/bin/env bash
# The device check of `--device cuda` (issue 8: "document --device cuda as the path for the full
# run"): on a GPU machine, from the repository root, with the project's dependencies that the
# machine lacks carried as wheels in .whl/ (Python 3.12 manylinux wheels; see bench/README.md
# "GPU"). Results go to $OUT (default ./gpu-check).
#  1. the tiny pipeline end to end with every training on the GPU (`run --device cuda`);
#  2. its GPU-trained models evaluated and used by `infer` with the GPU hidden
#     (CUDA_VISIBLE_DEVICES=""), as on a laptop after training on a cluster;
#  3. one epoch of the seed's networks (bench/bench_seed_epoch.py) on the GPU and on the CPUs,
#     on a 12,000-halo set composed from the tiny store, scaled to the seed's 99,000 halos.
set -euo pipefail
OUT=${OUT:-gpu-check}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu PER_N=100: a dry run of the script on a machine without a GPU
PER_N=${PER_N:-2000}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site"
fi
export PYTHONUNBUFFERED=1
cs() { python3 -m casbi_store.cli "$@"; }
python3 -c "import torch, sbi; print('torch', torch.__version__, 'sbi', sbi.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nproc

echo "== 1. tiny pipeline, training on cuda"
SECONDS=0
cs run -q pipelines/tiny.yaml --device "$DEVICE" 2>&1 | tail -25
echo "tiny pipeline wall: ${SECONDS} s"
cp tiny-run/report/metrics.json "$OUT/tiny_metrics_gpu_trained.json"

echo "== 2. the GPU-trained models on a machine without a GPU"
CUDA_VISIBLE_DEVICES="" cs evaluate tiny-run/models/nsub_classifier tiny-run/models/theta \
    --out /tmp/eval_cpu --halos 60 --samples 50 2>&1 | tail -8
cp /tmp/eval_cpu/metrics.json "$OUT/eval_cpu_metrics.json"
python3 - <<'PY'
import numpy as np, xarray as xr
from casbi_store.store import trainingsets
g = trainingsets.open_split_group("tiny-run/store.zarr", "tiny_set", "v1", "test")
np.save("/tmp/halo0.npy", np.asarray(g["x"][0]))
PY
CUDA_VISIBLE_DEVICES="" cs infer tiny-run/models/nsub_classifier tiny-run/models/theta \
    --histogram /tmp/halo0.npy --out "$OUT/infer_cpu.nc" --samples 200 2>&1 | tail -8

echo "== 3. one epoch of the seed's networks, GPU and CPU"
cat > /tmp/gpu_epoch.yaml <<YAML
name: gpu_epoch
version: v1
scheme: uniform
seed: 5
n_sub_min: 3
n_sub_max: 8
train_per_n: $PER_N
test_per_n: 10
description: "device check: 12,000 halos to time an epoch of the seed's networks"
YAML
cs compose tiny-run/store.zarr --spec /tmp/gpu_epoch.yaml --catalog '' 2>&1 | tail -2
python3 bench/bench_seed_epoch.py --store tiny-run/store.zarr --set gpu_epoch:v1 \
    --out "$OUT" --device "$DEVICE" --epochs 3
python3 bench/bench_seed_epoch.py --store tiny-run/store.zarr --set gpu_epoch:v1 \
    --out "$OUT" --device cpu --threads "$(nproc)" --epochs 1
