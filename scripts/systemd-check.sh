#!/usr/bin/env bash
# Checks the systemd unit (make systemd-check):
#  1. the directives the appliance relies on are there (notify, watchdog,
#     restart limits, state directory, credential by name, SoftHSM);
#  2. `systemd-analyze security --offline=true` rates the unit, and the unit
#     with the hardware-HSM drop-in example, at most MAX_EXPOSURE (1.5);
#  3. `systemd-analyze verify` passes on the unit as the package installs it
#     (it also checks that ExecStart's binary exists): in a root unpacked
#     from the .deb, with the host's own units and /bin/kill beside it as on
#     a real system.
# Usage: scripts/systemd-check.sh [PACKAGE.deb]   (default: the newest in dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/appliance.service
dropin=systemd/hsm-device.conf.example
max=${MAX_EXPOSURE:-1.5}
command -v systemd-analyze >/dev/null || { echo "systemd-check: systemd-analyze missing (make deps)"; exit 1; }
fail() { echo "systemd-check: $*" >&2; exit 1; }

for d in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=30s' 'Restart=on-failure' 'StartLimitIntervalSec=300' \
  'StartLimitBurst=5' 'StateDirectory=appliance' 'User=appliance' 'LoadCredentialEncrypted=hsm-pin' \
  'Environment=SOFTHSM2_CONF=/etc/appliance/softhsm2.conf' 'ReadWritePaths=/var/lib/appliance' \
  'ExecStart=/usr/bin/appliance serve --config /etc/appliance/appliance.yaml'; do
  grep -qxF "$d" "$unit" || fail "$unit lacks $d"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The exposure score: systemd-analyze prints "… level for appliance.service: 1.0 OK".
score() { sed -n 's/.*Overall exposure level for appliance.service: \([0-9.]*\).*/\1/p' "$1"; }
threshold=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
systemd-analyze security --offline=true --threshold="$threshold" --no-pager "$unit" > "$work/unit.txt" 2>&1 \
  || { cat "$work/unit.txt"; fail "$unit rates above $max"; }
s_unit=$(score "$work/unit.txt")
[[ -n $s_unit ]] || { cat "$work/unit.txt"; fail "no exposure score"; }

# The package's files, unpacked; the host's units for the default
# dependencies (sysinit.target, …) and /bin/kill (ExecReload=).
deb=${1:-$(ls -t dist/appliance_*.deb 2>/dev/null | head -1 || true)}
[[ -n $deb && -f $deb ]] || fail "no package in dist/ (make deb)"
root=$work/root
dpkg-deb -x "$deb" "$root"
cmp -s "$root/usr/lib/systemd/system/appliance.service" "$unit" || fail "$deb has a different unit than $unit (make deb)"
[[ -x $root/usr/bin/appliance ]] || fail "$deb has no /usr/bin/appliance"
cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
cp /usr/bin/kill "$root/usr/bin/kill"
ln -s usr/bin "$root/bin"
systemd-analyze verify --root="$root" appliance.service > "$work/verify.txt" 2>&1 \
  || { cat "$work/verify.txt"; fail "verify failed"; }
[[ ! -s $work/verify.txt ]] || { cat "$work/verify.txt"; fail "verify warned"; }

# The same with the hardware-HSM drop-in, every line of it enabled.
mkdir -p "$root/etc/systemd/system/appliance.service.d"
sed -E 's/^#([A-Z][A-Za-z]+=)/\1/' "$dropin" > "$root/etc/systemd/system/appliance.service.d/hsm-device.conf"
systemd-analyze verify --root="$root" appliance.service > "$work/verify-dropin.txt" 2>&1 \
  || { cat "$work/verify-dropin.txt"; fail "verify with $dropin failed"; }
[[ ! -s $work/verify-dropin.txt ]] || { cat "$work/verify-dropin.txt"; fail "verify with $dropin warned"; }
systemd-analyze security --offline=true --root="$root" --threshold="$threshold" --no-pager appliance.service \
  > "$work/dropin.txt" 2>&1 || { cat "$work/dropin.txt"; fail "unit + $dropin rates above $max"; }
s_dropin=$(score "$work/dropin.txt")

echo "systemd-check: exposure $s_unit (with the hardware-HSM drop-in: $s_dropin; limit $max); verify OK ($(basename "$deb"))"
