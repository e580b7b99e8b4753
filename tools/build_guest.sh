#!/usr/bin/env bash
# Build colonet's tiny QEMU guest from Debian packages, cached between runs:
#   <dir>/vmlinuz          the Debian kernel (linux-image-amd64)
#   <dir>/initramfs.cpio.gz busybox-static, the virtio NIC modules, the counter service
# <dir> is $COLONET_GUEST_DIR or .cache/guest in the repository. Prints <dir>.
# Needs the packages that tools/bootstrap.sh --qemu installs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${COLONET_GUEST_DIR:-$repo/.cache/guest}
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "build_guest: no /boot/vmlinuz-* (install linux-image-amd64)" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
stamp=$(cat "$0" "$repo/tools/guest/init" "$repo/tools/guest/counter_service.c" | sha256sum | cut -c1-16)-$kver
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for tool in sh ip insmod mount sed echo cat sleep nc; do ln -s busybox "$root/bin/$tool"; done
for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_legacy_dev \
         drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net; do
    src=/lib/modules/$kver/kernel/$m.ko
    if [ -f "$src" ]; then cp "$src" "$root/lib/modules/"; else xz -dc "$src.xz" > "$root/lib/modules/$(basename "$m").ko"; fi
done
gcc -static -O2 -Wall -o "$root/bin/counter_service" "$repo/tools/guest/counter_service.c"
install -m 0755 "$repo/tools/guest/init" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz.tmp"
cp "$kernel" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$stamp" > "$out/stamp"
echo "$out"
