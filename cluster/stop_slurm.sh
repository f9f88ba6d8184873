#!/usr/bin/env bash
# Stops the one-node SLURM that cluster/start_slurm.sh DIR started (its jobs first).
set -uo pipefail
dir=${1:?usage: stop_slurm.sh DIR}
export SLURM_CONF=$dir/slurm.conf
[ -f "$SLURM_CONF" ] && scancel --quiet --user "$(id -un)" 2>/dev/null
pids=()
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
  [ -s "$pidfile" ] && pid=$(cat "$pidfile") && kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 1 50); do  # all at once: up to 5 s, then SIGKILL
  alive=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  [ ${#alive[@]} -eq 0 ] && exit 0
  sleep 0.1
done
kill -9 "${alive[@]}" 2>/dev/null
exit 0
