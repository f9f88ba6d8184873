#!/bin/bash
# usage: exp_step.sh cls|theta NAME SET "OPTIONS" OTHER_RUN [EXTS]: train one step (the N_sub
# classifier or theta) and evaluate it with the other step of the run OTHER_RUN, on each suite
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CS=/work/main/.venv/bin/casbi-store
cd "${EXP:-/work/exp}"
STEP=$1; NAME=$2; SET=$3; OPTS=$4; OTHER=$5; EXTS=${6:-"1001 3003"}
case $STEP in
  cls) TASK=nsub_classifier; EPOCHS=20; MODELS="runs/$NAME/cls runs/$OTHER/theta" ;;
  theta) TASK=theta; EPOCHS=10; MODELS="runs/$OTHER/cls runs/$NAME/theta" ;;
  *) echo "exp_step.sh: the step is cls or theta, not '$STEP'" >&2; exit 2 ;;
esac
OUT=runs/$NAME
mkdir -p "$OUT"
start=$(date +%s)
[ -f "$OUT/$STEP/ensemble.json" ] || $CS train demo/store.zarr --set "$SET" --task $TASK \
  --out "$OUT/$STEP" --epochs $EPOCHS --patience 3 --batch-size 128 --learning-rate 1e-3 \
  --in-memory $OPTS > "$OUT/train_$STEP.log" 2>&1
t1=$(date +%s)
for e in $EXTS; do
  [ -f "$OUT/eval_$e/metrics.json" ] || $CS evaluate $MODELS --out "$OUT/eval_$e" --split test \
    --halos 200 --samples 200 --against "ext$e/store.zarr:ext:v1" > "$OUT/eval_$e.log" 2>&1
done
echo "$NAME $STEP $((t1 - start)) s eval $(($(date +%s) - t1)) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> runs/timings.txt
