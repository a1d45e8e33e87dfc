#!/usr/bin/env bash
# End-to-end benchmark harness (issue 8; docs/BENCHMARKS.md, "End-to-end
# harness"). Builds bin/appliance and bin/loadgen, provisions a bench
# instance under var/bench with scripts/dev.sh (its own SoftHSM token, PKI,
# keys eth-dev and btc-dev, port 18443; reused by the next run), gives both
# keys a realistic policy, starts the appliance, and runs the load generator:
# per round and concurrency level, the raw C_Sign ceiling of the same token
# and pool size, then EIP-1559 signing and (at some levels) PSBT signing
# through the appliance with policy, screening and audit on. The report is
# printed and written into docs/BENCHMARKS.md. Exits non-zero on any error;
# a missed target is reported, not an error.
#
#   scripts/bench.sh [--pool N] [--duration 8s] [--warmup 1s] [--rounds 3]
#                    [--c 1,2,4,8,16,32] [--btc-c 1,8,32] [--no-doc] [--fresh]
#
#   --pool     SoftHSM sessions of the appliance and of the raw ceiling (default 4)
#   --no-doc   print only; leave docs/BENCHMARKS.md alone (for trial runs)
#   --fresh    delete var/bench first (a new token, keys and empty database)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=1

pool=4 duration=8s warmup=1s rounds=3 conc=1,2,4,8,16,32 btc_conc=1,8,32 doc=docs/BENCHMARKS.md fresh=0
args="$*"
while (($#)); do
  case $1 in
    --pool) pool=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --c) conc=$2; shift ;;
    --btc-c) btc_conc=$2; shift ;;
    --no-doc) doc="" ;;
    --fresh) fresh=1 ;;
    *) echo "usage: $0 [--pool N] [--duration D] [--warmup D] [--rounds N] [--c LIST] [--btc-c LIST] [--no-doc] [--fresh]" >&2; exit 2 ;;
  esac
  shift
done
[[ $pool =~ ^[1-9][0-9]*$ ]] || { echo "--pool: $pool is not a positive integer" >&2; exit 2; }
command=${BENCH_COMMAND:-scripts/bench.sh${args:+ $args}}

bench=$root/var/bench
port=18443
cfg=$bench/appliance.yaml
version=$(git describe --always --dirty 2>/dev/null || echo dev)

echo "== build"
# BENCH_NOBUILD=1: run the binaries already in bin/ (interleaved A/B runs of two builds).
if [[ -z ${BENCH_NOBUILD:-} ]]; then
  go build -trimpath -ldflags "-X main.version=$version" -o bin/appliance ./cmd/appliance
  go build -trimpath -o bin/loadgen ./internal/loadgen/cmd/loadgen
fi

if ((fresh)); then
  [[ -f $bench/appliance.pid ]] && kill -0 "$(cat "$bench/appliance.pid")" 2>/dev/null \
    && { echo "a bench appliance is running (pid $(cat "$bench/appliance.pid")): stop it first" >&2; exit 1; }
  rm -rf "$bench"
fi

echo "== provision $bench (scripts/dev.sh)"
mkdir -p "$bench"
if ! DEV_DIR=$bench DEV_PORT=$port scripts/dev.sh provision >"$bench/provision.log" 2>&1; then
  cat "$bench/provision.log" >&2
  exit 1
fi
export SOFTHSM2_CONF=$bench/hsm/softhsm2.conf

# The bench configuration: the pool size under test, and JSON logs as in
# production (dev instances log for people).
sed -i -E "s/^(  pool_size:).*/\1 $pool/" "$cfg"
awk '/^log:/ { inlog = 1; next } /^[^ #]/ { inlog = 0 } inlog && /^  format:/ { found = 1 } END { exit !found }' "$cfg" \
  || sed -i -E 's/^log:$/log:\n  format: json/' "$cfg"

# A realistic policy, so that every request does the policy engine's real
# work (and its writes): per-transaction maximum, a rolling 24-hour window,
# fee caps, rate limits per client and per key, and an approval threshold
# far above the bench's amounts (nothing waits for officers). Limits are
# set so that the run never reaches them; a refusal fails the run.
eth_rules='{"per_tx_max":{"ETH":"1000000000000000000"},"windows":[{"asset":"ETH","duration":"24h","max":"1000000000000000000000000"}],"max_fee_per_gas":"500000000000","max_priority_fee_per_gas":"10000000000","rate_per_client":{"per_second":100000,"burst":100000},"rate_per_key":{"per_second":100000,"burst":100000},"approval_above":{"ETH":"10000000000000000000"},"approvals":2}'
btc_rules='{"per_tx_max":{"BTC":"100000000"},"windows":[{"asset":"BTC","duration":"24h","max":"2100000000000000"}],"max_fee_rate":100,"max_fee":"100000","rate_per_client":{"per_second":100000,"burst":100000},"rate_per_key":{"per_second":100000,"burst":100000},"approval_above":{"BTC":"1000000000"},"approvals":2}'
set_policy() { # key rules: only when they changed, so reruns keep the policy version
  local marker=$bench/.bench-policy-$1
  [[ -f $marker && $(cat "$marker") == "$2" ]] && return 0
  bin/appliance policy set --config "$cfg" --key "$1" --rules "$2" \
    --share-file "$bench/shares/officer1.share" --share-file "$bench/shares/officer2.share" >/dev/null
  printf '%s' "$2" >"$marker"
}
set_policy eth-dev "$eth_rules"
set_policy btc-dev "$btc_rules"

if [[ -f $bench/appliance.pid ]] && kill -0 "$(cat "$bench/appliance.pid")" 2>/dev/null; then
  echo "a bench appliance is already running (pid $(cat "$bench/appliance.pid")): stop it first" >&2
  exit 1
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is in use" >&2
  exit 1
fi

echo "== start the appliance (pool $pool, log $bench/appliance.log)"
# BENCH_APPLIANCE_ENV: extra environment for the appliance alone (e.g. GOMAXPROCS=1), for experiments.
env ${BENCH_APPLIANCE_ENV:-} bin/appliance serve --config "$cfg" >>"$bench/appliance.log" 2>&1 &
pid=$!
echo "$pid" >"$bench/appliance.pid"
stop_appliance() {
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "the appliance did not stop within 20 s of SIGTERM; killing it" >&2
    kill -KILL "$pid"
  fi
  local rc=0
  wait "$pid" || rc=$?
  rm -f "$bench/appliance.pid"
  return "$rc"
}
trap 'stop_appliance || true' EXIT

curl_health() {
  curl -sS --max-time 2 --cacert "$bench/pki/ca.crt" --cert "$bench/pki/client.crt" --key "$bench/pki/client.key" \
    "https://127.0.0.1:$port/v1/health" 2>/dev/null || true
}
# Start runs PRAGMA quick_check over the whole database (1 s per GB when
# the file is cached, over 30 s per GB from disk; a reused instance only
# grows): wait as long as systemd would (TimeoutStartSec=5min), saying why
# every 15 s.
db_mb=$(( $(stat -c %s "$bench/appliance.db" 2>/dev/null || echo 0) / 1048576 ))
((db_mb < 1024)) || echo "   the instance's database is $db_mb MB: its integrity check at start takes a while (--fresh starts from an empty one)"
for i in $(seq 1500); do
  kill -0 "$pid" 2>/dev/null || { echo "the appliance exited; its log:" >&2; tail -n 30 "$bench/appliance.log" >&2; exit 1; }
  health=$(curl_health)
  [[ $health == *'"status":"ok"'* ]] && break
  if [[ $health == *'frozen'* ]]; then
    echo "the bench appliance is frozen (a freeze survives restarts): $health" >&2
    echo "start from a new instance with --fresh" >&2
    exit 1
  fi
  ((i < 1500)) || { echo "the appliance is not healthy after 5 min: $health" >&2; exit 1; }
  ((i % 75)) || echo "   waiting for the appliance ($((i / 5)) s): ${health:-not listening yet}"
  sleep 0.2
done

echo "== load generator (rounds $rounds, levels $conc, PSBTs at $btc_conc, $warmup warm-up + $duration each)"
mkdir -p "$bench/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
bin/loadgen -config "$cfg" -pid "$pid" -c "$conc" -btc-c "$btc_conc" -rounds "$rounds" \
  -warmup "$warmup" -duration "$duration" -doc "$doc" -command "$command" \
  -appliance-version "$version" -json "$bench/results/$stamp.json" | tee "$bench/results/$stamp.md"

echo "== stop the appliance"
trap - EXIT
if ! stop_appliance; then
  echo "the appliance exited non-zero after SIGTERM; see $bench/appliance.log" >&2
  exit 1
fi
echo "== done in ${SECONDS}s (figures: $bench/results/$stamp.{md,json}${doc:+; written to $doc})"
