#!/usr/bin/env bash
# The test cluster's links in /etc/slurm (or $3), and putting it back as it was:
#   etc.sh link STATE [ETC]      keep the machine's own slurm.conf / gres.conf aside in STATE, link ETC's to STATE's
#   etc.sh restore STATE [ETC]   remove those links and put the kept files back
# Slurm's job step drops SLURM_CONF, so the config must sit at the default path while the cluster
# runs; a link left to a stopped controller makes every later `snakemake` wait about 9 s in the
# slurm plugin's probes. tests/test_launch.py checks that restore leaves ETC as `link` found it.
set -uo pipefail
STATE=$2
ETC=${3:-/etc/slurm}
case $1 in
  link)
    mkdir -p "$STATE/etc-slurm-kept" "$ETC"
    for f in slurm.conf gres.conf; do
      if [ -e "$ETC/$f" ] && [ ! -L "$ETC/$f" ] && [ ! -e "$STATE/etc-slurm-kept/$f" ]; then
        mv "$ETC/$f" "$STATE/etc-slurm-kept/$f"
      fi
      ln -sfn "$STATE/$f" "$ETC/$f"
    done ;;
  restore)
    for f in slurm.conf gres.conf; do
      [ "$(readlink "$ETC/$f" 2>/dev/null)" = "$STATE/$f" ] && rm -f "$ETC/$f"
      [ -e "$STATE/etc-slurm-kept/$f" ] && mv "$STATE/etc-slurm-kept/$f" "$ETC/$f"
    done ;;
  *) echo "usage: etc.sh link|restore STATE [ETC]" >&2; exit 2 ;;
esac
exit 0
