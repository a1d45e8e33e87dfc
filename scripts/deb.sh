#!/usr/bin/env bash
# Builds dist/appliance_<version>_<arch>.deb with nfpm from packaging/nfpm.yaml
# (make deb). Stages in dist/stage/: the binary (the Makefile's ldflags) and
# softhsm2.conf rendered for /var/lib/appliance/softhsm/tokens.
#   VERSION      the binary's version (default: git describe, as the Makefile)
#   LDFLAGS      go build -ldflags (default: -X main.version=$VERSION)
#   DEB_VERSION  the package's version (default: derived from VERSION)
#   NFPM_VERSION nfpm release (default below); built once into bin/
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local PATH=/usr/local/go/bin:$PATH CGO_ENABLED=1

# v2.46.0 and later need go.digitalxero.dev modules (the MSIX packager), which
# the Go module proxy does not serve everywhere; v2.45.2 builds with Go 1.26.
NFPM_VERSION=${NFPM_VERSION:-v2.45.2}
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
LDFLAGS=${LDFLAGS:--X main.version=$VERSION}

# Debian versions start with a digit and sort: v1.2.3-4-gabc → 1.2.3+git4.gabc;
# an untagged tree → 0.0~git<commit time UTC>.<hash>; -dirty → +dirty / .dirty.
deb_version() {
  local v=$1 out
  if [[ $v =~ ^v?([0-9][0-9A-Za-z.~]*)(-([0-9]+)-g([0-9a-f]+))?(-dirty)?$ ]]; then
    out=${BASH_REMATCH[1]}
    [[ -n ${BASH_REMATCH[3]} ]] && out+="+git${BASH_REMATCH[3]}.g${BASH_REMATCH[4]}"
    [[ -n ${BASH_REMATCH[5]} ]] && { [[ $out == *+* ]] && out+=".dirty" || out+="+dirty"; }
  else
    local ts hash
    ts=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
    hash=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    out="0.0~git$ts.$hash"
    [[ $v == *-dirty ]] && out+=".dirty"
  fi
  echo "$out"
}
export DEB_VERSION=${DEB_VERSION:-$(deb_version "$VERSION")}
export DEB_ARCH=${DEB_ARCH:-$(go env GOARCH)}
export DEB_MAINTAINER=${DEB_MAINTAINER:-"custodysigner appliance maintainers <appliance@custodysigner.invalid>"}
# Reproducible timestamps inside the package: the commit's time.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

nfpm=bin/nfpm-$NFPM_VERSION
if [[ ! -x $nfpm ]]; then
  echo "deb: building nfpm $NFPM_VERSION"
  tools=$(mktemp -d)
  GOBIN=$tools CGO_ENABLED=0 go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
  mkdir -p bin && mv "$tools/nfpm" "$nfpm" && rm -rf "$tools"
fi

rm -rf dist/stage dist/appliance_*.deb
mkdir -p dist/stage
go build -trimpath -ldflags "$LDFLAGS" -o dist/stage/appliance ./cmd/appliance
sed 's#@TOKENDIR@#/var/lib/appliance/softhsm/tokens#' firmware-config/softhsm2.conf.in > dist/stage/softhsm2.conf
grep -q '^directories.tokendir = /var/lib/appliance/softhsm/tokens$' dist/stage/softhsm2.conf

out=dist/appliance_${DEB_VERSION}_${DEB_ARCH}.deb
"$nfpm" package --config packaging/nfpm.yaml --packager deb --target "$out" >/dev/null
echo "deb: $out (appliance $VERSION, nfpm $NFPM_VERSION)"
