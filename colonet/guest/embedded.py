"""The embedded guest: RAM, a counter service on UDP and a RAM workload.

It plays a VM for the engine and the demo: `pause()` stops every thread
that touches guest state (they run under one execution lock, as vCPUs
would under a stopped VM), its RAM tracks dirty pages, and its service
answers clients from inside a network namespace, so replies cross a
buffered netdev.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from colonet.errors import UnknownNetdevError, UsageError
from colonet.guest.base import DeviceSection
from colonet.guest.counter_store import CounterStore
from colonet.guest.ram import PAGE_SIZE, GuestRam
from colonet.guest.registry import GuestKind, GuestSettings
from colonet.net.announce import announce
from colonet.net.links import require_netdev, set_link_up
from colonet.net.netns import netns_path, socket_in_netns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedGuestConfig:
    ram_pages: int = 4096  # 16 MiB
    service_ip: str = "0.0.0.0"
    service_port: int = 7070
    netns: str | None = None  # where the service socket lives
    netdevs: tuple[str, ...] = ()  # host-side devices carrying its traffic
    # The guest's own NIC in `netns`: brought up and announced at activation
    # (a standby NIC on the secondary stays down until the guest runs there).
    nic: str | None = None
    workload_pages_per_s: int = 200  # background RAM writes

    def __post_init__(self) -> None:
        if self.ram_pages < 32:
            raise ValueError(f"ram_pages {self.ram_pages} is under 32")
        if not 0 <= self.service_port <= 65535:
            raise ValueError(f"service_port {self.service_port} is not a port")
        if self.workload_pages_per_s < 0:
            raise ValueError("workload_pages_per_s must be >= 0")


class EmbeddedGuest:
    def __init__(self, config: EmbeddedGuestConfig) -> None:
        self.config = config
        self.page_size = PAGE_SIZE
        self.ram_pages = config.ram_pages
        self.ram = GuestRam(config.ram_pages)
        self.store = CounterStore(self.ram)
        self.served = 0
        self._exec = threading.Lock()  # held by the guest's threads per step
        self._paused = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self._rng = random.Random(1)

    # -- the guest interface ---------------------------------------------

    def pause(self) -> None:
        if not self._paused:
            self._exec.acquire()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._exec.release()

    def ram_view(self) -> memoryview:
        return self.ram.view()

    def collect_dirty(self) -> list[int]:
        return self.ram.collect_dirty()

    def save_devices(self) -> list[DeviceSection]:
        service = json.dumps({"served": self.served}).encode()
        return [DeviceSection("service", 1, service)]

    def load_devices(self, sections: Sequence[DeviceSection]) -> None:
        for section in sections:
            if section.name == "service":
                if section.version != 1:
                    raise ValueError(f"service section version {section.version} is not 1")
                self.served = json.loads(section.data)["served"]

    def netdevs(self) -> list[str]:
        return list(self.config.netdevs)

    def restore(self, ram: memoryview, sections: Sequence[DeviceSection]) -> None:
        """Load a checkpoint's RAM and devices (the secondary, before activate)."""
        self.ram.load(ram)
        self.load_devices(sections)

    def takeover_details(self) -> dict[str, Any]:
        return {"guest_counter": self.counter}

    @property
    def counter(self) -> int:
        """The service's counter, read from guest RAM."""
        return self.store.value

    @property
    def service_address(self) -> tuple[str, int]:
        if self._sock is None:
            raise RuntimeError("the guest is not active")
        return self._sock.getsockname()[:2]

    def activate(self) -> None:
        """Start the service and the workload (the primary's start, or a takeover)."""
        if self.config.nic:
            set_link_up(self.config.netns, self.config.nic)
        self._sock = socket_in_netns(self.config.netns, socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.config.service_ip, self.config.service_port))
        self._sock.settimeout(0.2)
        self._spawn(self._serve, "guest-service")
        if self.config.workload_pages_per_s:
            self._spawn(self._workload, "guest-workload")
        if self.config.nic:
            announce(self.config.netns, self.config.nic)

    def shutdown(self) -> None:
        self._stopping.set()
        self.resume()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.config.nic and self._sock is not None:
            # A powered-off guest's NIC is silent: its namespace's kernel
            # must not answer ARP or send errors in its name any more.
            with contextlib.suppress(OSError, UnknownNetdevError):
                set_link_up(self.config.netns, self.config.nic, up=False)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.ram.close()

    # -- the guest's own threads -----------------------------------------

    def _spawn(self, target, name: str) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                data, peer = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._exec:
                if self._stopping.is_set():
                    return  # shut down while paused: a stopped guest emits nothing more
                reply = self.store.handle(data)
                if reply is not None:
                    self.served += 1
                    # Sent while still "running": a paused guest emits nothing.
                    self._sock.sendto(reply, peer)

    def _workload(self) -> None:
        period = 1.0 / self.config.workload_pages_per_s
        while not self._stopping.wait(period):
            with self._exec:
                if self._stopping.is_set():
                    return
                page = self._rng.randrange(32, self.ram_pages)
                self.ram.write(page * self.page_size, self._rng.randbytes(64))


def _build(settings: GuestSettings) -> EmbeddedGuest:
    return EmbeddedGuest(
        EmbeddedGuestConfig(
            ram_pages=settings.ram_pages or settings.ram_mib * 256,
            service_ip=settings.service_ip,
            service_port=settings.service_port,
            netns=settings.netns,
            netdevs=settings.netdevs,
            nic=settings.nic,
        )
    )


def _check(settings: GuestSettings) -> None:
    if settings.nic:
        require_netdev(settings.netns, settings.nic)
    elif settings.netns and not os.path.exists(netns_path(settings.netns)):
        raise UsageError(f"--guest-netns {settings.netns!r}: no such network namespace")


KIND = GuestKind(
    name="embedded",
    summary="a UDP counter service whose state lives in guest RAM (colonet's own)",
    build=_build,
    check=_check,
)
