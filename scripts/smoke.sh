#!/usr/bin/env bash
# Tried as a new user would: copy the tree as a fresh clone would have it
# (tracked and untracked-but-not-ignored files, no var/, no bin/), run
# `make run` there, wait until it serves, run the curl command it printed,
# and check the answer is a signed transaction; run it again and check the
# answer is the same (idempotency), then stop it with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=${SMOKE_PORT:-18443}
pid=""
cleanup() {
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work" 2>/dev/null || true
cd "$work"
DEV_PORT=$port setsid make run > run.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  grep -q '"appliance serving"\|appliance serving' run.log 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat run.log; echo "smoke: make run exited"; exit 1; }
  sleep 0.2
done
grep -q 'appliance serving' run.log || { cat run.log; echo "smoke: not serving"; exit 1; }
# The printed curl command, exactly as printed (a backslash-continued block).
cmd=$(awk '/^curl /{p=1} p{print} p && !/\\$/{exit}' run.log)
[[ -n $cmd ]] || { cat run.log; echo "smoke: no curl command printed"; exit 1; }
out1=$(bash -c "$cmd")
out2=$(bash -c "$cmd")
grep -q '"state":"signed"' <<<"$out1" || { echo "$out1"; cat run.log; echo "smoke: not signed"; exit 1; }
grep -q '"signed_tx":"0x02' <<<"$out1" || { echo "$out1"; echo "smoke: no signed tx"; exit 1; }
[[ $out1 == "$out2" ]] || { echo "$out1"; echo "$out2"; echo "smoke: replay differs"; exit 1; }
# The operator's backup through the CLI, while it runs.
dev=$work/var/dev
bin=$work/bin/appliance
backup=$(APPLIANCE_URL=https://127.0.0.1:$port APPLIANCE_CA=$dev/pki/ca.crt APPLIANCE_CERT=$dev/pki/operator.crt \
  APPLIANCE_KEY=$dev/pki/operator.key "$bin" backup) || { echo "$backup"; cat run.log; echo "smoke: backup failed"; exit 1; }
archive=$(echo "$backup" | sed -n 's/.*"path": *"\([^"]*\)".*/\1/p')
[[ -s $archive ]] || { echo "$backup"; echo "smoke: no archive"; exit 1; }
# Capture, then grep: `cmd | grep -q` under pipefail fails when grep exits
# early and the command gets SIGPIPE.
expect() { # expect WHAT PATTERN CMD...: run CMD, require PATTERN in its output
  local what=$1 pattern=$2 out; shift 2
  out=$("$@" 2>&1) && grep -q "$pattern" <<<"$out" || { echo "$out"; echo "smoke: $what"; exit 1; }
}
expect "backup inspect" recipient_fingerprint "$bin" backup inspect "$archive"
expect "metrics" 'appliance_sign_duration_seconds_count{chain="ethereum"} 2' \
  curl -sS --unix-socket "$dev/metrics.sock" http://appliance/metrics
kill -TERM -- -$pid 2>/dev/null || kill -TERM $pid
wait $pid 2>/dev/null || true
pid=""
grep -q 'shutting down' run.log || { cat run.log; echo "smoke: no graceful shutdown"; exit 1; }
# The auditor's offline verification, from the database file and the audit public key alone.
"$bin" audit pubkey --config "$dev/appliance.yaml" > "$work/audit.pub"
expect "audit verify" 'audit chain OK' "$bin" audit verify --config "$dev/appliance.yaml" --pubkey "$work/audit.pub"
"$bin" audit export --config "$dev/appliance.yaml" --out "$work/audit.jsonl" 2>/dev/null
expect "export verify" 'audit chain OK' "$bin" audit verify --export "$work/audit.jsonl" --pubkey "$work/audit.pub"
expect "check --full" 'integrity_check ok' "$bin" check --config "$dev/appliance.yaml" --full
echo "smoke: make run + printed curl → signed EIP-1559 transaction; replay identical; backup; clean shutdown; audit verified offline"
