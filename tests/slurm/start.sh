#!/usr/bin/env bash
# Start a real Slurm cluster on this machine for the tests: munge, slurmctld and two slurmd
# "nodes" (n1, n2) with two fake GPUs each. Job states come from squeue (no slurmdbd):
# finished jobs stay visible for MinJobAge seconds, which is what the plugin's
# `slurm-status-command: squeue` reads. Memory limits are enforced without cgroups:
# jobacct_gather/linux polls every second and OverMemoryKill kills a step over its --mem.
# Running it again restarts the cluster.
#
#   sudo tests/slurm/start.sh     # installs the Debian packages if missing (needs root)
#   tests/slurm/stop.sh           # stops every daemon by its PID
#
# State (configs, spool, logs, pid files) lives in $PEFTLAB_SLURM (default /tmp/peftlab-slurm).
set -euo pipefail
STATE=${PEFTLAB_SLURM:-/tmp/peftlab-slurm}
CPUS=${PEFTLAB_SLURM_CPUS:-2}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d   # keep apt from starting the distro daemons
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge; }
  install || { apt-get update -q && install; }   # a fresh image may have no package lists yet
fi

bash "$(dirname "$0")/stop.sh"
mkdir -p "$STATE"/{spool/ctld,spool/n1,spool/n2,log,gpu,hosts,run} /run/munge /etc/slurm
# munge on its default socket (slurm finds it there)
if [ ! -f "$STATE/munge.key" ]; then
  dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none
  chmod 400 "$STATE/munge.key"
fi
munged --force --key-file="$STATE/munge.key" --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log"

ln -sf /dev/null "$STATE/gpu/gpu0"
ln -sf /dev/null "$STATE/gpu/gpu1"
cat > "$STATE/slurm.conf" <<CONF
ClusterName=peftlab
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=300
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
NodeName=n[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$CPUS RealMemory=8000 Gres=gpu:fake:2 State=UNKNOWN
PartitionName=cpu Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=n[1-2] Default=NO MaxTime=INFINITE State=UP
CONF
cat > "$STATE/gres.conf" <<CONF
Name=gpu Type=fake File=$STATE/gpu/gpu[0-1]
CONF
# the plugin's job step drops SLURM_CONF: the config must be at the default path. A file of the
# machine's own is kept aside, and stop.sh puts it back (and removes these links: a link to a
# stopped controller makes every later `snakemake` start wait about 9 s in the plugin's probes).
bash "$(dirname "$0")/etc.sh" link "$STATE"

slurmctld
for n in n1 n2; do
  printf '127.0.0.1 localhost n1 n2\n' > "$STATE/hosts/$n"
  # each node gets its own hostname (a UTS namespace) and an /etc/hosts that knows both
  unshare --uts --mount sh -c "hostname $n && mount --bind $STATE/hosts/$n /etc/hosts && exec slurmd -N $n"
done

for _ in $(seq 60); do
  if [ "$(sinfo -h -N -p cpu -o '%T' | grep -c idle)" = 2 ]; then
    sinfo -N -o '%N %P %T %G'
    exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up; logs in $STATE/log" >&2
sinfo -N >&2 || true
exit 1
