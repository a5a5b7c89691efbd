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
# Needs nginx, wrk, taskset, curl, python3 and git. Everything it starts is stopped on
# exit; all traffic stays on 127.0.0.1.
#
#   bash benches/e2e/phases.sh [--conns 64,256] [--duration S]
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=/dev/null
source benches/e2e/common.sh
DURATION=8
parse_options 24 "$@"
need_tools nginx wrk taskset curl python3 git
make_run_dir maitred-phases
on_cleanup() { git worktree remove --force "$RUN/src" 2>/dev/null || true; }

git worktree add -q --detach "$RUN/src" HEAD
git -C "$RUN/src" apply "$PWD/benches/e2e/phases.patch"
CARGO_TARGET_DIR="$PWD/target/phases" cargo build --release --manifest-path "$RUN/src/Cargo.toml"
cp target/phases/release/maitred "$RUN/maitred"
prepare_run_dir
start_backends

IFS=, read -r -a conns_list <<<"$CONNS"
for c in "${conns_list[@]}"; do
  [[ $c =~ ^[1-9][0-9]{0,3}$ ]] || die "--conns takes numbers from 1 to 9999"
  hist="$RUN/phases-c$c.log"
  MAITRED_PHASES="$hist" "${PIN_PROXY[@]}" "$RUN/maitred" run -c "$BENCH/configs/maitred.toml" \
    >"$RUN/logs/maitred-c$c.log" 2>&1 &
  PROXY_PID=$!
  wait_http "http://127.0.0.1:$LISTEN_PORT/" "$PROXY_PID" 20 || die "maitred did not answer on :$LISTEN_PORT"
  "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d2s "http://127.0.0.1:$LISTEN_PORT/" >/dev/null
  sleep 1.2                               # the warm-up's last second is written out
  echo "== $c connections: wrk, $DURATION s =="
  start=$(date +%s)                       # lines stamped after this are the measurement
  "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$LISTEN_PORT/" |
    grep -E "Requests/sec|^ +(50|99)%"
  sleep 1.2
  stop_tree "$PROXY_PID"; PROXY_PID=""
  python3 - "$hist" "$start" <<'EOF'
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
