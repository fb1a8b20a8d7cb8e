#!/usr/bin/env bash
# Build the tillbox SD-card image from Debian packages (as root, on Debian):
#   image/build.sh arm64 build/image/tillbox-arm64.img    Raspberry Pi 3, 4, 400, CM4
#   image/build.sh amd64 build/image/tillbox-amd64.img    the same recipe for QEMU tests
# Extra options go to `python -m image.build build` (--update-key PEM, --data-mib N, --no-xz, ...).
# Installs the host tools it needs (mmdebstrap, mtools, ...; qemu-user-static when ARCH is foreign).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: image/build.sh amd64|arm64 OUT.img [options]"
arch=${1:?$usage}
out=${2:?$usage}
shift 2
if [[ $(id -u) -ne 0 ]]; then
    echo "image/build.sh: run as root (mmdebstrap --mode=root and chroot need it)" >&2
    exit 1
fi

tools=(mmdebstrap mtools dosfstools fdisk e2fsprogs xz-utils qemu-system-x86 mosquitto)
host=$(dpkg --print-architecture)
if [[ $arch != "$host" ]]; then
    tools+=(qemu-user-static binfmt-support)
fi
missing=()
for pkg in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing build tools: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ $arch != "$host" ]]; then
    # A foreign root runs its maintainer scripts under qemu-user through binfmt_misc.
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    case $arch in arm64) emu=qemu-aarch64 ;; amd64) emu=qemu-x86_64 ;; esac
    update-binfmts --enable "$emu" >/dev/null 2>&1 || true
    [[ -e /proc/sys/fs/binfmt_misc/$emu ]] || { echo "image/build.sh: binfmt for $emu is not registered" >&2; exit 1; }
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/python -m image.build build "$arch" "$out" "$@"
