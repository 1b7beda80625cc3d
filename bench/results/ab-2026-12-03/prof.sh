#!/bin/bash
# usage: prof.sh OUTDIR ; profiles B2 and B3 postern processes during a 5-run output bench
out=$1; mkdir -p $out
cd /work/main
BENCH_NO_BUILD=1 bench/run.sh --only output --no-same-cipher --runs 5 --json $out/bench.json > $out/bench.log 2>&1 &
bp=$!
p2=""; p3=""
for i in $(seq 1 300); do
  [ -z "$p2" ] && p2=$(pgrep -f "postern serve --config .*postern-disk" | head -1)
  [ -z "$p3" ] && p3=$(pgrep -f "postern-unrecorded serve" | head -1)
  [ -n "$p2" ] && [ -n "$p3" ] && break
  sleep 0.2
done
echo "p2=$p2 p3=$p3" > $out/pids
perf record -F 2000 -e cpu-clock -p $p2 -o $out/b2.data >$out/perf2.log 2>&1 &
r2=$!
perf record -F 2000 -e cpu-clock -p $p3 -o $out/b3.data >$out/perf3.log 2>&1 &
r3=$!
wait $bp
kill -INT $r2 $r3; wait $r2 $r3 2>/dev/null
for b in b2 b3; do
  perf report -i $out/$b.data --no-children --sort comm -F sample,comm 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 > $out/$b-comm.txt
  perf report -i $out/$b.data --no-children --sort comm,sym -F sample,comm,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 > $out/$b-sym.txt
done
