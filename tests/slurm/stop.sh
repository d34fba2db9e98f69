#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start.sh: every daemon by the PID it wrote.
set -uo pipefail
STATE=${PEFTLAB_SLURM:-/tmp/peftlab-slurm}
for pidfile in "$STATE"/run/slurmd-n1.pid "$STATE"/run/slurmd-n2.pid "$STATE"/run/slurmctld.pid "$STATE"/run/munged.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$pidfile"
done
# leave /etc/slurm as start.sh found it
bash "$(dirname "$0")/etc.sh" restore "$STATE"
exit 0
