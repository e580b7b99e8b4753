#!/usr/bin/env bash
# Fails (exit 1) if colonet left anything on this host: a namespace named
# like a test run's (cn<pid>x<n>...), an iptables rule tagged colonet, a
# colonet capture tap or release veth, a stale filter on a root-namespace
# link, a netdev lock file under /run/colonet, a private temp dir or RAM file,
# or a QEMU it started. Run after the test suite (.ci/run does, twice).
set -u
bad=0
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cn[0-9]+x' || true)
[ -n "$ns" ] && { echo "leaked namespaces: $ns"; bad=1; }
for tool in iptables-save ip6tables-save; do
    n=$($tool 2>/dev/null | grep -c colonet || true)
    [ "$n" -gt 0 ] && { echo "$n $tool rule(s) tagged colonet"; bad=1; }
done
links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^cn[cr][0-9]' || true)
[ -n "$links" ] && { echo "leaked colonet links: $links"; bad=1; }
locks=$(ls "${COLONET_RUN_DIR:-/run/colonet}" 2>/dev/null | grep -E '\.lock$' || true)
[ -n "$locks" ] && { echo "leaked colonet lock files: $locks"; bad=1; }
if pgrep -f 'qemu-system-x86_64 .*colonet.ip=' >/dev/null; then
    echo "a QEMU guest of colonet's is still running"; bad=1
fi
if pgrep -f 'colonet\.net\.tap_relay' >/dev/null; then
    echo "a tap relay of colonet's is still running"; bad=1
fi
dirs=$(ls -d "${TMPDIR:-/tmp}"/colonet-primary-* "${TMPDIR:-/tmp}"/colonet-qemu-* \
           "${TMPDIR:-/tmp}"/colonet-tracked-* /dev/shm/colonet-* 2>/dev/null || true)
[ -n "$dirs" ] && { echo "leaked colonet temp dirs/files: $(echo $dirs | wc -w)"; bad=1; }
[ "$bad" -eq 0 ] && echo "host clean: no namespace, rule, link, lock file, temp dir or process of colonet's left"
exit "$bad"
