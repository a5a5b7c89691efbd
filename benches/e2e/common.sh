# common.sh — what the benches/e2e scripts that drive maitred themselves share (sourced,
# from the repository root): the shared harness's helpers (../shared/bench/lib), the
# peers.sh layout (proxy on CPU 0, load and backends on CPU 1), the usual options, the
# binary under test, and a run directory removed on exit with every process started.
# shellcheck shell=bash

BENCH=$(cd ../shared/bench 2>/dev/null && pwd) || { echo "needs the shared bench harness at ../shared/bench" >&2; exit 1; }
CALLER_PWD=$PWD
LISTEN_PORT=18080
BACKEND_PORTS=(19001 19002 19003)
PIN_LOADGEN=(taskset -c 1)
PIN_PROXY=(taskset -c 0)
STARTED=()            # PIDs stopped on exit, last first
PROXY_PID=""          # the proxy under test now, stopped on exit
ROUNDS=3
CONNS=64,256
DURATION=6
BIN=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=/dev/null
source "$BENCH/lib/common.sh"

parse_options() {     # HELP_LAST_LINE ARGS...: --rounds, --conns, --duration, -h, BINARY
  local help=$1; shift
  while [ $# -gt 0 ]; do
    case $1 in
      --rounds) ROUNDS=$2; shift ;;
      --conns) CONNS=$2; shift ;;
      --duration) DURATION=$2; shift ;;
      -h|--help) sed -n "2,${help}p" "$0"; exit 0 ;;
      -*) die "unknown option $1" ;;
      *) BIN=$1 ;;
    esac
    shift
  done
  [[ $ROUNDS =~ ^[1-9][0-9]?$ && $DURATION =~ ^[1-9][0-9]?$ ]] || die "--rounds and --duration take 1 to 99"
}

need_tools() {        # TOOL...: dies naming the first one missing
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (bash ../shared/bench/peers.sh installs it)"
  done
}

take_binary() {       # BIN, or target/release/maitred built now
  if [ -z "$BIN" ]; then
    cargo build --release
    BIN=target/release/maitred
  fi
  [ -x "$BIN" ] || die "$BIN is not an executable"
}

make_run_dir() {      # PREFIX: RUN, with logs/ tmp/ www/ and a copy of BIN as $RUN/maitred
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  chmod 755 "$RUN"
  mkdir -p "$RUN/logs" "$RUN/tmp" "$RUN/www"
  [ -n "$BIN" ] && cp "$BIN" "$RUN/maitred"    # a copy, so a rebuild during the run cannot swap it
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
}

cleanup() {           # on exit: the proxy, every process started (last first), the run directory
  local rc=$? i
  trap - EXIT INT TERM
  [ -n "$PROXY_PID" ] && stop_tree "$PROXY_PID"
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do stop_tree "${STARTED[$i]}"; done
  if declare -F on_cleanup >/dev/null; then on_cleanup; fi
  rm -rf "$RUN"
  exit "$rc"
}
