#!/usr/bin/env bash
# End-to-end comparison: maitred (round-robin, cookie-affinity, access log on) against
# nginx, HAProxy and Caddy under the same load, through ../shared/bench/peers.sh (small
# bodies and 10,000 idle connections, then 16 KiB and 1 MiB bodies), the
# per-request counts through instr.sh, and the user/kernel split of nginx's and
# maitred's CPU through cpu_split.sh. Run from the repository root, as root (the
# harness installs the peers with apt). Extra arguments go to peers.sh, e.g. --quick.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=../shared/bench
[ -d "$bench" ] || { echo "needs the shared bench harness at $bench" >&2; exit 1; }
cargo build --release
bin="$(mktemp -d)/maitred"
cp target/release/maitred "$bin"    # a copy, so a rebuild during the run cannot swap it
e2e="$PWD/benches/e2e"
bash "$bench/peers.sh" --out target/peers \
  --candidate "maitred=$bin run -c {BENCH}/configs/maitred.toml" \
  --candidate "maitred-cookie=$bin run -c $e2e/maitred-cookie.toml" \
  --candidate "maitred-log=$bin run -c $e2e/maitred-accesslog.toml" "$@"
# Larger bodies: 16 KiB against nginx, 1 MiB against HAProxy.
bash "$bench/peers.sh" --out target/peers-bodies --quick --scenarios 16k:64,1m:16 \
  --idle-conns 0 --pin on --targets nginx,haproxy \
  --candidate "maitred=$bin run -c {BENCH}/configs/maitred.toml"
bash "$bench/instr.sh" --out target/instr \
  --candidate "maitred=$bin run -c {BENCH}/configs/maitred.toml" \
  --candidate "maitred-cookie=$bin run -c $e2e/maitred-cookie.toml"
bash "$e2e/cpu_split.sh" --rounds 4 "$bin" | tee target/cpu-split.md
