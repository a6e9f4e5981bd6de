#!/usr/bin/env bash
# fresh_check.sh — proves that the README's two commands work on a machine that has never seen
# shardtrain: makes a fresh Debian bookworm root (debootstrap --variant=minbase, from the Debian
# mirror this machine's own apt sources name), clones the repository's committed HEAD into it,
# and runs `scripts/demo.sh` then `scripts/test.sh` inside it (chroot, with /proc, /sys and /dev
# bound). Each command's time is printed; the script exits non-zero if either fails.
#
# Why a chroot and not this machine: a package installed here by hand (or left by an earlier
# session) hides a missing line in scripts/setup.sh; a minbase root has only what Debian calls
# essential. It is not part of .ci/run: it needs root, debootstrap and bind mounts, and with the
# package downloads it takes longer than the test suite itself (README: measured time).
#
# Usage: scripts/fresh_check.sh [ROOT_DIR]   (default /var/tmp/shardtrain-fresh; wiped first)
#        KEEP_ROOT=1 keeps the root afterwards for inspection.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-/var/tmp/shardtrain-fresh}"
[[ $(id -u) -eq 0 ]] || { echo "fresh_check: needs root (debootstrap, chroot, mount)" >&2; exit 2; }

# 1. The mirrors this machine uses (deb822 .sources or one-line .list), Debian's by default.
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
              /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '^(URIs:|deb )' || true)
mirror=$(grep -oE 'https?://[^ ]+/debian/?' <<<"$sources" | head -1 || true)
security=$(grep -oE 'https?://[^ ]+/debian-security/?' <<<"$sources" | head -1 || true)
mirror="${mirror:-http://deb.debian.org/debian}"
security="${security:-http://deb.debian.org/debian-security}"
echo "fresh_check: mirror $mirror, security $security, root $root"

command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# 2. The fresh root. Mounts are undone on every exit, before the root is removed.
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  # Mounts the tests made inside the root (iproute2 bind-mounts run/netns), deepest first.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r)
  [[ -n "${KEEP_ROOT:-}" ]] || rm -rf --one-file-system "$root"
}
trap cleanup EXIT
rm -rf --one-file-system "$root"
mkdir -p "$root"
t0=$SECONDS
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
  tail -20 "$root.debootstrap.log" >&2; exit 1; }
echo "fresh_check: debootstrap took $((SECONDS - t0)) s"

# apt inside the root sees the same mirrors, and the same Acquire settings this machine needs
# to reach them (e.g. a snapshot mirror whose Release files are past Valid-Until).
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
grep -lh '^Acquire::' /etc/apt/apt.conf.d/* 2>/dev/null | while read -r f; do
  cp "$f" "$root/etc/apt/apt.conf.d/"
done
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# pip inside the root (setup.sh's virtual environment) reaches PyPI as this machine does: its
# local certificate authorities (ca-certificates, which setup.sh installs, adds them to the
# bundle; e.g. a site's TLS proxy) and its pip.conf (index, proxy, certificate bundle).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  if [[ -x $root/usr/sbin/update-ca-certificates ]]; then
    chroot "$root" /usr/sbin/update-ca-certificates >/dev/null
  fi
fi
if [[ -f /etc/pip.conf ]]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
for m in proc sys dev; do
  mount --rbind "/$m" "$root/$m"
  mount --make-rslave "$root/$m"
  mounts+=("$root/$m")
done

# 3. The committed tree, as a user would clone it (git runs on this machine: minbase has none).
git clone -q "$repo" "$root/root/shardtrain"
echo "fresh_check: cloned $(git -C "$repo" rev-parse --short HEAD)"

# 4. The README's two commands, in a clean environment.
run_in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/shardtrain && $1"
}
status=0
for cmd in scripts/demo.sh scripts/test.sh; do
  t=$SECONDS
  if run_in_root "$cmd" >"$root.${cmd##*/}.log" 2>&1; then
    echo "fresh_check: $cmd passed in $((SECONDS - t)) s"
  else
    echo "fresh_check: $cmd FAILED after $((SECONDS - t)) s; its last lines:" >&2
    tail -30 "$root.${cmd##*/}.log" >&2
    status=1
  fi
  tail -3 "$root.${cmd##*/}.log"
done
echo "fresh_check: total $((SECONDS - t0)) s (logs: $root.*.log)"
exit $status
