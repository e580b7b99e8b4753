#!/usr/bin/env bash
# Install everything colonet needs, idempotently: Debian packages, then a
# virtual environment at .venv/ with colonet (and its test extra) in it.
# Sourced or run by tools/demo.sh and tools/test.sh; safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

apt_packages=(python3 python3-venv python3-dev gcc make pkg-config
              libnetfilter-queue-dev iptables iproute2 util-linux tcpdump
              # the QEMU guest (colonet demo --guest qemu, tests -m qemu):
              # emulator, a Debian kernel and busybox for tools/build_guest.sh
              qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils libc6-dev openssl)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: colonet needs Python >= 3.11, $python is $("$python" -V 2>&1)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# Reinstall only when the project's metadata changed since the last install.
stamp=.venv/.colonet-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/colonet ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi

# The helper preloaded into QEMU to track its RAM's dirty pages (cached).
bash tools/qemu_dirty/build.sh >/dev/null
