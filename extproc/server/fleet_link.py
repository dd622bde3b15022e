"""The fleet's news over Redis: this brain's ejections out, the other brains' in.

Layout, for fleet ``F`` (``--fleet``):

- channel ``extproc:fleet:F``: every ejection message (``core.fleet.encode``), as it happens;
- key ``extproc:fleet:F:<cluster>|<host>``: the latest message for that host, expiring at
  the ejection's end, so a brain that starts or reconnects reads what is still in force.

Failure model: Redis is an accelerator, never a dependency. While it is down, slow or
restarting, every brain decides alone as without it; one log line when the link goes, one
when it is back, and on every (re)connect the stored keys are read again. Outgoing news
waits in a bounded queue (the oldest is dropped and counted when it is full) and is sent
on reconnect unless its ejection is already over. A Redis restarted without persistence
has lost the keys: on every (re)connect each brain stores again its own ejections still in
force whose key is gone (``SET NX``) and announces them, so a brain that starts later
still reads them. Incoming messages are decoded by ``core.fleet.decode``: anything
malformed, foreign or our own is dropped and counted.

Who may publish is Redis's to say: an ACL user and its password in the URL
(``rediss://USER:PASSWORD@HOST:PORT/DB``), TLS with ``rediss://`` and redis-py's query
parameters for it (``ssl_ca_certs=FILE``, ``ssl_certfile``, ``ssl_keyfile``). The commands
used: SUBSCRIBE and PING on the channel, SCAN, GET and SET (PX, NX) on the keys, PUBLISH.
The password never reaches a log line (``redact``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from extproc.clock import Clock
from extproc.core.fleet import FleetEjection, FleetMessageError, decode, encode
from extproc.core.outlier import OutlierAction, OutlierEjectionType, OutlierEvent
from extproc.core.outlier_detector import FleetVerdict
from extproc.core.table import ServiceTable

__all__ = ["FleetLink", "check_url", "redact"]

log = structlog.get_logger(__name__)

#: Pending outgoing news while Redis is away; the oldest goes first when it is full.
QUEUE_LIMIT = 1024
#: Pause between reconnect attempts.
RETRY_S = 1.0
#: An idle link pings Redis this often, so a dead connection is noticed.
PING_S = 1.0
#: How long ``stop`` waits for the link to end before it cancels it again.
STOP_RETRY_S = 0.1
#: How long a starting brain waits to read the stored keys before it serves (Redis away).
CATCH_UP_S = 1.0
#: What the password of a URL reads as in logs and errors.
HIDDEN = "***"


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password`` parameter) hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return HIDDEN  # not even a URL: nothing of it is safe to print
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:{HIDDEN}@{host}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, HIDDEN if "password" in k.lower() else v) for k, v in pairs], safe="/*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: str) -> None:
    """Raise ValueError, naming the URL without its password, unless redis-py can use it.

    A connection is built (not opened), so a bad scheme, a misspelt query parameter (redis-py
    passes unknown ones on as connection arguments) or a bad TLS option is found at start,
    not in the link's task.
    """
    try:
        pool: Any = aioredis.ConnectionPool.from_url(url)
        pool.make_connection()
    except (TypeError, ValueError, aioredis.RedisError) as exc:
        raise ValueError(f"{redact(url)}: not a Redis URL redis-py can use ({exc})") from None


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
        check_url(url)
        self.fleet = fleet
        self.proxy = proxy
        self._url = url
        self._shown_url = redact(url)
        self._table = table
        self._clock = clock
        self._on_change = on_change
        self._channel = f"extproc:fleet:{fleet}"
        self._outbox: collections.deque[FleetEjection] = collections.deque(maxlen=QUEUE_LIMIT)
        # This brain's own news per key, stored again after a Redis that lost it.
        self._own: dict[str, FleetEjection] = {}
        self._wake = asyncio.Event()
        self._connected = False
        self._caught_up = asyncio.Event()
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
        now, wall = self._clock.now(), self._clock.wall()
        left = cluster.ejection_time_left_s(event.upstream_url, now)
        if left is None:
            return
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped_outgoing += 1
        ejection = FleetEjection(
            fleet=self.fleet,
            proxy=self.proxy,
            cluster=event.cluster_name,
            host=event.upstream_url,
            kind=event.type,
            num_ejections=event.num_ejections,
            # When it happened (events are drained up to 0.1 s later), on the wall clock.
            ejected_at=wall - max(0.0, now - event.time_s),
            until=wall + left,
        )
        self._outbox.append(ejection)
        self._own = {k: e for k, e in self._own.items() if e.until > wall}  # hosts come and go
        self._own[self.key(ejection)] = ejection
        self._wake.set()

    def receive(self, raw: bytes, *, stored: bool = False) -> FleetVerdict | None:
        """Apply one message from the fleet; None when it was refused (and counted).

        A ``stored`` one (a key read at catch-up) may be this brain's own, from before it
        restarted under the same ``--proxy-id``: it holds the host out too. On the channel
        our own messages are only the echo of what we sent.
        """
        self.received += 1
        try:
            ejection = decode(raw, fleet=self.fleet, proxy="" if stored else self.proxy)
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

    async def caught_up(self, timeout_s: float = CATCH_UP_S) -> bool:
        """Wait until the stored keys were read once (at most ``timeout_s``), so a brain
        that starts mid-ejection pushes nothing to Envoy before it knows (Redis away: it
        goes on alone after the timeout)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        return self._caught_up.is_set()

    async def stop(self) -> None:
        """End the link; pending news is dropped (this brain's own state is untouched).

        The task is cancelled again until it ends: redis-py sends each command under
        ``asyncio.wait_for``, which on Python 3.11 loses a cancellation that arrives as the
        write completes, and the link would then run on (and a shutdown wait for it).
        """
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=STOP_RETRY_S)
        if not task.cancelled():
            task.result()  # an unexpected error of the link is not hidden

    async def _run(self) -> None:
        """Connect, catch up, then exchange news; on any Redis failure, start over."""
        lost_said = False
        while True:
            client: Any = aioredis.from_url(self._url, socket_timeout=5, socket_connect_timeout=2)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(self._channel)
                await self._catch_up(client)
                self._caught_up.set()
                await self._restore(client)
                self._connected = True
                log.info(
                    "fleet.connected", fleet=self.fleet, redis=self._shown_url, resumed=lost_said
                )
                lost_said = False
                sender = asyncio.create_task(self._send(client))
                try:
                    await self._listen(pubsub)
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await sender
            except (OSError, aioredis.RedisError) as exc:
                # Also a refusal (a wrong password, a missing ACL right, TLS to a plain port
                # or the reverse): one line, then this brain goes on alone and retries.
                if not lost_said:
                    log.warning(
                        "fleet.lost",
                        fleet=self.fleet,
                        redis=self._shown_url,
                        error=f"{type(exc).__name__}: {exc}",
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
                self.receive(raw, stored=True)

    async def _restore(self, client: Any) -> None:
        """Store again this brain's own ejections still in force whose key is gone (a Redis
        restarted empty), and announce them; a key another brain wrote since is kept."""
        wall, now = self._clock.wall(), self._clock.now()
        for key, ejection in list(self._own.items()):
            cluster = self._table().clusters.get(ejection.cluster)
            left_ms = int((ejection.until - wall) * 1000)
            if (
                left_ms <= 0
                or cluster is None
                or cluster.ejection_time_left_s(ejection.host, now) is None
            ):
                del self._own[key]
                continue
            if ejection in self._outbox:
                continue  # the sender stores and announces it in a moment
            raw = encode(ejection)
            if await client.set(key, raw, px=left_ms, nx=True):
                await client.publish(self._channel, raw)

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=PING_S)
            if message is None:
                await pubsub.ping()  # a dead connection raises here, within the timeout
                continue
            # Only the channel's messages: the answer to that PING comes back here too.
            if message.get("type") != "message":
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
