"""The fleet's news over Redis: this brain's ejections out, the other brains' in.

Layout, for fleet ``F`` (``--fleet``):

- channel ``extproc:fleet:F``: every ejection message (``core.fleet.encode``), as it happens;
- key ``extproc:fleet:F:<cluster>|<host>``: the latest message for that host, expiring at
  the ejection's end, so a brain that starts or reconnects reads what is still in force.

Failure model: Redis is an accelerator, never a dependency. While it is down, slow or
restarting, every brain decides alone as without it; one log line when the link goes, one
when it is back, and on every (re)connect the stored keys are read again. Outgoing news
waits in a bounded queue (the oldest is dropped and counted when it is full) and is sent
on reconnect unless its ejection is already over. Incoming messages are decoded by
``core.fleet.decode``: anything malformed, foreign or our own is dropped and counted.
Who may publish is Redis's to say (AUTH/ACL in the URL, TLS with ``rediss://``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from extproc.clock import Clock
from extproc.core.fleet import FleetEjection, FleetMessageError, decode, encode
from extproc.core.outlier import OutlierAction, OutlierEjectionType, OutlierEvent
from extproc.core.outlier_detector import FleetVerdict
from extproc.core.table import ServiceTable

__all__ = ["FleetLink"]

log = structlog.get_logger(__name__)

#: Pending outgoing news while Redis is away; the oldest goes first when it is full.
QUEUE_LIMIT = 1024
#: Pause between reconnect attempts.
RETRY_S = 1.0


class FleetLink:
    """One brain's link to its fleet through one Redis."""

    def __init__(
        self,
        url: str,
        fleet: str,
        proxy: str,
        table: Callable[[], ServiceTable],
        clock: Clock,
        *,
        on_change: Callable[[], None],
    ) -> None:
        """Share ejections with the brains of ``fleet`` on the Redis at ``url``.

        Args:
            url: ``redis://`` or ``rediss://`` URL, credentials included.
            fleet: the fleet's name; brains of other fleets on the same Redis are ignored.
            proxy: this brain's id, unique in the fleet (its own messages come back).
            table: the current table (a reload swaps it).
            clock: the service clock (monotonic and wall).
            on_change: called after a fleet ejection changed a cluster, so EDS and the
                data paths' tables learn it at once.
        """
        self.fleet = fleet
        self.proxy = proxy
        self._url = url
        self._table = table
        self._clock = clock
        self._on_change = on_change
        self._channel = f"extproc:fleet:{fleet}"
        self._outbox: collections.deque[FleetEjection] = collections.deque(maxlen=QUEUE_LIMIT)
        self._wake = asyncio.Event()
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self.dropped_outgoing = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.verdicts: collections.Counter[FleetVerdict] = collections.Counter()

    @property
    def connected(self) -> bool:
        """Whether the link to Redis is up right now."""
        return self._connected

    def collect(self) -> Iterable[Metric]:
        """The fleet link's metrics (prometheus_client's Collector), read at scrape time."""
        up = GaugeMetricFamily("extproc_fleet_connected", "1 while the link to Redis is up.")
        up.add_metric([], 1 if self._connected else 0)
        yield up
        received = CounterMetricFamily(
            "extproc_fleet_messages_received", "Messages read from the fleet (ours included)."
        )
        received.add_metric([], self.received)
        yield received
        refused = CounterMetricFamily(
            "extproc_fleet_messages_refused",
            "Fleet messages dropped, never applied (malformed, another fleet's).",
            labels=["reason"],
        )
        for reason, count in self.refused.items():
            refused.add_metric([reason], count)
        yield refused
        verdicts = CounterMetricFamily(
            "extproc_fleet_ejections",
            "What the fleet's ejections did here (ejected, contradicted, refused, ...).",
            labels=["verdict"],
        )
        for verdict, count in self.verdicts.items():
            verdicts.add_metric([verdict.value], count)
        yield verdicts
        dropped = CounterMetricFamily(
            "extproc_fleet_outgoing_dropped",
            "This brain's news dropped while Redis was away and the queue was full.",
        )
        dropped.add_metric([], self.dropped_outgoing)
        yield dropped

    def key(self, ejection: FleetEjection) -> str:
        """The key that holds the latest news of one host."""
        return f"{self._channel}:{ejection.cluster}|{ejection.host}"

    def announce(self, event: OutlierEvent) -> None:
        """Queue one of this brain's own enforced ejections as news for the fleet."""
        if (
            event.action is not OutlierAction.EJECT
            or not event.enforced
            or event.type is OutlierEjectionType.FLEET
        ):
            return
        cluster = self._table().clusters.get(event.cluster_name)
        if cluster is None:
            return
        left = cluster.ejection_time_left_s(event.upstream_url, self._clock.now())
        if left is None:
            return
        wall = self._clock.wall()
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped_outgoing += 1
        self._outbox.append(
            FleetEjection(
                fleet=self.fleet,
                proxy=self.proxy,
                cluster=event.cluster_name,
                host=event.upstream_url,
                kind=event.type,
                num_ejections=event.num_ejections,
                ejected_at=wall,
                until=wall + left,
            )
        )
        self._wake.set()

    def receive(self, raw: bytes) -> FleetVerdict | None:
        """Apply one message from the fleet; None when it was refused (and counted)."""
        self.received += 1
        try:
            ejection = decode(raw, fleet=self.fleet, proxy=self.proxy)
        except FleetMessageError as exc:
            reason = str(exc)
            if reason != "our own":
                self.refused[reason] += 1
            return None
        cluster = self._table().clusters.get(ejection.cluster)
        if cluster is None:
            verdict = FleetVerdict.NOT_OURS
        else:
            verdict = cluster.apply_fleet_ejection(ejection, self._clock.now(), self._clock.wall())
        self.verdicts[verdict] += 1
        if verdict is FleetVerdict.EJECTED:
            log.info(
                "fleet.eject",
                cluster_name=ejection.cluster,
                upstream_url=ejection.host,
                seen_by=ejection.proxy,
                type=ejection.kind.value,
            )
            self._on_change()
        return verdict

    def start(self) -> None:
        """Run the link in the background until ``stop``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleet-link")

    async def stop(self) -> None:
        """End the link; pending news is dropped (this brain's own state is untouched)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Connect, catch up, then exchange news; on any Redis failure, start over."""
        lost_said = False
        while True:
            client: Any = aioredis.from_url(self._url, socket_timeout=5, socket_connect_timeout=2)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(self._channel)
                await self._catch_up(client)
                self._connected = True
                log.info("fleet.connected", fleet=self.fleet, resumed=lost_said)
                lost_said = False
                sender = asyncio.create_task(self._send(client))
                try:
                    await self._listen(pubsub)
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await sender
            except (OSError, aioredis.RedisError) as exc:
                if not lost_said:
                    log.warning(
                        "fleet.lost", fleet=self.fleet, error=str(exc) or type(exc).__name__
                    )
                    lost_said = True
            finally:
                self._connected = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(RETRY_S)

    async def _catch_up(self, client: Any) -> None:
        """Apply every ejection still stored for the fleet (a start, a reconnect)."""
        async for key in client.scan_iter(match=f"{self._channel}:*", count=500):
            raw = await client.get(key)
            if raw is not None:
                self.receive(raw)

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                await pubsub.ping()  # a dead connection raises here, within the timeout
                continue
            data = message.get("data")
            if isinstance(data, bytes):
                self.receive(data)

    async def _send(self, client: Any) -> None:
        """Send queued news while connected; an ejection already over is not sent."""
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            ejection = self._outbox[0]
            left_ms = int((ejection.until - self._clock.wall()) * 1000)
            if left_ms > 0:
                raw = encode(ejection)
                async with client.pipeline(transaction=False) as pipe:
                    pipe.set(self.key(ejection), raw, px=left_ms)
                    pipe.publish(self._channel, raw)
                    await pipe.execute()
            self._outbox.popleft()
