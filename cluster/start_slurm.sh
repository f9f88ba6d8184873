#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests and `make slurm-check`: munged, slurmctld and
# slurmd with a generated slurm.conf in DIR (state, logs, pid files, munge key and socket all in
# DIR; nothing under /etc is touched). Run as root (SlurmUser=root; jobs run as the submitter).
#
#   cluster/start_slurm.sh DIR      # prints `export SLURM_CONF=DIR/slurm.conf` once the node is idle
#   cluster/stop_slurm.sh DIR       # stops the three daemons
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). Partition `debug` (the
# default); one node named after this host, with this machine's CPUs and memory; no cgroups.
set -euo pipefail
dir=${1:?usage: start_slurm.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for cmd in munged slurmctld slurmd sinfo; do
  command -v "$cmd" >/dev/null || { echo "start_slurm.sh: $cmd not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "start_slurm.sh: run as root (the daemons run as SlurmUser=root)" >&2; exit 3; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
chmod 700 "$dir/munge"

# munge: a fresh key and a private socket
[ -s "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
       --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
       --seed-file="$dir/munge/munged.seed"

cat > "$dir/cgroup.conf" <<CONF
CgroupAutomount=no
CONF
# accounts, as a site's job_submit plugin (or slurmdbd's associations) would check them: the
# test cluster knows one, `casbi`; a job without an account is fine
cat > "$dir/job_submit.lua" <<'LUA'
local known = { casbi = true }
function slurm_job_submit(job_desc, part_list, submit_uid)
  if job_desc.account ~= nil and not known[job_desc.account] then
    slurm.log_user("invalid account '%s' (this cluster knows: casbi)", job_desc.account)
    return slurm.ESLURM_INVALID_ACCOUNT or slurm.ERROR
  end
  return slurm.SUCCESS
end
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end
LUA
cat > "$dir/slurm.conf" <<CONF
ClusterName=casbi-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobSubmitPlugins=lua
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
SwitchType=switch/none
LaunchParameters=enable_nss_slurm
InactiveLimit=0
KillWait=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -i -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 150); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case "$state" in idle|mixed|allocated) echo "export SLURM_CONF=$SLURM_CONF"; exit 0;; esac
  sleep 0.2
done
echo "start_slurm.sh: the node did not come up (state: '${state:-none}'); logs in $dir/log" >&2
tail -n 5 "$dir"/log/*.log >&2 || true
exit 1
