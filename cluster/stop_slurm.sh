#!/usr/bin/env bash
# Stops the one-node SLURM that cluster/start_slurm.sh DIR started (its jobs first).
set -uo pipefail
dir=${1:?usage: stop_slurm.sh DIR}
export SLURM_CONF=$dir/slurm.conf
[ -f "$SLURM_CONF" ] && scancel --quiet --user "$(id -un)" 2>/dev/null
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0
