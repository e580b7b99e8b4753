"""The secondary's checkpoint engine: stage, verify, acknowledge, apply.

A checkpoint is acknowledged (VMSTATE_RECEIVED, which lets the primary
release the epoch) only after it is complete and verified in the staging
area; it is applied to the RAM cache whole, then VMSTATE_LOADED follows.
A connection that breaks mid-transfer leaves the cache on the last applied
checkpoint (DESIGN invariant 5).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from colonet.checkpoint.messages import (
    CheckpointBodyComplete,
    CheckpointRequested,
    CheckpointStarted,
    HeartbeatReceived,
    HelloReceived,
    ShutdownReceived,
)
from colonet.checkpoint.pages import CheckpointFormatError
from colonet.checkpoint.protocol import SecondaryProtocol
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.transport import Channel, PeerLost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondaryExit:
    """Why serving ended: the primary shut the guest down, or was lost."""

    reason: str  # "shutdown", "heartbeat", "closed", "error"
    detail: str
    last_applied: int | None


class SecondaryEngine:
    def __init__(
        self,
        channel: Channel,
        guest_name: str = "secondary",
        on_applied: Callable[[int, RamCache], None] | None = None,
    ) -> None:
        if not isinstance(channel.proto, SecondaryProtocol):
            raise TypeError("the secondary engine needs a SecondaryProtocol channel")
        self.channel = channel
        self.proto: SecondaryProtocol = channel.proto
        self.guest_name = guest_name
        self.on_applied = on_applied
        self.cache: RamCache | None = None
        self.applied = 0

    def serve(self) -> SecondaryExit:
        try:
            while True:
                event = self.channel.next_event()
                if isinstance(event, HelloReceived):
                    hello = event.hello
                    self.cache = RamCache(hello.page_size, hello.ram_pages)
                    self.proto.send_hello(hello.page_size, hello.ram_pages, self.guest_name)
                elif isinstance(event, CheckpointRequested):
                    self.proto.send_reply(event.epoch)
                elif isinstance(event, CheckpointBodyComplete):
                    self._take(event)
                elif isinstance(event, ShutdownReceived):
                    return SecondaryExit("shutdown", event.reason, self._last())
                elif isinstance(event, CheckpointStarted | HeartbeatReceived):
                    pass
                self.channel.flush()
        except PeerLost as exc:
            log.warning(
                "primary lost (%s): %s; staying on checkpoint %s", exc.reason, exc, self._last()
            )
            return SecondaryExit(exc.reason, str(exc), self._last())

    def _take(self, event: CheckpointBodyComplete) -> None:
        assert self.cache is not None
        try:
            staged = self.cache.stage(event.body)
        except CheckpointFormatError as exc:
            raise PeerLost("error", f"checkpoint {event.epoch} is malformed: {exc}") from exc
        self.proto.send_received(event.epoch, hashlib.sha256(event.body).digest())
        self.channel.flush()
        self.cache.apply(staged)
        self.proto.send_loaded(event.epoch)
        self.applied += 1
        if self.applied == 1:
            self.proto.send_ready()
        if self.on_applied:
            self.on_applied(event.epoch, self.cache)

    def _last(self) -> int | None:
        return self.cache.applied_epoch if self.cache else None
