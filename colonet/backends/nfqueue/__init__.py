"""The nfqueue backend: IP packets only, held in the kernel (see backend.py)."""

from colonet.backends.nfqueue import iptables
from colonet.backends.nfqueue.backend import NfqueueBackend, NfqueueConfig
from colonet.backends.registry import BackendKind
from colonet.buffer.backend import Backend, BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.net.links import describe_netdev


def open_backend(netdev: str, limits: BufferLimits, options: BackendOptions) -> Backend:
    config = NfqueueConfig(
        batch_verdicts=options.batch_release, retain_payloads=options.retain_payloads
    )
    return NfqueueBackend(describe_netdev(netdev), limits.max_held_packets, config)


KIND = BackendKind(
    name="nfqueue",
    summary="IP packets only (iptables NFQUEUE, held in the kernel)",
    open=open_backend,
    cleanup=iptables.cleanup,
)
