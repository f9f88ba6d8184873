#!/bin/bash
# usage: probe.sh NAME TASK SET "OPTS"  -> best validation loss on unseen simulations
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CS=/work/main/.venv/bin/casbi-store
cd /work/exp
NAME=$1; TASK=$2; SET=$3; OPTS=$4
mkdir -p probes
[ -f probes/$NAME/ensemble.json ] || $CS train demo/store.zarr --set $SET --task $TASK --out probes/$NAME --epochs 6 --patience 2 --batch-size 128 --learning-rate 1e-3 --in-memory $OPTS > probes/$NAME.log 2>&1
echo "$NAME $(grep 'best validation' probes/$NAME.log | sed 's/.*best validation loss \([-0-9.]*\).*/\1/') epochs $(grep -c 'epoch' probes/$NAME.log)" >> probes/results.txt
