#!/usr/bin/env bash
# Installs what the build and the tests need, only when it is missing.
set -euo pipefail
need=()
softhsm_lib=""
for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [[ -e $p ]] && softhsm_lib=$p && break
done
[[ -n $softhsm_lib ]] && command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v curl >/dev/null || need+=(curl)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
# The dashboard test drives Debian's chromium and makes its NSS database
# (certutil, pk12util); the packaging checks need systemd-analyze and
# systemd-sysusers/-tmpfiles (all from the systemd package on bookworm).
command -v chromium >/dev/null || need+=(chromium)
command -v certutil >/dev/null && command -v pk12util >/dev/null || need+=(libnss3-tools)
command -v systemd-analyze >/dev/null && command -v systemd-sysusers >/dev/null \
  && command -v systemd-tmpfiles >/dev/null || need+=(systemd)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is not installed (expected at /usr/local/go)"; exit 1; }
