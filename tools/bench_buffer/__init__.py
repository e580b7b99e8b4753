"""Benchmark colonet's buffer filters in throwaway namespaces.

Run from the repository root, as root:

    .venv/bin/python tools/bench_buffer.py [--link veth|tap|both]
        [--backend nfqueue|tap|both] [--quick] [--rate PPS] [--json]

Everything runs in namespaces built by `colonet.net.topology.Topology` (guest,
host, client); the only traffic is between those namespaces. Per link and
filter backend it measures, in one run, so every ratio compares numbers
taken on the same machine minutes apart:

1. UDP throughput guest -> client (64-byte payloads, a blasting sender in the
   guest ns, a counting receiver in the client ns, both separate processes):
   (a) no filter, (b) filter + checkpoint/commit every 10 ms (batch release:
   one batch verdict on nfqueue, a TX ring on the tap backend), (c) the same
   with --no-batch-release (alias --no-batch-verdict); (d)/(e) the same as
   (a)/(b) for a longer stream than the filter's 50,000-packet limit.
2. Release latency: 10,000 packets held in one epoch; time from sending
   `commit` to the last packet reaching the client socket.
3. Memory per held packet: filter-process RSS and kernel slab deltas.
4. RTT through an attached filter (UDP echo in the guest), and the cost of
   one empty checkpoint+commit over the control socket.

Progress goes to stderr; the result is a Markdown table (or JSON with
--json) on stdout. Every namespace, process and rule it creates is removed
in `finally` blocks.

Modules: `cli` (arguments, one link's run, the machine description),
`throughput`, `latency`, `memory` and `rtt` (one measurement each, with the
table rows it produces), `workers` (the sender/receiver/echo processes),
`filterctl` (the filter process, the commit loop, filling and draining it),
`counters` (kernel and process counters), `results` (rows, parameters, the
Markdown table), `common` (constants, logging) and `colonet_api` (the only
module that imports from colonet).
"""
