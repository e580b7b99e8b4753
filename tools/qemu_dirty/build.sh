#!/usr/bin/env bash
# Build the helper colonet preloads into QEMU to track its RAM's dirty pages
# (tools/qemu_dirty/uffd_wp_shim.c), cached by the source's content hash:
#   <dir>/uffd_wp_shim.so
# <dir> is $COLONET_SHIM_DIR or .cache/qemu_dirty in the repository. Prints
# the path of the .so. Needs gcc and libc6-dev (tools/bootstrap.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${COLONET_SHIM_DIR:-$repo/.cache/qemu_dirty}
flags=(-shared -fPIC -O2 -Wall -Wextra -Werror)
stamp=$( (cat "$0" "$here/uffd_wp_shim.c"; echo "${flags[*]}"; gcc -dumpfullversion) | sha256sum | cut -c1-16)
so=$out/uffd_wp_shim.so
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$so" ]; then
    echo "$so"
    exit 0
fi
mkdir -p "$out"
gcc "${flags[@]}" -o "$so.tmp" "$here/uffd_wp_shim.c"
mv "$so.tmp" "$so"
echo "$stamp" > "$out/stamp"
echo "$so"
