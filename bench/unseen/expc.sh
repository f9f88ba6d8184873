#!/bin/bash
# usage: expc.sh NAME SET "CLASSIFIER OPTS" THETA_RUN [EXTS]: train step 1 only, evaluate with another run's theta
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CS=/work/main/.venv/bin/casbi-store
cd /work/exp
NAME=$1; SET=$2; COPTS=$3; TR=$4; EXTS=${5:-"1001 3003"}
OUT=runs/$NAME
mkdir -p $OUT
start=$(date +%s)
[ -f $OUT/cls/ensemble.json ] || $CS train demo/store.zarr --set $SET --task nsub_classifier --out $OUT/cls --epochs 20 --patience 3 --batch-size 128 --learning-rate 1e-3 --in-memory $COPTS > $OUT/train_cls.log 2>&1
t1=$(date +%s)
for e in $EXTS; do
  [ -f $OUT/eval_$e/metrics.json ] || $CS evaluate $OUT/cls runs/$TR/theta --out $OUT/eval_$e --split test --halos 200 --samples 200 --against ext$e/store.zarr:ext:v1 > $OUT/eval_$e.log 2>&1
done
t3=$(date +%s)
echo "$NAME cls $((t1-start)) s eval $((t3-t1)) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> runs/timings.txt
