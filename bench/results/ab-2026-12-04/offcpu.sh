#!/bin/bash
out=$1; mkdir -p $out; cd /work/main
BENCH_NO_BUILD=1 bench/run.sh --only output --no-same-cipher --runs 3 --no-off > $out/bench.log 2>&1 &
bp=$!
p2=""
for i in $(seq 1 300); do
  p2=$(pgrep -f "postern serve --config .*postern-disk" | head -1); [ -n "$p2" ] && break; sleep 0.2
done
perf record -e sched:sched_switch -g -p $p2 -o $out/sw.data > $out/perf.log 2>&1 &
r=$!
wait $bp; kill -INT $r; wait $r 2>/dev/null
