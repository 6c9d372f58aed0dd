"""Several fleet-manager processes on one store without MQTT 5 shared subscriptions.

Each ``fleetctl serve`` of a fleet renews a member lease (``members/FLEET/INSTANCE``) in the store every
third of ``lease_ttl``. The live members, sorted, decide who stores which device's telemetry: the owner of
a device is the member with the highest rendezvous hash of (device, member), so every manager computes
the same owner from the same member list, and when a member comes or goes only its share of devices moves.

Every manager still receives every telemetry message (a 3.1.1 broker cannot split one subscription) and
keeps every device's latest state and health windows in memory, so whichever manager leads rollouts has
the evidence for the health gate; only the store writes (per-minute rollups) are partitioned, so each
point is stored once. Status, info and events are idempotent writes that every manager applies.

What degrades: between a member's death and the expiry of its lease (at most ``lease_ttl``) the telemetry
of its share of devices is received by the others but stored by nobody; while two members briefly see
different member lists (at most one heartbeat), a device's points may be stored by both or by neither.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

from device_agent.errors import TransportError
from device_agent.mqtt import MqttClient
from fleet.store.leases import LeaseRepository

log = logging.getLogger(__name__)
MEMBER_PREFIX = "members/"
RECONNECT_MIN_S = 0.5  # first delay after a failed round over every broker node; doubles up to:
RECONNECT_MAX_S = 8.0


def member_lease(fleet: str, instance: str) -> str:
    """The lease name of one manager process (the leases table holds names of 64 characters at most)."""
    return f"{MEMBER_PREFIX}{fleet}/{instance}"[:64]


def _weight(device: str, member: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{device}\0{member}".encode(), digest_size=8).digest(), "big")


def owner(device: str, members: tuple[str, ...]) -> str | None:
    """The member that stores ``device``'s telemetry: highest rendezvous weight; None without members."""
    return max(members, key=lambda m: _weight(device, m)) if members else None


class Partition:
    """Which devices this manager stores, for a given member list; cached per device (the hot path)."""

    def __init__(self, me: str, members: tuple[str, ...] = ()) -> None:
        self.me = me
        self.members: tuple[str, ...] = ()
        self._mine: dict[str, bool] = {}
        self.update(members or (me,))

    def update(self, members: tuple[str, ...]) -> bool:
        """Adopt a new member list (this manager is always one); True when it changed."""
        members = tuple(sorted({*members, self.me}))
        if members == self.members:
            return False
        self.members, self._mine = members, {}
        return True

    def owns(self, device: str) -> bool:
        mine = self._mine.get(device)
        if mine is None:
            if len(self._mine) > 1_000_000:  # bounded like the ingest's device map
                self._mine.clear()
            mine = self._mine[device] = owner(device, self.members) == self.me
        return mine


class Membership:
    """Renews this manager's member lease and refreshes the partition from the live member leases."""

    def __init__(
        self,
        leases: LeaseRepository,
        fleet: str,
        instance: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases, self.fleet, self.ttl, self.clock = leases, fleet, ttl, clock
        self.name = member_lease(fleet, instance)
        self.partition = Partition(self.name)

    def heartbeat(self) -> tuple[str, ...]:
        """Renew our lease, read the live members, adopt them; returns the member list."""
        now = self.clock()
        self.leases.acquire(self.name, self.name, now, self.ttl)
        prefix = member_lease(self.fleet, "")
        live = tuple(name for name, _ in self.leases.live(prefix, now))
        if self.partition.update(live):
            log.warning("ingest partition: %d member(s): %s", len(self.partition.members), ", ".join(live))
        return self.partition.members

    def run(self, stop: threading.Event) -> None:
        """Heartbeat every third of the lease time until ``stop``; a failing store is retried, never fatal."""
        while not stop.is_set():
            try:
                self.heartbeat()
            except Exception:  # the loop must outlive a restarting database
                log.exception("member heartbeat failed; retrying")
            stop.wait(self.ttl / 3)


def keep_connected(mqtt: MqttClient, filters: list[tuple[str, int]], stop: threading.Event) -> None:
    """The manager's broker supervisor: when the connection drops, ``connect()`` again (it tries every
    node of the list once, from the current one), subscribe again, and back off (0.5 s doubling to 8 s)
    after a round in which no node answered. Nothing queued on the lost connection is replayed here:
    the runner re-publishes unsent commands under the same ids, which devices act on once."""
    delay = RECONNECT_MIN_S
    while not stop.wait(0.2):
        if mqtt.is_connected:
            delay = RECONNECT_MIN_S
            continue
        try:
            mqtt.connect()
            mqtt.subscribe(filters)
            log.warning("reconnected to broker %s", mqtt.broker)
        except TransportError as exc:
            log.warning("broker unreachable, retrying in %.1fs: %s", delay, exc)
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
