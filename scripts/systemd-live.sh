#!/usr/bin/env bash
# The packaged appliance under the real hardened unit, with systemd as PID 1
# (make systemd-live; not part of make test: it needs root, apt and a few
# minutes the first time).
#
#  1. a minimal Debian bookworm root (debootstrap --variant=minbase plus
#     systemd, dbus, softhsm2, curl, ca-certificates), cached in
#     var/systemd-live/base; every run works on a fresh copy, var/systemd-live/root;
#  2. our .deb installed in it with dpkg -i (systemd-nspawn, not booted);
#  3. inside it, as packaging/README.md says: a dev PKI in /etc/appliance/pki,
#     the TLS files in /etc/appliance/tls, the shipped appliance.yaml adjusted
#     (token label, principals, mode production), the key ceremony
#     (appliance init, 2 of 3, shares in /root/shares), a key (keys create with
#     two shares), chown -R appliance:appliance /var/lib/appliance;
#  4. the container booted with systemd as PID 1 (systemd-nspawn --boot, its
#     own network namespace); the checks run inside it (nsenter into the
#     container's namespaces): systemctl enable --now appliance, active
#     (running) as Type=notify, WatchdogUSec/StatusText/NRestarts, /v1/health
#     sealed over mTLS, two officers unseal with `appliance unseal`, a signing
#     request, systemctl reload (and again with procps: /bin/kill), the
#     metrics listener, the IP allow-list enforced, systemd-analyze security
#     (live), the watchdog petted past 30 s, systemctl stop, no
#     EPERM/SIGSYS in the journal;
#  5. the container powered off.
# Results: var/systemd-live/results.txt (and the journal, journal.txt).
# Usage: scripts/systemd-live.sh [PACKAGE.deb]   (default: the newest in dist/)
#   SYSTEMD_LIVE_KEEP=1 leaves the container running at the end (debugging).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
deb=${1:-$(ls -t dist/appliance_*.deb 2>/dev/null | head -1 || true)}
[[ -n $deb && -f $deb ]] || { echo "systemd-live: no package in dist/ (make deb)"; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "systemd-live: needs root (debootstrap, systemd-nspawn)"; exit 1; }

live=$PWD/var/systemd-live
base=$live/base
R=$live/root
results=$live/results.txt
machine=appliance-live
log() { echo "systemd-live: $*"; }
fail() { echo "systemd-live: FAILED: $*" >&2; exit 1; }

# --- Host tools ---------------------------------------------------------------
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- The cached base root -------------------------------------------------------
mkdir -p "$live"
if [[ ! -x $base/usr/lib/systemd/systemd || ! -e $base/usr/lib/softhsm/libsofthsm2.so ]]; then
  log "debootstrap bookworm (minbase + systemd dbus softhsm2 curl ca-certificates) into $base, once"
  rm -rf "$base.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,softhsm2,curl,ca-certificates \
    bookworm "$base.tmp" http://deb.debian.org/debian > "$live/debootstrap.log" 2>&1 \
    || { tail -20 "$live/debootstrap.log"; fail "debootstrap (log: $live/debootstrap.log)"; }
  rm -rf "$base" && mv "$base.tmp" "$base"
fi

# procps (/bin/kill, for the unit's ExecReload=) is not in minbase; the
# package depends on it, so it is installed first, as apt would.
if ! ls "$live"/debs/procps_*.deb >/dev/null 2>&1; then
  mkdir -p "$live/debs.tmp"
  (cd "$live/debs.tmp" && apt-get download procps libproc2-0 libncursesw6 >/dev/null 2>&1) || fail "apt-get download procps"
  rm -rf "$live/debs" && mv "$live/debs.tmp" "$live/debs"
fi

# --- A fresh copy with our package ------------------------------------------------
nspawn_pid=""
cleanup() {
  if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [[ ${SYSTEMD_LIVE_KEEP:-0} == 1 ]]; then
      log "left running: nspawn pid $nspawn_pid (kill $nspawn_pid to power it off)"
      return
    fi
    kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn asks the container's systemd to power off
    for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
rm -rf "$R"
cp -a --reflink=auto "$base" "$R"
echo "$machine" > "$R/etc/hostname"
cp "$deb" "$R/root/appliance.deb"
cp -r "$live/debs" "$R/root/debs"
nspawn() { # a command in the root, not booted, its own network namespace
  systemd-nspawn -q -D "$R" --register=no --keep-unit --private-network --resolv-conf=off --timezone=off --pipe "$@"
}
log "dpkg -i $(basename "$deb")"
nspawn sh -c 'dpkg -i /root/debs/*.deb && dpkg -i /root/appliance.deb' > "$live/dpkg.log" 2>&1 || { cat "$live/dpkg.log"; fail "dpkg -i"; }

# --- Configuration, key ceremony, a key (README.Debian, steps 1-3) -----------------
cat > "$R/root/setup.sh" <<'SETUP'
set -euo pipefail
umask 077
E=/etc/appliance
appliance dev pki --dir $E/pki >/dev/null
install -m 0640 -o root -g appliance $E/pki/server.crt $E/tls/server.crt
install -m 0640 -o root -g appliance $E/pki/server.key $E/tls/server.key
install -m 0640 -o root -g appliance $E/pki/ca.crt $E/tls/clients-ca.crt
# The shipped configuration: its own token label, the dev PKI's principals.
sed -i -e 's#^  uri: .*#  uri: "pkcs11:token=appliance-live?module-path=/usr/lib/softhsm/libsofthsm2.so"#' \
  -e 's#^mode: .*#mode: production#' -e '/^principals:/,$d' $E/appliance.yaml
cat >> $E/appliance.yaml <<'YAML'
principals:
  - name: spiffe://appliance.dev/client
    roles: [client]
    keys: [live-eth]
  - {name: spiffe://appliance.dev/officer1, roles: [officer]}
  - {name: spiffe://appliance.dev/officer2, roles: [officer]}
  - {name: spiffe://appliance.dev/officer3, roles: [officer]}
  - {name: spiffe://appliance.dev/operator, roles: [operator]}
  - {name: spiffe://appliance.dev/auditor, roles: [auditor]}
YAML
appliance config check $E/appliance.yaml >/dev/null
head -c 24 /dev/urandom | base64 | tr -d '/+=' > /root/so.pin
appliance init --config $E/appliance.yaml --so-pin-file /root/so.pin --threshold 2 \
  --officers spiffe://appliance.dev/officer1,spiffe://appliance.dev/officer2,spiffe://appliance.dev/officer3 \
  --out /root --generate-approval-keys
appliance keys create --config $E/appliance.yaml --id live-eth --chain ethereum --network 1 \
  --share-file /root/shares/officer1.share --share-file /root/shares/officer2.share
chown -R appliance:appliance /var/lib/appliance   # what init and keys create wrote as root
ls -lR /var/lib/appliance /etc/appliance
SETUP
log "configuration, key ceremony (2 of 3), key live-eth"
nspawn /bin/bash /root/setup.sh > "$live/setup.log" 2>&1 || { cat "$live/setup.log"; fail "setup in the root"; }

# --- The checks, run inside the booted container ---------------------------------
cat > "$R/root/checks.sh" <<'CHECKS'
set -uo pipefail
E=/etc/appliance P=/etc/appliance/pki
pass=0 failed=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
ko() { echo "FAIL $*"; failed=$((failed + 1)); }
ev() { sed 's/^/    /'; } # evidence, indented
C() { curl -sS --max-time 20 --cacert $P/ca.crt --cert $P/$1.crt --key $P/$1.key "${@:2}"; }

echo "== systemd"
echo "    PID 1: $(cat /proc/1/comm) ($(readlink /proc/1/exe)), $(systemctl --version | head -1)"
echo "    system: $(systemctl is-system-running --wait 2>&1)"
systemctl --failed --no-legend --plain | ev

echo "== systemctl enable --now appliance"
systemctl enable --now appliance 2>&1 | ev
state=$(systemctl show -p ActiveState --value appliance)
for _ in $(seq 60); do
  [[ $state == active || $state == failed ]] && break
  sleep 0.5; state=$(systemctl show -p ActiveState --value appliance)
done
show=$(systemctl show -p Type,NotifyAccess,ActiveState,SubState,MainPID,WatchdogUSec,StatusText,NRestarts,Result,User appliance)
echo "$show" | ev
systemctl status appliance --no-pager -l 2>&1 | head -12 | ev
if grep -qx ActiveState=active <<< "$show" && grep -qx SubState=running <<< "$show" && grep -qx Type=notify <<< "$show"; then
  ok "active (running), Type=notify: systemd got READY=1"
else
  ko "not active (running)"; journalctl -u appliance --no-pager -o cat | tail -40 | ev
fi
grep -qx WatchdogUSec=30s <<< "$show" && ok "WatchdogUSec=30s" || ko "WatchdogUSec"
grep -q '^StatusText=.\+' <<< "$show" && ok "StatusText set by the service (STATUS=)" || ko "StatusText empty"
grep -qx NRestarts=0 <<< "$show" && ok "NRestarts=0" || ko "NRestarts"

echo "== /v1/health, sealed"
h=$(C client https://127.0.0.1:8443/v1/health 2>&1); echo "$h" | ev
grep -q sealed <<< "$h" && ok "health answers sealed over mTLS" || ko "health not sealed"
echo "== unseal: officer1, officer2"
for i in 1 2; do
  out=$(appliance unseal --share-file /root/shares/officer$i.share --url https://127.0.0.1:8443 \
    --tls-cert $P/officer$i.crt --tls-key $P/officer$i.key --ca $P/ca.crt 2>&1); rc=$?
  echo "$out" | ev
  ((rc == 0)) && ok "unseal by officer$i (exit 0)" || ko "unseal by officer$i (exit $rc)"
done
# The health checks are probed every 15 s (WatchdogSec/2): the hsm check
# catches up with the unseal at the next probe.
t0=$(date +%s)
for _ in $(seq 40); do
  h=$(C client https://127.0.0.1:8443/v1/health 2>&1)
  grep -q '"status":"ok"' <<< "$h" && break
  sleep 0.5
done
echo "$h" | ev
echo "    (status ok $(($(date +%s) - t0)) s after the second share)"
grep -q '"sealed":false' <<< "$h" && ok "unsealed (health sealed:false)" || ko "still sealed"
grep -q '"status":"ok"' <<< "$h" && ok "health ok after the next probe" || ko "health not ok after unseal"
systemctl show -p StatusText appliance | ev

echo "== sign (live-eth, EIP-1559, chain id 1)"
payload=0x02ee0180843b9aca008477359400825208941111111111111111111111111111111111111111872386f26fc1000080c0
s=$(C client -H 'Content-Type: application/json' https://127.0.0.1:8443/v1/sign \
  -d "{\"key_id\":\"live-eth\",\"chain\":\"ethereum\",\"network\":\"1\",\"payload\":\"$payload\",\"idempotency_key\":\"live-1\"}" 2>&1)
echo "$s" | cut -c1-400 | ev
grep -q '"state":"signed"' <<< "$s" && grep -q '"signed_tx":"0x02' <<< "$s" && ok "signing request signed" || ko "sign"

reload() { # $1: what this attempt is
  local since r
  since=$(date '+%Y-%m-%d %H:%M:%S'); sleep 1
  systemctl reload appliance 2>&1 | ev
  sleep 2
  r=$(journalctl -u appliance --since "$since" --no-pager -o cat 2>&1); echo "$r" | ev
  grep -q 'Reloading .*HSM-backed signing appliance' <<< "$r" && grep -q 'configuration reloaded' <<< "$r" \
    && [[ $(systemctl show -p ActiveState --value appliance) == active ]] \
    && ok "reload ($1): the appliance logged the configuration reload, still active" || ko "reload ($1)"
}
echo "== systemctl reload appliance (ExecReload=/bin/kill -HUP \$MAINPID)"
if [[ -x /bin/kill ]]; then echo "    /bin/kill: $(dpkg -S /bin/kill 2>/dev/null)"; else echo "    /bin/kill: missing (procps is not installed)"; fi
reload "as packaged"
if [[ ! -x /bin/kill ]]; then
  echo "== systemctl reload appliance, after installing procps (/bin/kill)"
  dpkg -i /root/debs/*.deb 2>&1 | grep -E '^(Setting up|dpkg:)' | ev
  reload "with procps installed"
fi

echo "== metrics on 127.0.0.1:9464"
m=$(curl -sS --max-time 10 http://127.0.0.1:9464/metrics 2>&1)
echo "$m" | grep -E '^(appliance_(sealed|up|build_info|unsealed)|process_start_time_seconds|process_open_fds)' | head -8 | ev
echo "    ($(grep -c '^[a-z]' <<< "$m") samples)"
grep -q '^appliance_' <<< "$m" && grep -q '^process_start_time_seconds' <<< "$m" && ok "metrics listener answers" || ko "metrics"

echo "== IPAddressDeny=any / IPAddressAllow= enforcement (a client at 198.51.100.7, TEST-NET-2, on lo)"
systemctl show -p IPAddressDeny,IPAddressAllow appliance | ev
ip_out=$(C client --connect-timeout 4 --resolve live:8443:198.51.100.7 --interface 198.51.100.7 -k https://198.51.100.7:8443/v1/health 2>&1); rc=$?
echo "    curl from 198.51.100.7: exit $rc ${ip_out:0:120}" 
lo_out=$(C client --connect-timeout 4 --interface 127.0.0.1 https://127.0.0.1:8443/v1/health 2>&1); echo "    curl from 127.0.0.1: ${lo_out:0:60}"
if ((rc == 28)); then ok "IP allow-list enforced: 198.51.100.7 dropped (curl exit 28, timeout), localhost answered"
else ko "IP allow-list NOT enforced (curl exit $rc; cgroup $(stat -fc %T /sys/fs/cgroup)): systemd without the BPF firewall?"; fi

echo "== systemd-analyze security appliance (live)"
sec=$(systemd-analyze security appliance --no-pager 2>&1)
echo "$sec" | grep -vE '^\s*✓' | ev
grep -q 'Overall exposure level for appliance.service' <<< "$sec" && ok "$(grep -o 'Overall exposure level.*' <<< "$sec")" || ko "systemd-analyze security"

echo "== watchdog (WatchdogSec=30s): still running after 35 s, pets seen"
started=$(date -d "$(systemctl show -p ActiveEnterTimestamp --value appliance)" +%s)
wait_s=$((started + 36 - $(date +%s))); ((wait_s > 0 && wait_s <= 36)) && sleep "$wait_s"
wd=$(systemctl show -p ActiveState,SubState,NRestarts,WatchdogTimestamp,ActiveEnterTimestamp appliance); echo "$wd" | ev
grep -qx SubState=running <<< "$wd" && grep -qx NRestarts=0 <<< "$wd" && grep -q '^WatchdogTimestamp=.\+' <<< "$wd" \
  && ! journalctl -u appliance --no-pager -o cat | grep -qi 'watchdog timeout' \
  && ok "watchdog: running past WatchdogSec, last WATCHDOG=1 at $(systemctl show -p WatchdogTimestamp --value appliance)" || ko "watchdog"

echo "== systemctl stop appliance"
t0=$(date +%s.%N)
systemctl stop appliance 2>&1 | ev
t1=$(date +%s.%N)
st=$(systemctl show -p ActiveState,SubState,Result,ExecMainCode,ExecMainStatus appliance); echo "$st" | ev
echo "    stop took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
journalctl -u appliance --no-pager -o cat -n 8 | ev
grep -qx ActiveState=inactive <<< "$st" && grep -qx Result=success <<< "$st" && ok "stopped cleanly (Result=success)" || ko "stop"

echo "== journal: permission or seccomp errors"
journalctl --no-pager -o short-iso > /root/journal.txt 2>&1
bad=$(journalctl -u appliance --no-pager -o cat | grep -iE 'EPERM|operation not permitted|permission denied|SIGSYS|seccomp|bad system call|EACCES' || true)
bad_sys=$(grep -iE 'appliance.*(SIGSYS|seccomp|audit.*1326)|code=killed, status=31' /root/journal.txt || true)
if [[ -z $bad && -z $bad_sys ]]; then ok "no EPERM/permission/SIGSYS/seccomp lines in journalctl -u appliance ($(journalctl -u appliance --no-pager -o cat | wc -l) lines)"
else echo "$bad$bad_sys" | ev; ko "permission/seccomp errors"; fi
grep -iE 'bpf|firewall|IPAddress|cgroup' /root/journal.txt | grep -v 'Reached\|Listening' | head -5 | ev

echo "== $pass passed, $failed failed"
CHECKS

# --- Boot it: systemd as PID 1 ----------------------------------------------------
# cgroup: nspawn follows the host's hierarchy. SYSTEMD_LIVE_CGROUP=unified
# gives the container cgroup v2 (as on a Debian 12 host) where the host has
# cgroup2 mounted beside v1 (hybrid), legacy forces v1.
case ${SYSTEMD_LIVE_CGROUP:-unified} in
  unified) export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 ;;
  legacy) export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0 ;;
  auto) ;;
esac
# nspawn's own seccomp filter refuses bpf() in the container (EPERM), so its
# systemd would run without the BPF firewall and device controller ("Can't
# load kernel CGROUP SKB BPF program, BPF firewalling is not supported") and
# IPAddressDeny=/DevicePolicy= would not be enforced: allow bpf(), as on a host.
log "booting the container (systemd-nspawn --boot, cgroup ${SYSTEMD_LIVE_CGROUP:-unified}, bpf() allowed)"
systemd-nspawn -q -D "$R" --boot --machine="$machine" --register=no --keep-unit --private-network \
  --resolv-conf=off --timezone=off --console=read-only --system-call-filter=bpf ${SYSTEMD_LIVE_NSPAWN_ARGS:-} > "$live/boot.log" 2>&1 &
nspawn_pid=$!
leader=""
for _ in $(seq 120); do
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$live/boot.log"; fail "systemd-nspawn --boot exited"; }
  # The container's init is nspawn's child (CLONE_PARENT), named systemd once it execs.
  for p in $(pgrep -P "$nspawn_pid" || true); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]] && leader=$p
  done
  [[ -n $leader ]] && break
  sleep 0.25
done
[[ -n $leader ]] || { cat "$live/boot.log"; fail "no systemd in the container"; }
log "container PID 1 is host pid $leader; running the checks"
inside() { nsenter -t "$leader" -m -u -i -n -p -C -- "$@"; }
# A non-private client address on the container's loopback (the host's ip in
# the container's network namespace: minbase has no iproute2).
nsenter -t "$leader" -n ip addr add 198.51.100.7/32 dev lo
inside /bin/bash /root/checks.sh > "$results" 2>&1 || true
cp "$R/root/journal.txt" "$live/journal.txt" 2>/dev/null || true
cat "$results"

# --- Power off ----------------------------------------------------------------------
if [[ ${SYSTEMD_LIVE_KEEP:-0} != 1 ]]; then
  inside systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$nspawn_pid" 2>/dev/null; then log "container did not power off in 30 s"; else
    wait "$nspawn_pid" && log "container powered off (systemd-nspawn exit 0)" || log "systemd-nspawn exit $?"
  fi
  nspawn_pid=""
fi
summary=$(tail -1 "$results")
log "done in $(($(date +%s) - start)) s: ${summary#== } (results: $results, boot log: $live/boot.log)"
grep -q ' 0 failed' <<< "$summary"
