#!/usr/bin/env bash
# postern benchmark: B0 direct ssh, B1 OpenSSH jump host (ssh -J), B2 postern
# recording to disk, B3 postern built with recording off; bulk output, bulk
# input, port-forward, gate, connection setup, keystroke echo, idle-session
# memory, slow consumer. Loopback only.
#
#   bench/run.sh                                   # build, run, print the table
#   bench/run.sh --markdown bench/results/latest.md --json bench/results/latest.json
#   BENCH_NO_BUILD=1 bench/run.sh --only output    # reuse target/release/postern
#   bench/run.sh --help                            # all options
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

for tool in ssh ssh-keygen python3; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool" >&2; exit 1; }
done
[ -x "$(command -v sshd || echo /usr/sbin/sshd)" ] || { echo "bench: needs sshd (apt-get install openssh-server)" >&2; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release --manifest-path "$root/Cargo.toml" >&2
  # B3: the same code without recording (a separate binary; a normal build
  # cannot turn recording off).
  cargo build --release --manifest-path "$root/Cargo.toml" \
    --features bench-recording-off --target-dir "$root/target/bench-off" >&2
fi

pid=
cleanup() {
  # run.py cleans up after itself on TERM; make sure it gets one.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Hard cap on the whole run (run.py also keeps its own budget).
timeout --signal=TERM --kill-after=20 "${BENCH_TIMEOUT:-1800}" \
  python3 -u "$root/bench/run.py" "$@" &
pid=$!
wait "$pid"
