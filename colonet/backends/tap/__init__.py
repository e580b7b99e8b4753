"""The tap backend: every Ethernet frame a netdev carries (see backend.py)."""

from colonet.backends.registry import BackendKind
from colonet.backends.tap import tc_steering
from colonet.backends.tap.backend import TapBackend, TapBackendConfig
from colonet.buffer.backend import Backend, BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.net.links import describe_netdev


def open_backend(netdev: str, limits: BufferLimits, options: BackendOptions) -> Backend:
    config = TapBackendConfig(batch_release=options.batch_release)
    return TapBackend(describe_netdev(netdev), config, limits.max_held_packets)


KIND = BackendKind(
    name="tap",
    summary="every Ethernet frame (eBPF redirect to a capture tap)",
    open=open_backend,
    cleanup=tc_steering.cleanup,
)
