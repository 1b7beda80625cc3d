#!/usr/bin/env bash
# The least CPU a recording of bulk output can cost on this machine, per
# 256 MiB, step by step, each step alone (session 15):
#   - BLAKE3 over the bytes, one thread (b3sum's user time; the file is in
#     the page cache and mapped, as postern hashes a buffer in memory);
#   - writing them through the page cache to a new file on the recordings'
#     ext4 (dd's system time, 1 MiB writes, from /dev/zero).
# The escaper's figures come from `cargo bench --bench recording_cost` and
# ../ab-2026-12-04/esc-vbmi2.rs.   Usage: floor.sh [DIR] [ROUNDS]
set -euo pipefail
dir=${1:-/tmp}; rounds=${2:-5}
f=$dir/floor-bulk.txt; out=$dir/floor-out.bin
{ yes "some log line with words 1234567890" || true; } | head -c $((256 << 20)) > "$f"
cat "$f" > /dev/null
for i in $(seq "$rounds"); do
  /usr/bin/time -f "round $i: b3sum --num-threads 1: %U s user, %S s sys" b3sum --num-threads 1 "$f" > /dev/null
done
for i in $(seq "$rounds"); do
  rm -f "$out"; sync
  /usr/bin/time -f "round $i: dd 256 x 1 MiB to ext4: %S s sys, %U s user" dd if=/dev/zero of="$out" bs=1M count=256 status=none
done
rm -f "$f" "$out"
