#!/usr/bin/env bash
# Runs every Fuzz* target in the module for FUZZTIME each (default 60s).
# A real finding (Go writes the input under testdata/fuzz/) fails at once.
# A failure that left no input behind is the fuzz engine itself stumbling on
# a loaded machine: it is shown in full and retried once.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-60s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
count() { [[ -d $1 ]] && find "$1" -type f | wc -l || echo 0; }
run() { go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" "$1" >"$log" 2>&1; }
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/func //'); do
    before=$(count "$dir/testdata/fuzz/$f")
    if run "$pkg" "$f"; then
      echo "fuzz $pkg $f ($t): $(grep -o 'execs: [0-9]*' "$log" | tail -1)"
      continue
    fi
    cat "$log"
    after=$(count "$dir/testdata/fuzz/$f")
    if ((after > before)); then
      echo "fuzz $pkg $f: FOUND a failing input (saved under $dir/testdata/fuzz/$f)"; exit 1
    fi
    echo "fuzz $pkg $f: engine failure without a finding; retrying once"
    run "$pkg" "$f" || { cat "$log"; echo "fuzz $pkg $f: failed twice"; exit 1; }
    echo "fuzz $pkg $f ($t): $(grep -o 'execs: [0-9]*' "$log" | tail -1)"
  done
done
