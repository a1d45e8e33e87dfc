#!/usr/bin/env bash
# Dev instance under var/dev: its own SoftHSM token directory and
# softhsm2.conf, a dev PKI, a secp256k1 key for chain id 1337, and a
# configuration. Everything is reused on the next run.
#   scripts/dev.sh provision   create what is missing
#   scripts/dev.sh serve       run the appliance in the foreground
# DEV_DIR (default var/dev), DEV_PORT (default 8443) and APPLIANCE_BIN (default bin/appliance) can be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dev=${DEV_DIR:-$root/var/dev}
port=${DEV_PORT:-8443}
bin=${APPLIANCE_BIN:-$root/bin/appliance}
module=""
for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [[ -e $p ]] && module=$p && break
done
[[ -n $module ]] || { echo "SoftHSM is not installed: run make deps"; exit 1; }
export SOFTHSM2_CONF=$dev/hsm/softhsm2.conf

payload=0x02f082053980843b9aca008477359400825208941111111111111111111111111111111111111111872386f26fc1000080c0
# 20 ETH to 0x2222…, nonce 1: above the dev policy's 10 ETH, so it waits for 2 officers.
payload20=0x02f282053901843b9aca0084773594008252089422222222222222222222222222222222222222228901158e460913d0000080c0

provision() {
  umask 077
  mkdir -p "$dev/hsm/tokens" "$dev/pki"
  if [[ ! -f $SOFTHSM2_CONF ]]; then
    sed "s#@TOKENDIR@#$dev/hsm/tokens#" firmware-config/softhsm2.conf.in > "$SOFTHSM2_CONF"
  fi
  # The SO PIN is random and stays under var/dev. The user PIN is derived
  # from the ceremony's unseal secret and exists nowhere at rest.
  [[ -f $dev/hsm/so.pin ]] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dev/hsm/so.pin"
  "$bin" dev pki --dir "$dev/pki"
  if [[ ! -f $dev/appliance.yaml ]]; then
    sed -e "s#@DEV@#$dev#g" -e "s#@MODULE@#$module#g" -e "s#@PORT@#$port#g" -e "s#@ROOT@#$root#g" \
      firmware-config/appliance.dev.yaml.in > "$dev/appliance.yaml"
  fi
  # A 2-of-3 key ceremony: shares in shares/officerN.share, Ed25519 approval
  # keys in officers/officerN.approval.key. A second run changes nothing.
  "$bin" init --config "$dev/appliance.yaml" --so-pin-file "$dev/hsm/so.pin" --threshold 2 \
    --officers spiffe://appliance.dev/officer1,spiffe://appliance.dev/officer2,spiffe://appliance.dev/officer3 \
    --out "$dev" --generate-approval-keys
  "$bin" keys create --config "$dev/appliance.yaml" --id eth-dev --chain ethereum --network 1337 --if-missing --wrapped-backup \
    --share-file "$dev/shares/officer1.share" --share-file "$dev/shares/officer2.share" >/dev/null
  # Dev policy: transfers above 10 ETH need 2 of the 3 officers' approvals.
  if [[ ! -f $dev/.policy-set ]]; then
    "$bin" policy set --config "$dev/appliance.yaml" --key eth-dev \
      --rules '{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}' \
      --share-file "$dev/shares/officer1.share" --share-file "$dev/shares/officer2.share" >/dev/null
    touch "$dev/.policy-set"
  fi
  "$bin" keys create --config "$dev/appliance.yaml" --id btc-dev --chain bitcoin --network regtest --if-missing --wrapped-backup \
    --share-file "$dev/shares/officer1.share" --share-file "$dev/shares/officer2.share" >/dev/null
}

serve() {
  local curl_cmd="curl -sS --cacert $dev/pki/ca.crt --cert $dev/pki/client.crt --key $dev/pki/client.key \\
  -H 'Content-Type: application/json' https://127.0.0.1:$port/v1/sign \\
  -d '{\"key_id\":\"eth-dev\",\"chain\":\"ethereum\",\"network\":\"1337\",\"payload\":\"$payload\",\"idempotency_key\":\"demo-1\"}'"
  echo "$curl_cmd" > "$dev/curl-sign.sh"
  echo "${curl_cmd/$payload/$payload20}" | sed 's/demo-1/demo-20eth/' > "$dev/curl-sign-20eth.sh"
  cat <<MSG

  Appliance (dev) starting on https://127.0.0.1:$port — keys: $("$bin" keys list --config "$dev/appliance.yaml" 2>/dev/null | awk 'NR>1{printf "%s (%s) ", $1, $5}')
  In another terminal, sign an EIP-1559 transaction (chain id 1337) over mTLS:

$curl_cmd

  (also saved as $dev/curl-sign.sh; a 20 ETH transfer that needs two officers' approvals is in
   $dev/curl-sign-20eth.sh; Ctrl-C stops the appliance)

MSG
  exec "$bin" serve --config "$dev/appliance.yaml"
}

case ${1:-} in
  provision) provision ;;
  serve) serve ;;
  *) echo "usage: $0 provision|serve"; exit 2 ;;
esac
