#!/usr/bin/env bash
# Where a proxied request's latency goes, phase by phase, under the peers.sh load
# (maitred pinned to CPU 0 with one worker; wrk and three nginx backends on CPU 1;
# round-robin; small bodies; keep-alive).
#
# Builds a scratch copy of HEAD with benches/e2e/phases.patch applied (per-phase
# histograms, never part of the product: the hooks sit on the hot path) and, for each
# connection count, runs wrk for DURATION seconds and prints the median over those
# seconds of each phase's per-second percentiles, in microseconds:
#
#   sched    a connection task's wake-up (socket ready) to its poll: run-queue wait
#   poll     one poll of a connection task: how long it holds the thread
#   handle   proxy::handle, first poll to its answer (includes backend)
#   backend  request head written to the backend → its response head read
#   longcpu  the thread's CPU time during a poll over 200 µs of wall time (far less
#            than its wall time: the thread was off its core)
#
# The patch touches the request path in five places; when it no longer applies, re-make
# it on a branch (git diff main > benches/e2e/phases.patch).
#
# Usage (repository root): bash benches/e2e/phases.sh [CONNS ...]   (default 64 256)
# Needs nginx, wrk, taskset, curl and python3. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -gt 0 ]; then conns=("$@"); else conns=(64 256); fi
duration=${DURATION:-8}
bench=../shared/bench
for tool in nginx wrk taskset curl python3 git; do
  command -v "$tool" >/dev/null || { echo "phases.sh needs $tool" >&2; exit 1; }
done

run=$(mktemp -d /tmp/maitred-phases.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git worktree remove --force "$run/src" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

git worktree add -q --detach "$run/src" HEAD
git -C "$run/src" apply "$PWD/benches/e2e/phases.patch"
CARGO_TARGET_DIR="$PWD/target/phases" cargo build --release --manifest-path "$run/src/Cargo.toml"
bin="$run/maitred"
cp target/phases/release/maitred "$bin"

mkdir -p "$run/logs" "$run/tmp" "$run/www"
head -c 16384 /dev/zero >"$run/www/16k.bin"
head -c 1048576 /dev/zero >"$run/www/1m.bin"
sed "s|@RUN@|$run|g" "$bench/configs/backends-nginx.conf" >"$run/backends.conf"
taskset -c 1 nginx -p "$run" -c "$run/backends.conf" -e "$run/logs/backends.startup.log" &
pids+=($!)

for c in "${conns[@]}"; do
  log="$run/phases-c$c.log"
  MAITRED_PHASES="$log" taskset -c 0 "$bin" run -c "$bench/configs/maitred.toml" \
    >"$run/logs/maitred-c$c.log" 2>&1 &
  m=$!
  pids+=("$m")
  for _ in $(seq 100); do
    curl -sf -o /dev/null http://127.0.0.1:18080/ && break
    sleep 0.1
  done
  taskset -c 1 wrk -t1 -c"$c" -d2s http://127.0.0.1:18080/ >/dev/null
  sleep 1.2                               # the warm-up's last second is written out
  echo "== $c connections: wrk, $duration s =="
  start=$(date +%s)                       # lines stamped after this are the measurement
  taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" --latency http://127.0.0.1:18080/ |
    grep -E "Requests/sec|^ +(50|99)%"
  sleep 1.2
  kill "$m"
  wait "$m" 2>/dev/null || true
  python3 - "$log" "$start" <<'EOF'
import re, statistics, sys
path, start = sys.argv[1], int(sys.argv[2])
phases = {}
for line in open(path):
    f = re.sub(r"n=\s+", "n=", line).split()
    if len(f) != 8 or int(f[0]) <= start:
        continue
    phases.setdefault(f[1], []).append([float(x) for x in f[3:]] + [int(f[2][2:])])
print(f"{'phase':8} {'per s':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9}   (µs; medians of per-second values, max of maxima)")
for name, secs in phases.items():
    med = [statistics.median(s[i] for s in secs) for i in range(4)]
    top = max(s[4] for s in secs)
    n = statistics.median(s[5] for s in secs)
    print(f"{name:8} {n:9.0f} " + " ".join(f"{v:8.1f}" for v in med) + f" {top:9.1f}")
EOF
done
