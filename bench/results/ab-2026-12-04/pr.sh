#!/bin/bash
cd /work/main
BENCH_NO_BUILD=1 BENCH_POSTERN=$1 BENCH_POSTERN_OFF=/tmp/w/postern-off-e5f7762 timeout 600 bench/run.sh --only output --no-same-cipher --runs ${2:-5} --keep > /tmp/w/profrun.log 2>&1; d=$(grep -o "working in [^ ]*" /tmp/w/profrun.log | awk '{print $3}'); grep -h "PROF\|slowed" $d/postern-disk/postern.log | sed -e 's/.*it waited/waited/' -e 's/ in all.*//' | cut -c1-200; grep -E "B[23] run" /tmp/w/profrun.log | cut -c1-80; rm -rf $d
