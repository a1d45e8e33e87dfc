#!/usr/bin/env bash
# Runs every fuzz target of the module, one after another, for FUZZTIME each
# (default 60s). Targets are found in every package's *_test.go files
# (func FuzzXxx(f *testing.F)); their seed corpora live in the package's
# testdata/fuzz/FuzzXxx/ and are also run by a plain `go test`.
#
# Environment:
#   FUZZTIME          time per target (go test -fuzztime: 30s, 2m, or 10000x)
#   FUZZMINIMIZETIME  time to minimise each new interesting input (default 2s;
#                     Go's own default, 60s, lets one large input stall a short run)
#   FUZZPARALLEL      fuzzing workers per target (default: GOMAXPROCS)
#   FUZZ_ONLY         regexp: run only targets whose "pkg Target" matches
#   FUZZ_REPORT       file to write one tab-separated line per target:
#                     package, target, fuzztime, execs, new interesting, result
#
# A real finding (Go writes the input under testdata/fuzz/) or a committed
# seed that fails is reported and the remaining targets still run; the script
# fails at the end. A run whose only failure is a bare "context deadline
# exceeded" as -fuzztime ends, with no input written, fuzzed for its whole
# time and found nothing: that is a race in Go's fuzz coordinator
# (go.dev/issue/75804, fixed in Go 1.27; Go 1.26 has it), counted as a pass
# and said so. Any other failure that left no input behind is the engine
# stumbling on a loaded machine: it is shown in full and retried once.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-60s}
mt=${FUZZMINIMIZETIME:-2s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
report=${FUZZ_REPORT:-}
[[ -n $report ]] && : >"$report"
count() { [[ -d $1 ]] && find "$1" -type f | wc -l || echo 0; }
run() {
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" -fuzzminimizetime "$mt" ${FUZZPARALLEL:+-parallel "$FUZZPARALLEL"} "$1" >"$log" 2>&1
}
execs() { grep -o 'execs: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0; }
interesting() { grep -o 'new interesting: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0; }
record() { # pkg target result
  [[ -n $report ]] && printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$t" "$(execs)" "$(interesting)" "$3" >>"$report"
  return 0
}
# deadline_race: the log of a failed run is go.dev/issue/75804 and nothing
# else: the target's only failure line is the coordinator's bare deadline
# error, and no input was written.
deadline_race() {
  grep -q -- '^--- FAIL: Fuzz' "$log" && ! grep -q 'Failing input written' "$log" &&
    [[ $(grep -c -- '^    ' "$log") == 1 ]] && grep -qx '    context deadline exceeded' "$log"
}
failed=()
targets=0
start=$SECONDS
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*(\w* *\*testing\.F)' "$dir"/*_test.go 2>/dev/null | sed 's/^func //; s/(.*//'); do
    if [[ -n ${FUZZ_ONLY:-} ]] && ! [[ "$pkg $f" =~ $FUZZ_ONLY ]]; then
      continue
    fi
    targets=$((targets + 1))
    before=$(count "$dir/testdata/fuzz/$f")
    if run "$pkg" "$f"; then
      echo "fuzz $pkg $f ($t): execs: $(execs), new interesting: $(interesting)"
      record "$pkg" "$f" ok
      continue
    fi
    after=$(count "$dir/testdata/fuzz/$f")
    if ((after == before)) && deadline_race; then
      echo "fuzz $pkg $f ($t): execs: $(execs), new interesting: $(interesting) (stopped at the deadline by go.dev/issue/75804, not a finding)"
      record "$pkg" "$f" ok
      continue
    fi
    cat "$log"
    if ((after > before)); then
      echo "fuzz $pkg $f: FOUND a failing input (saved under $dir/testdata/fuzz/$f)"
      record "$pkg" "$f" finding
      failed+=("$pkg $f")
      continue
    fi
    if grep -q 'failure while testing seed corpus entry' "$log"; then
      echo "fuzz $pkg $f: a seed fails (see above; the input is under $dir/testdata/fuzz/$f or in the code)"
      record "$pkg" "$f" seed-fails
      failed+=("$pkg $f")
      continue
    fi
    echo "fuzz $pkg $f: engine failure without a finding; retrying once"
    if run "$pkg" "$f"; then
      echo "fuzz $pkg $f ($t): execs: $(execs), new interesting: $(interesting)"
      record "$pkg" "$f" ok
    else
      cat "$log"
      echo "fuzz $pkg $f: failed twice"
      record "$pkg" "$f" failed
      failed+=("$pkg $f")
    fi
  done
done
echo "fuzz: $targets targets, $t each, $((SECONDS - start))s in all"
if ((${#failed[@]})); then
  printf 'fuzz: FAILED %s\n' "${failed[@]}"
  exit 1
fi
