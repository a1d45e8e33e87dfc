# The two commands a new machine needs: `make run` and `make test`.
SHELL        := /bin/bash
export PATH  := /usr/local/go/bin:$(PATH)
export GOTOOLCHAIN := local
export CGO_ENABLED := 1

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GOTEST  := go test -race -count=1 -timeout 14m
FUZZTIME ?= 60s

.PHONY: all build run test unit smoke soak deps fuzz fuzz-short bench bench-harness vet fmt clean deb deb-test systemd-check systemd-live

all: build

## deps: install what is missing (softhsm2, curl, gcc), only when absent
deps:
	@scripts/deps.sh

## build: bin/appliance
build: deps
	go build -trimpath -ldflags "$(LDFLAGS)" -o bin/appliance ./cmd/appliance

## run: provision var/dev (SoftHSM token, dev PKI, key, config) and serve on https://127.0.0.1:8443
run: build
	@scripts/dev.sh provision
	@scripts/dev.sh serve

## test: the whole suite with -race against real SoftHSM, then the new-user smoke test;
## the package and unit checks first (they take seconds)
test: deps vet deb-test systemd-check unit fuzz-short smoke

## unit: every Go test, among them internal/crashtest's TestCrashConsistency in its short
## version (20 SIGKILLs of the real appliance under signing load; `make soak` is the long one)
unit:
	$(GOTEST) ./...

vet:
	go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

## smoke: a copy of the tree, `make run`, the printed curl command
smoke: build
	@scripts/smoke.sh

## soak: the crash consistency test long (docs/RECOVERY.md, "Crash consistency"): SOAK_KILLS
## SIGKILLs (default 200), and on until SOAK_TIME has passed (e.g. make soak SOAK_TIME=30m);
## SOAK_RACE=1 builds the appliance under test with -race. The log goes to var/soak.log.
SOAK_KILLS ?= 200
SOAK_TIME  ?= 0s
soak: deps
	@mkdir -p var
	set -o pipefail; CRASH_KILLS=$(SOAK_KILLS) CRASH_DURATION=$(SOAK_TIME) CRASH_RACE=$(SOAK_RACE) \
	  go test -count=1 -timeout 0 -run '^TestCrashConsistency$$' -v ./internal/crashtest | tee var/soak.log

## fuzz-short: every fuzz target briefly (CI: 3s each, about 3 minutes for 40 targets; the seed
## corpora in testdata/fuzz also run in `unit`); fuzz: each for FUZZTIME. scripts/fuzz.sh lists its
## options, e.g. make fuzz FUZZTIME=30s FUZZ_ONLY='internal/api ' FUZZ_REPORT=var/fuzz.tsv
fuzz-short:
	@FUZZTIME=3s scripts/fuzz.sh

fuzz: deps
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

## bench: Go benchmarks of the hot paths (figures go to docs/BENCHMARKS.md by hand, with this command),
## then the end-to-end harness (scripts/bench.sh), which writes its own section of docs/BENCHMARKS.md.
## The first run builds the 10,000-key fixture (var/bench-keys, about 4 minutes) for BenchmarkStartUnseal10kKeys.
bench: deps
	@mkdir -p var
	set -o pipefail; go test -run '^$$' -bench . -benchmem -count 5 -timeout 180m ./... | tee var/bench.txt
	@BENCH_COMMAND="make bench" scripts/bench.sh

## bench-harness: the end-to-end harness alone (about 8 minutes); BENCH_ARGS passes options,
## e.g. make bench-harness BENCH_ARGS="--duration 2s --rounds 1 --no-doc" (scripts/bench.sh lists them)
bench-harness: deps
	@BENCH_COMMAND="make bench-harness$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" scripts/bench.sh $(BENCH_ARGS)

## deb: dist/appliance_<version>_<arch>.deb, built with nfpm from packaging/ (packaging/README.md)
deb: deps
	@VERSION="$(VERSION)" LDFLAGS="$(LDFLAGS)" scripts/deb.sh

## deb-test: install the .deb into an empty root with dpkg --root; files, owners, modes, conffiles, version, upgrade, purge
deb-test: deb
	@VERSION="$(VERSION)" scripts/deb-test.sh

## systemd-check: the unit's `systemd-analyze security` exposure (at most 1.5) and `systemd-analyze verify`
systemd-check: deb
	@scripts/systemd-check.sh

## systemd-live: the .deb in a debootstrapped bookworm booted with systemd-nspawn (systemd as PID 1):
## the hardened unit runs, unseals, signs, reloads, stops (root; not in `make test`; docs/OPERATIONS.md)
systemd-live: deb
	@scripts/systemd-live.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin var/dev dist
