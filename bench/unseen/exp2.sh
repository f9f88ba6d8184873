#!/bin/bash
# usage: exp2.sh NAME SET TASK1 "STEP1 OPTS" THETA_DIR  -> step 1 trained here, step 2 reused
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CS=/work/main/.venv/bin/casbi-store
cd /work/exp
NAME=$1; SET=$2; TASK=$3; OPTS=$4; THETA=$5
OUT=runs/$NAME; mkdir -p $OUT
start=$(date +%s)
[ -f $OUT/step1/ensemble.json ] || $CS train demo/store.zarr --set $SET --task $TASK --out $OUT/step1 --epochs 20 --patience 3 --batch-size 128 --learning-rate 1e-3 --in-memory $OPTS > $OUT/train_step1.log 2>&1
t1=$(date +%s)
$CS evaluate $OUT/step1 $THETA --out $OUT/eval_sel --split test --halos 200 --samples 200 --against ext1001/store.zarr:ext:v1 > $OUT/eval.log 2>&1
echo "$NAME step1 $((t1-start)) s eval $(( $(date +%s)-t1 )) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> runs/timings.txt
