#!/usr/bin/env bash
# HTTP/2 to backends against HTTP/1.1 to backends (DESIGN §12), and gRPC through maitred
# against gRPC direct.
#
# 1. The same wrk load (HTTP/1.1 clients, 14-byte bodies, 64 and 256 connections) through
#    maitred with `protocol = "http1"` to three nginx backends, then with `protocol =
#    "h2c"` to the same nginx serving HTTP/2 (prior knowledge) on three more ports. Per
#    request: maitred's CPU (utime + stime from /proc), and the backend connections it
#    holds (established TCP connections to the backend ports, the most seen in a
#    once-a-second sample during the measurement).
# 2. gRPC unary calls (grpc.health.v1.Health/Check against examples/grpc_backend, a tonic
#    server) driven by h2load, 64 connections x 10 streams: calls per second direct and
#    through maitred (`protocol = "h2c"`), and maitred's CPU per call.
#
# The layout is ../shared/bench/peers.sh's: maitred on CPU 0, the load generator and the
# backends on CPU 1, rounds alternating the order. Run from the repository root with
# nginx, wrk, h2load (nghttp2-client), curl and taskset installed (peers.sh installs
# them). Everything started is stopped on exit; all traffic stays on 127.0.0.1.
#
#   bash benches/e2e/upstream_protocols.sh [--rounds N] [--conns 64,256] [--duration S] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=/dev/null
source benches/e2e/common.sh
H1_PORTS=(19001 19002 19003)
H2C_PORTS=(19011 19012 19013)
GRPC_PORT=19021
parse_options 21 "$@"
need_tools nginx wrk h2load taskset curl ss
cargo build --release --example grpc_backend
take_binary
for p in "$LISTEN_PORT" "${H1_PORTS[@]}" "${H2C_PORTS[@]}" "$GRPC_PORT"; do
  port_busy "$p" && die "port $p on loopback is already in use; stop whatever holds it first"
done
make_run_dir upstream-protocols
cp target/release/examples/grpc_backend "$RUN/grpc_backend"    # a copy, as of maitred

# One nginx, one worker: HTTP/1.1 on the first three ports, h2c on the next three.
servers=""
for p in "${H1_PORTS[@]}"; do
  servers+="    server { listen 127.0.0.1:$p backlog=4096; location = / { return 200 \"backend $p\\n\"; } }"$'\n'
done
for p in "${H2C_PORTS[@]}"; do
  servers+="    server { listen 127.0.0.1:$p http2 backlog=4096; location = / { return 200 \"backend $p\\n\"; } }"$'\n'
done
cat >"$RUN/backends.conf" <<EOF
daemon off;
worker_processes 1;
pid $RUN/backends.pid;
error_log $RUN/logs/backends.error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    default_type text/plain;
    client_body_temp_path $RUN/tmp/body;
    proxy_temp_path $RUN/tmp/proxy;
    fastcgi_temp_path $RUN/tmp/fastcgi;
    uwsgi_temp_path $RUN/tmp/uwsgi;
    scgi_temp_path $RUN/tmp/scgi;
$servers}
EOF
"${PIN_LOADGEN[@]}" nginx -p "$RUN" -c "$RUN/backends.conf" -e "$RUN/logs/backends.startup.log" >"$RUN/logs/backends.out" 2>&1 &
STARTED+=("$!")
for p in "${H1_PORTS[@]}"; do
  wait_http "http://127.0.0.1:$p/" "${STARTED[0]}" 10 || die "backend :$p did not come up"
done
for p in "${H2C_PORTS[@]}"; do
  curl -sf --http2-prior-knowledge --max-time 5 "http://127.0.0.1:$p/" >/dev/null || die "h2c backend :$p did not answer"
done
"${PIN_LOADGEN[@]}" "$RUN/grpc_backend" "127.0.0.1:$GRPC_PORT" >"$RUN/logs/grpc.out" 2>&1 &
STARTED+=("$!")
printf '\0\0\0\0\0' >"$RUN/check.bin"   # a gRPC frame holding an empty HealthCheckRequest
grpc_call() { curl -s --http2-prior-knowledge --max-time 5 -X POST --data-binary @"$RUN/check.bin" \
  -H 'content-type: application/grpc' -H 'te: trailers' -D - -o /dev/null "$1" | tr -d '\r' | grep -c '^grpc-status: 0'; }
for _ in $(seq 1 50); do
  [ "$(grpc_call "http://127.0.0.1:$GRPC_PORT/grpc.health.v1.Health/Check" || true)" = 1 ] && break
  sleep 0.1
done

pool_toml() {   # NAME PROTOCOL PORT... -> a maitred config on stdout
  local protocol=$2; shift 2
  local list="" p
  for p in "$@"; do list+="\"127.0.0.1:$p\", "; done
  cat <<EOF
[server]
threads = 1
grace_period = "1s"
log_level = "warn"
access_log = "off"

[[listener]]
name = "bench"
bind = "127.0.0.1:$LISTEN_PORT"
pool = "web"
idle_timeout = "300s"

[pool.web]
balancer = "round-robin"
protocol = "$protocol"
backends = [${list%, }]
EOF
}
pool_toml web http1 "${H1_PORTS[@]}" >"$RUN/http1.toml"
pool_toml web h2c "${H2C_PORTS[@]}" >"$RUN/h2c.toml"
pool_toml web h2c "$GRPC_PORT" >"$RUN/grpc.toml"

ticks() { cpu_ticks $(pid_tree "$1"); }
start_proxy() {       # CONFIG -> PROXY_PID
  "${PIN_PROXY[@]}" "$RUN/maitred" run -c "$RUN/$1.toml" >"$RUN/logs/maitred-$1.out" 2>&1 &
  PROXY_PID=$!
  if [ "$1" = grpc ]; then
    for _ in $(seq 1 100); do
      [ "$(grpc_call "http://127.0.0.1:$LISTEN_PORT/grpc.health.v1.Health/Check" || true)" = 1 ] && return 0
      sleep 0.1
    done
    die "maitred ($1) did not pass a gRPC call"
  fi
  wait_http "http://127.0.0.1:$LISTEN_PORT/" "$PROXY_PID" 20 || die "maitred ($1) did not answer on :$LISTEN_PORT"
}
backend_conns() {     # PORT... -> established connections to those ports
  local filter="" p
  for p in "$@"; do filter+="dport = :$p or "; done
  ss -Htn state established "( ${filter% or } )" 2>/dev/null | wc -l
}
sample_conns() {      # SECONDS PORT... -> the most connections seen, sampled each second
  local secs=$1; shift
  local most=0 n i
  for i in $(seq 1 "$secs"); do
    sleep 1
    n=$(backend_conns "$@")
    [ "$n" -gt "$most" ] && most=$n
  done
  echo "$most"
}

RESULTS="$RUN/results.tsv"
: >"$RESULTS"
IFS=, read -r -a conns_list <<<"$CONNS"
for round in $(seq 1 "$ROUNDS"); do
  for c in "${conns_list[@]}"; do
    [[ $c =~ ^[1-9][0-9]{0,3}$ ]] || die "--conns takes numbers from 1 to 9999"
    order="http1 h2c"; [ $((round % 2)) = 0 ] && order="h2c http1"
    for target in $order; do
      ports=("${H1_PORTS[@]}"); [ "$target" = h2c ] && ports=("${H2C_PORTS[@]}")
      start_proxy "$target"
      "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d1s "http://127.0.0.1:$LISTEN_PORT/" >/dev/null
      read -r t1 < <(ticks "$PROXY_PID")
      sample_conns $((DURATION - 1)) "${ports[@]}" >"$RUN/conns.txt" &
      sampler=$!
      "${PIN_LOADGEN[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$LISTEN_PORT/" >"$RUN/wrk.txt"
      read -r t2 < <(ticks "$PROXY_PID")
      wait "$sampler"
      requests=$(awk '/requests in/ { print $1 }' "$RUN/wrk.txt")
      non2xx=$(awk '/Non-2xx/ { print $NF }' "$RUN/wrk.txt")
      p99=$(awk '$1 == "99%" { print $2 }' "$RUN/wrk.txt")
      printf 'http\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$target" "$requests" $((t2 - t1)) \
        "$(cat "$RUN/conns.txt")" "${p99}/${non2xx:-0}" >>"$RESULTS"
      log "round $round, $c connections, $target: $requests requests, $(cat "$RUN/conns.txt") backend connections"
      stop_tree "$PROXY_PID"; PROXY_PID=""
    done
  done
  # gRPC unary: direct, then through maitred (or the other way round).
  order="direct grpc"; [ $((round % 2)) = 0 ] && order="grpc direct"
  for target in $order; do
    port=$LISTEN_PORT; [ "$target" = direct ] && port=$GRPC_PORT
    t1=0; t2=0
    [ "$target" = grpc ] && { start_proxy grpc; read -r t1 < <(ticks "$PROXY_PID"); }
    "${PIN_LOADGEN[@]}" h2load -c 64 -m 10 -t 1 -D "$DURATION" --warm-up-time 1 -d "$RUN/check.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://127.0.0.1:$port/grpc.health.v1.Health/Check" >"$RUN/h2load.txt" 2>&1 || true
    [ "$target" = grpc ] && read -r t2 < <(ticks "$PROXY_PID")
    done_n=$(awk '/^requests:/ { print $8 }' "$RUN/h2load.txt")
    failed=$(awk '/^requests:/ { print $10 + $12 }' "$RUN/h2load.txt")
    printf 'grpc\t%s\t64x10\t%s\t%s\t%s\t0\t%s\n' "$round" "$target" "${done_n:-0}" $((t2 - t1)) "${failed:-?}" >>"$RESULTS"
    log "round $round, gRPC $target: ${done_n:-0} calls, ${failed:-?} failed"
    [ -n "$PROXY_PID" ] && { stop_tree "$PROXY_PID"; PROXY_PID=""; }
  done
done

python3 - "$RESULTS" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
clk, duration = float(sys.argv[2]), float(sys.argv[3])
med = lambda xs: statistics.median(xs) if xs else float("nan")
http, grpc = {}, {}
for kind, rnd, conns, target, req, ticks, backend, extra in rows:
    req, ticks = int(req), int(ticks)
    if kind == "http":
        d = http.setdefault((int(conns), target), {"cpu": [], "conns": [], "rps": [], "p99": []})
        d["cpu"].append(ticks / clk * 1e6 / req)
        d["conns"].append(int(backend))
        d["rps"].append(req / duration)
        d["p99"].append(extra)
    else:
        d = grpc.setdefault(target, {"cps": [], "cpu": [], "failed": []})
        d["cps"].append(req / duration)
        if ticks:
            d["cpu"].append(ticks / clk * 1e6 / req)
        d["failed"].append(extra)
print("| client conns | to backends | req/s | maitred CPU-µs/req | backend conns (max) | p99 / non-2xx (per round) |")
print("|---:|---|---:|---:|---:|---|")
for (conns, target), d in sorted(http.items()):
    print(f"| {conns} | {target} | {med(d['rps']):,.0f} | {med(d['cpu']):.2f} | "
          f"{med(d['conns']):.0f} | {', '.join(d['p99'])} |")
print()
for conns in sorted({c for c, _ in http}):
    a, b = http.get((conns, "h2c")), http.get((conns, "http1"))
    if a and b:
        ratio = med([x / y for x, y in zip(a["cpu"], b["cpu"])])
        print(f"{conns} client connections: h2c / http1 CPU per request (median of per-round ratios) {ratio:.2f}")
print()
print("| gRPC unary, h2load 64 conns x 10 streams | calls/s | maitred CPU-µs/call | failed (per round) |")
print("|---|---:|---:|---|")
for target in ("direct", "grpc"):
    d = grpc.get(target)
    if d:
        name = "direct to the tonic server" if target == "direct" else "through maitred (h2c)"
        cpu = f"{med(d['cpu']):.2f}" if d["cpu"] else "-"
        print(f"| {name} | {med(d['cps']):,.0f} | {cpu} | {', '.join(d['failed'])} |")
if "direct" in grpc and "grpc" in grpc:
    ratio = med([m / d for m, d in zip(grpc["grpc"]["cps"], grpc["direct"]["cps"])])
    print(f"\nthrough maitred / direct, calls per second (median of per-round ratios): {ratio:.2f}")
PY
