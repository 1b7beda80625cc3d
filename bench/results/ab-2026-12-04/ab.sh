#!/bin/bash
# usage: ab.sh NAME CAND BASE RUNS
cd /work/main
n=$1; c=$2; b=$3; r=${4:-9}
BENCH_NO_BUILD=1 BENCH_POSTERN=$c BENCH_POSTERN_OFF=$b timeout 1200 bench/run.sh --only output,gate --no-same-cipher --runs $r --keep --json /tmp/w/$n.json > /tmp/w/$n.log 2>&1
d=$(grep -o "working in [^ ]*" /tmp/w/$n.log | awk '{print $3}')
for s in postern-disk postern-off; do
  echo "$s waits(ms): $(grep -h 'slowed the session' $d/$s/postern.log 2>/dev/null | grep -o 'waited [0-9]* ms' | awk '{printf "%s ", $2}')"
done
rm -rf "$d"
python3 /tmp/w/summ.py /tmp/w/$n.log; python3 /tmp/w/cpu.py /tmp/w/$n.log
