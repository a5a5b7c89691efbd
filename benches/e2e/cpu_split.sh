#!/usr/bin/env bash
# Where a proxy's CPU goes: user space against the kernel, per request, for nginx and
# maitred side by side under the same load as ../shared/bench/peers.sh (one core for the
# proxy, wrk and the three loopback nginx backends on the other, 14-byte bodies).
#
# peers.sh reports CPU per request as one number; this splits it (utime and stime of
# the proxy's processes from /proc) and counts the proxy's system calls with
# `perf stat` where perf is installed. On loopback the kernel's TCP work is most of a
# proxy's CPU, and it is the same work for every proxy that makes the same four
# socket calls per request: the split shows how much of the total a faster user
# space can still move.
#
#   bash benches/e2e/cpu_split.sh [--rounds N] [--conns 64,256] [--duration S] [BINARY]
#
# BINARY defaults to target/release/maitred (built first). Run from the repository
# root, as root or with nginx and wrk installed. Everything started is stopped on exit;
# all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=/dev/null
source benches/e2e/common.sh
parse_options 17 "$@"
need_tools nginx wrk taskset curl
take_binary
make_run_dir cpu-split
sed "s|{BENCH}|$BENCH|g" "$BENCH/configs/maitred.toml" >"$RUN/maitred.toml"
prepare_run_dir
start_backends

ticks() {             # "utime stime" summed over PIDs and their threads
  local files; files=$(existing $(pid_tree "$1"))
  # shellcheck disable=SC2086
  cat ${files// /\/stat } 2>/dev/null | awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }'
}

start_proxy() {       # NAME -> PROXY_PID
  case $1 in
    nginx) "${PIN_PROXY[@]}" nginx -p "$RUN" -c "$RUN/nginx-lb.conf" -e "$RUN/logs/lb.log" >"$RUN/logs/nginx.out" 2>&1 & ;;
    maitred) "${PIN_PROXY[@]}" "$RUN/maitred" run -c "$RUN/maitred.toml" >"$RUN/logs/maitred.out" 2>&1 & ;;
  esac
  PROXY_PID=$!
  wait_http "http://127.0.0.1:$LISTEN_PORT/" "$PROXY_PID" 20 || die "$1 did not answer on :$LISTEN_PORT"
}

CLK=$(getconf CLK_TCK)
RESULTS="$RUN/results.tsv"
: >"$RESULTS"
IFS=, read -r -a conns_list <<<"$CONNS"
for round in $(seq 1 "$ROUNDS"); do
  for c in "${conns_list[@]}"; do
    [[ $c =~ ^[1-9][0-9]{0,3}$ ]] || die "--conns takes numbers from 1 to 9999"
    # Odd rounds nginx first, even rounds maitred first, so a drift of the machine's
    # speed during a round does not favour either.
    order="nginx maitred"; [ $((round % 2)) = 0 ] && order="maitred nginx"
    for target in $order; do
      start_proxy "$target"
      "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d1s "http://127.0.0.1:$LISTEN_PORT/" >/dev/null
      pids=$(pid_tree "$PROXY_PID"); pids=${pids% }
      perf_out="$RUN/perf.txt"; : >"$perf_out"
      perf_pid=""
      if command -v perf >/dev/null; then
        perf stat -x, -e raw_syscalls:sys_enter -p "${pids// /,}" -o "$perf_out" -- sleep $((DURATION + 1)) 2>/dev/null &
        perf_pid=$!
      fi
      read -r u1 s1 < <(ticks "$PROXY_PID")
      "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$LISTEN_PORT/" >"$RUN/wrk.txt"
      read -r u2 s2 < <(ticks "$PROXY_PID")
      [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null
      requests=$(awk '/requests in/ { print $1 }' "$RUN/wrk.txt")
      p99=$(awk '$1 == "99%" { print $2 }' "$RUN/wrk.txt")
      syscalls=$(awk -F, '/sys_enter/ { print $1 }' "$perf_out")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$target" "$requests" \
        $((u2 - u1)) $((s2 - s1)) "${syscalls:-}" "$p99" >>"$RESULTS"
      log "round $round, $c connections, $target: $requests requests"
      stop_tree "$PROXY_PID"; PROXY_PID=""
    done
  done
done

python3 - "$RESULTS" "$CLK" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
clk = float(sys.argv[2])
by = {}
for rnd, conns, target, req, u, s, sc, p99 in rows:
    req = int(req)
    d = by.setdefault((int(conns), target), {"user": [], "kernel": [], "sc": [], "share": []})
    user, kernel = int(u) / clk * 1e6 / req, int(s) / clk * 1e6 / req
    d["user"].append(user); d["kernel"].append(kernel)
    d["share"].append(kernel / (user + kernel))
    if sc:
        d["sc"].append(int(sc) / req)
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("| conns | proxy | user CPU-µs/req | kernel CPU-µs/req | kernel share | syscalls/req |")
print("|---:|---|---:|---:|---:|---:|")
for (conns, target), d in sorted(by.items()):
    print(f"| {conns} | {target} | {med(d['user']):.2f} | {med(d['kernel']):.2f} | "
          f"{med(d['share']) * 100:.0f} % | {med(d['sc']):.2f} |")
print()
for conns in sorted({c for c, _ in by}):
    n, m = by.get((conns, "nginx")), by.get((conns, "maitred"))
    if not n or not m:
        continue
    # Per round, so both sides of a ratio saw the same machine speed.
    ratio = lambda k: med([a / b for a, b in zip(m[k], n[k])])
    total = med([(mu + mk) / (nu + nk) for mu, mk, nu, nk in zip(m["user"], m["kernel"], n["user"], n["kernel"])])
    print(f"{conns} connections, maitred / nginx (median of per-round ratios): user {ratio('user'):.2f}, "
          f"kernel {ratio('kernel'):.2f}, total {total:.2f}")
PY
