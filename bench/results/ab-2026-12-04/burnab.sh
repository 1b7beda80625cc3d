#!/bin/bash
# alternate: bench without busy loops, with two nice-19 busy loops, without
cd /work/main
run() { BENCH_NO_BUILD=1 BENCH_POSTERN=/tmp/w/postern-e5f7762 BENCH_POSTERN_OFF=/tmp/w/postern-off-e5f7762 timeout 600 bench/run.sh --only output --no-same-cipher --runs 3 > $1 2>&1; }
run /tmp/w/burnab-1-none.log
for i in 1 2; do nice -n 19 sh -c 'while :; do :; done' & done
sleep 1; run /tmp/w/burnab-2-busy.log
kill %1 %2; wait 2>/dev/null
run /tmp/w/burnab-3-none.log
