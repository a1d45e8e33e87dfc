#!/usr/bin/env bash
# Installs the .deb into an empty root with the real dpkg (make deb-test):
#   dpkg --root=ROOT --force-script-chrootless --force-depends
# Maintainer scripts then run on this host with DPKG_ROOT=ROOT, as they do in
# chrootless bootstraps; they honour it (systemd-sysusers/-tmpfiles --root).
# Checks files, owners, modes, conffiles, `appliance version`, that the
# maintainer scripts never start, enable or restart the service, an upgrade
# that keeps a changed conffile, remove and purge, and the maintainer scripts'
# fallback without systemd's tools.
# Usage: scripts/deb-test.sh [PACKAGE.deb]   (default: the newest in dist/)
#   VERSION: the version `appliance version` must print (make passes it).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(ls -t dist/appliance_*.deb 2>/dev/null | head -1 || true)}
[[ -n $deb && -f $deb ]] || { echo "deb-test: no package in dist/ (make deb)"; exit 1; }
if [[ $(id -u) -ne 0 ]]; then # dpkg --root and chown need root
  command -v sudo >/dev/null || { echo "deb-test: needs root"; exit 1; }
  exec sudo env VERSION="${VERSION:-}" "$0" "$deb"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
R=$work/root
fail() { echo "deb-test: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); }

new_root() { # DIR: an empty dpkg database; root in the account databases (as base-passwd has it)
  mkdir -p "$1"/var/lib/dpkg/{info,updates,triggers} "$1/etc"
  touch "$1"/var/lib/dpkg/{status,available}
  echo 'root:x:0:0:root:/root:/bin/sh' > "$1/etc/passwd"
  echo 'root:x:0:' > "$1/etc/group"
  echo 'root:*:19000:0:99999:7:::' > "$1/etc/shadow"
  echo 'root:*::' > "$1/etc/gshadow"
  chmod 0640 "$1/etc/shadow" "$1/etc/gshadow"
}
dpkg_root() {
  dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@" > "$work/dpkg.log" 2>&1 \
    || { cat "$work/dpkg.log"; fail "dpkg $*"; }
}
# expect PATH MODE OWNER GROUP (owner/group by name, resolved in the root's own databases)
id_in() { awk -F: -v n="$2" '$1 == n { print $3 }' "$R/etc/$1"; }
expect() {
  local p=$R$1 want got
  [[ -e $p ]] || fail "missing $1"
  want="$2 $(id_in passwd "$3"):$(id_in group "$4")"
  got=$(stat -c '%a %u:%g' "$p")
  [[ $got == "$want" ]] || fail "$1: mode/owner $got, want $want ($2 $3:$4)"
  ok
}

# --- The package itself ----------------------------------------------------
[[ $(dpkg-deb -f "$deb" Package) == appliance ]] || fail "package name"
dpkg-deb -e "$deb" "$work/control"
printf '/etc/appliance/appliance.yaml\n/etc/appliance/softhsm2.conf\n' > "$work/conffiles.want"
diff -u "$work/conffiles.want" <(sort "$work/control/conffiles") || fail "control conffiles"
ok
for s in postinst prerm postrm; do
  [[ -x $work/control/$s ]] || fail "no $s"
  sh -n "$work/control/$s" || fail "$s: syntax"
  # Every systemctl the script runs (heredocs, echo text and comments aside).
  verbs=$(awk '/<<.?EOF/ { h = 1; next } h && /^EOF/ { h = 0; next } h { next }
    /^[[:space:]]*(#|echo|")/ { next } { print }' "$work/control/$s" | grep -oE 'systemctl +[a-z-]+' | awk '{ print $2 }' | sort -u | xargs)
  case $s in
    postinst) allowed="daemon-reload is-active" ;;
    prerm) allowed="is-active stop" ;;
    postrm) allowed="daemon-reload" ;;
  esac
  for v in $verbs; do [[ " $allowed " == *" $v "* ]] || fail "$s runs systemctl $v"; done
  ! grep -qE 'deb-systemd-invoke|invoke-rc.d|service appliance|systemctl +(enable|start|restart|try-restart|reload-or-restart)' \
    <(grep -vE '^[[:space:]]*(#|echo|")' "$work/control/$s" | awk '/<<.?EOF/ { h = 1; next } h && /^EOF/ { h = 0; next } !h') \
    || fail "$s starts or enables the service"
  ok
done

# --- Install into an empty root --------------------------------------------
new_root "$R"
dpkg_root -i "$deb"
[[ $(dpkg-query --root="$R" -W -f='${Status}' appliance) == "install ok installed" ]] || fail "not installed"
ok
grep -q 'NOT enabled and NOT started' "$work/dpkg.log" || { cat "$work/dpkg.log"; fail "no next-steps message"; }
# The user: a system account without a login, at home in its state directory.
line=$(grep '^appliance:' "$R/etc/passwd") || fail "no user appliance"
IFS=: read -r _ _ uid gid _ home shell <<< "$line"
((uid > 0 && uid < 1000)) || fail "appliance uid $uid is not a system uid"
[[ $home == /var/lib/appliance && $shell == /usr/sbin/nologin ]] || fail "user appliance: $line"
[[ $(id_in group appliance) == "$gid" ]] || fail "group appliance"
ok
expect /usr/bin/appliance 755 root root
expect /usr/lib/systemd/system/appliance.service 644 root root
expect /usr/lib/sysusers.d/appliance.conf 644 root root
expect /usr/lib/tmpfiles.d/appliance.conf 644 root root
expect /etc/appliance 750 root appliance
expect /etc/appliance/tls 750 root appliance
expect /etc/appliance/appliance.yaml 640 root appliance
expect /etc/appliance/softhsm2.conf 640 root appliance
expect /var/lib/appliance 700 appliance appliance
expect /var/lib/appliance/softhsm 700 appliance appliance
expect /var/lib/appliance/softhsm/tokens 700 appliance appliance
for f in README.Debian README.md OPERATIONS.md API.md SECURITY.md RECOVERY.md \
  examples/credentials.example examples/hsm-device.conf.example examples/appliance.yaml; do
  expect "/usr/share/doc/appliance/$f" 644 root root
done
cmp -s "$R/usr/lib/systemd/system/appliance.service" systemd/appliance.service || fail "unit differs from systemd/"
grep -qx 'directories.tokendir = /var/lib/appliance/softhsm/tokens' "$R/etc/appliance/softhsm2.conf" || fail "softhsm2.conf tokendir"
grep -q 'module-path=/usr/safenet/lunaclient/lib/libCryptoki2_64.so' "$R/etc/appliance/appliance.yaml" || fail "vendor module-path comment"
ok
# Nothing enabled: no wants links anywhere in the root.
[[ -z $(find "$R" -path '*.wants/appliance.service') ]] || fail "the service was enabled"
# dpkg registered the conffiles (with their hashes).
dpkg-query --root="$R" -W -f='${Conffiles}\n' appliance | awk 'NF { print $1 }' | sort | diff -u "$work/conffiles.want" - \
  || fail "installed conffiles"
ok

# The installed binary runs and says its version; the shipped configuration parses strictly.
out=$("$R/usr/bin/appliance" version) || fail "appliance version failed"
if [[ -n ${VERSION:-} ]]; then
  [[ $out == "appliance $VERSION" ]] || fail "appliance version: '$out', want 'appliance $VERSION'"
else
  [[ $out =~ ^appliance\ [^[:space:]]+$ ]] || fail "appliance version: '$out'"
fi
"$R/usr/bin/appliance" config check "$R/etc/appliance/appliance.yaml" > /dev/null || fail "config check of the shipped configuration"
ok

# --- Upgrade: a newer package whose appliance.yaml changed, over a locally
# edited one. dpkg keeps the operator's file (--force-confold: no prompt) and
# puts the new one beside it; owners and modes stay. -----------------------
echo "# edited by the operator" >> "$R/etc/appliance/appliance.yaml"
dpkg-deb -R "$deb" "$work/next"
v=$(dpkg-deb -f "$deb" Version)
sed -i "s/^Version: .*/Version: $v+next/" "$work/next/DEBIAN/control"
echo "# changed upstream" >> "$work/next/etc/appliance/appliance.yaml"
dpkg-deb -Znone -b "$work/next" "$work/next.deb" > /dev/null
touch "$R/var/lib/appliance/appliance.db"
chown "$uid:$gid" "$R/var/lib/appliance/appliance.db"
dpkg_root --force-confold -i "$work/next.deb"
[[ $(dpkg-query --root="$R" -W -f='${Version}' appliance) == "$v+next" ]] || fail "upgrade"
grep -q 'edited by the operator' "$R/etc/appliance/appliance.yaml" || fail "upgrade overwrote the edited appliance.yaml"
grep -q 'changed upstream' "$R/etc/appliance/appliance.yaml.dpkg-dist" || fail "no appliance.yaml.dpkg-dist"
cmp -s "$R/etc/appliance/softhsm2.conf" "$work/next/etc/appliance/softhsm2.conf" || fail "softhsm2.conf changed"
expect /etc/appliance 750 root appliance
expect /etc/appliance/appliance.yaml 640 root appliance
expect /etc/appliance/softhsm2.conf 640 root appliance
expect /var/lib/appliance 700 appliance appliance
expect /var/lib/appliance/appliance.db 644 appliance appliance
[[ -z $(find "$R" -path '*.wants/appliance.service') ]] || fail "the upgrade enabled the service"
ok

# --- Remove keeps configuration and state; purge keeps only the state ------
dpkg_root -r appliance
[[ ! -e $R/usr/bin/appliance && ! -e $R/usr/lib/systemd/system/appliance.service ]] || fail "remove left the binary or unit"
[[ -f $R/etc/appliance/appliance.yaml && -d $R/var/lib/appliance/softhsm/tokens ]] || fail "remove took configuration or state"
ok
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -s /usr/lib/systemd/system/appliance.service "$R/etc/systemd/system/multi-user.target.wants/appliance.service"
dpkg_root --purge appliance
[[ ! -e $R/etc/appliance ]] || fail "purge left /etc/appliance: $(ls -A "$R/etc/appliance")"
[[ ! -L $R/etc/systemd/system/multi-user.target.wants/appliance.service ]] || fail "purge left the enablement link"
[[ -f $R/var/lib/appliance/appliance.db ]] || fail "purge deleted the state (database, token)"
grep -q '^appliance:' "$R/etc/passwd" || fail "purge deleted the user"
[[ -z $(dpkg-query --root="$R" -W -f='${Status}' appliance 2>/dev/null | grep -v not-installed) ]] || fail "still installed"
ok

# --- The maintainer scripts without systemd-sysusers/-tmpfiles (useradd,
# install): same user, directories, owners and modes. ----------------------
R=$work/fallback
new_root "$R"
mkdir -p "$work/shim"
dpkg-deb -x "$deb" "$R"
for t in sh awk cut install chown chmod mkdir cat useradd getent; do
  p=$(command -v "$t") || fail "fallback test needs $t"
  ln -s "$p" "$work/shim/$t"
done
env -i PATH="$work/shim" DPKG_ROOT="$R" sh "$work/control/postinst" configure "" > "$work/fallback.log" 2>&1 \
  || { cat "$work/fallback.log"; fail "postinst without systemd tools"; }
line=$(grep '^appliance:' "$R/etc/passwd") || fail "fallback: no user appliance"
IFS=: read -r _ _ uid _ _ home shell <<< "$line"
((uid > 0 && uid < 1000)) && [[ $home == /var/lib/appliance && $shell == /usr/sbin/nologin ]] || fail "fallback user: $line"
expect /etc/appliance 750 root appliance
expect /etc/appliance/tls 750 root appliance
expect /etc/appliance/appliance.yaml 640 root appliance
expect /etc/appliance/softhsm2.conf 640 root appliance
expect /var/lib/appliance 700 appliance appliance
expect /var/lib/appliance/softhsm/tokens 700 appliance appliance
# Run twice: idempotent.
env -i PATH="$work/shim" DPKG_ROOT="$R" sh "$work/control/postinst" configure "1.0" > "$work/fallback.log" 2>&1 \
  || { cat "$work/fallback.log"; fail "postinst without systemd tools, second run"; }
[[ $(grep -c '^appliance:' "$R/etc/passwd") == 1 ]] || fail "fallback: user created twice"
ok

echo "deb-test: $checks checks passed ($(basename "$deb"): dpkg --root install, owners/modes, conffiles, appliance version, upgrade, remove, purge, fallback)"
