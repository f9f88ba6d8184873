#!/bin/bash
# usage: expt.sh NAME SET "THETA OPTS" CLS_RUN [EXTS]: train step 2 (theta) only, evaluate with another run's classifier
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CS=/work/main/.venv/bin/casbi-store
cd "${EXP:-/work/exp}"
NAME=$1; SET=$2; TOPTS=$3; CR=$4; EXTS=${5:-"1001 3003"}
OUT=runs/$NAME
mkdir -p $OUT
start=$(date +%s)
[ -f $OUT/theta/ensemble.json ] || $CS train demo/store.zarr --set $SET --task theta --out $OUT/theta --epochs 10 --patience 3 --batch-size 128 --learning-rate 1e-3 --in-memory $TOPTS > $OUT/train_theta.log 2>&1
t1=$(date +%s)
for e in $EXTS; do
  [ -f $OUT/eval_$e/metrics.json ] || $CS evaluate runs/$CR/cls $OUT/theta --out $OUT/eval_$e --split test --halos 200 --samples 200 --against ext$e/store.zarr:ext:v1 > $OUT/eval_$e.log 2>&1
done
t3=$(date +%s)
echo "$NAME theta $((t1-start)) s eval $((t3-t1)) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> runs/timings.txt
