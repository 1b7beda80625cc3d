#!/bin/bash
# alternate run by run: one bench output run without busy loops, one with two nice-19 busy loops
cd /work/main
out=/tmp/w/burnalt; mkdir -p $out
for i in 1 2 3 4 5; do
  for mode in none busy; do
    pids=""
    if [ $mode = busy ]; then for j in 1 2; do nice -n 19 sh -c 'while :; do :; done' & pids="$pids $!"; done; sleep 0.5; fi
    BENCH_NO_BUILD=1 BENCH_POSTERN=/tmp/w/postern-e5f7762 BENCH_POSTERN_OFF=/tmp/w/postern-off-e5f7762 timeout 300 bench/run.sh --only output --no-same-cipher --runs 1 --retries 0 > $out/$i-$mode.log 2>&1
    [ -n "$pids" ] && kill $pids
    wait 2>/dev/null
  done
done
