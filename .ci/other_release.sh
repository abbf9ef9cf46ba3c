#!/usr/bin/env bash
# Run this repository's `make test` on the *other* Debian release in a debootstrap chroot.
#
# Debian 12 (bookworm, QGIS 3.22, Python 3.11) and Debian 13 (trixie, QGIS 3.40 LTR, Python 3.13) are
# both supported; CI runs the suite natively on whichever the machine has and here on the other one.
# The chroot is built once and reused (QUICKSAM_CHROOT_DIR, default /var/cache/quicksam/chroot-RELEASE);
# every run tests a fresh `git clone` of the committed HEAD, with ../shared beside it as in CI.
# Needs root (debootstrap, mounts). Usage: .ci/other_release.sh [RELEASE]
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
host="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
case "${1:-$host}" in
  bookworm) other=trixie ;;
  trixie) other=bookworm ;;
  *) echo "other_release: unknown host release '${host}'; pass bookworm or trixie as the release to pair with" >&2
     exit 2 ;;
esac
[ -n "${1:-}" ] && [ "$1" != "$host" ] && other="$1"
ROOT="${QUICKSAM_CHROOT_DIR:-/var/cache/quicksam/chroot-$other}"

if [ "$(id -u)" -ne 0 ]; then
  echo "other_release: needs root (debootstrap and bind mounts); run it as root or with sudo" >&2
  exit 2
fi

mirror() {
  # The Debian mirror the machine's apt already uses (deb822 or one-line sources).
  local uri
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  [ -n "$uri" ] || uri="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

build_chroot() {
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends debootstrap; }
  rm -rf "$ROOT.partial"
  mkdir -p "$(dirname "$ROOT")"
  echo "other_release: building a Debian $other chroot in $ROOT (once; reused afterwards)"
  debootstrap --variant=minbase \
    --include=ca-certificates,git,make,python3,python3-venv,python3-pip \
    "$other" "$ROOT.partial" "$(mirror)" > "$(dirname "$ROOT")/debootstrap-$other.log" 2>&1 \
    || { tail -20 "$(dirname "$ROOT")/debootstrap-$other.log" >&2; exit 1; }
  mv "$ROOT.partial" "$ROOT"
}

[ -x "$ROOT/usr/bin/python3" ] || build_chroot

# What pip and apt need to reach the registries as they do outside.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
for path in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/xdg/pip /root/.config/pip; do
  if [ -e "$path" ]; then
    mkdir -p "$ROOT$(dirname "$path")"
    rm -rf "${ROOT:?}$path"
    cp -a "$path" "$ROOT$path"
  fi
done

mounts=()
cleanup() {
  local i
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind SOURCE [ro]
  mkdir -p "$ROOT$1"
  mount --bind "$1" "$ROOT$1"
  mounts+=("$ROOT$1")
  if [ "${2:-}" = ro ]; then mount -o remount,bind,ro "$ROOT$1"; fi
}
for fs in /proc /sys /dev /dev/pts; do bind "$fs"; done
[ -d /opt/wheels ] && bind /opt/wheels ro

# A fresh clone of what is committed, with ../shared beside it as in CI.
WORK="$ROOT/work"
rm -rf "$WORK/repo" "$WORK/shared"
mkdir -p "$WORK"
git clone -q "$REPO" "$WORK/repo"
[ -d "$REPO/../shared" ] && cp -a "$REPO/../shared" "$WORK/shared"

# The venv and the install stamps live outside the clone so that they are reused between runs.
pass_env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
          SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt CI="${CI:-}")
while IFS= read -r var; do pass_env+=("$var"); done < <(env | grep -E '^PIP_' || true)
echo "other_release: make test on Debian $other ($(cat "$ROOT/etc/debian_version")) in $ROOT"
chroot "$ROOT" env -i "${pass_env[@]}" bash -c \
  "cd /work/repo && make test VENV=/opt/quicksam/venv STAMPS=/opt/quicksam/stamps"
