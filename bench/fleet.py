"""How fast one brain's ejection reaches the rest of its fleet through a real Redis.

Starts a throw-away ``redis-server`` on loopback, then N brains in this process (each its
own table and ``FleetLink``, as ``extproc up`` runs one), and repeats: one brain (in turn)
ejects its us-east1 host; the clock runs until every other brain has applied the fleet's
ejection. Reports, for each N, the propagation time from the first brain's ejection to
the last brain's (p50, p99), and the CPU per ejection of Redis (from /proc) and of the
brains (this process). Between rounds every brain's table is rebuilt, so each round
starts with nothing ejected.

    .venv/bin/python bench/fleet.py --brains 3,30 --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import structlog

from extproc.clock import MonotonicClock
from extproc.core.outlier import AttemptResult
from extproc.core.outlier_detector import FleetVerdict
from extproc.core.policy import Locality, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.demo import free_port
from extproc.server.fleet_link import FleetLink
from extproc.testing import endpoint, outlier, service

EAST = "10.0.0.1:443"
SERVICE = service(
    endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
    outlier=outlier(max_ejection_percent=100, base_ejection_time_s=30.0),
)
_TICKS = os.sysconf("SC_CLK_TCK")


class Brain:
    """One brain: its table and its link; ``applied`` is set when the fleet's news lands."""

    def __init__(self, url: str, fleet: str, name: str) -> None:
        self.clock = MonotonicClock()
        self.name = name
        self.applied = asyncio.Event()
        self.table = self._table()
        self.link = FleetLink(url, fleet, name, lambda: self.table, self.clock, on_change=self._on)

    def _table(self) -> ServiceTable:
        return ServiceTable(
            Policy((SERVICE,)),
            Workload(Locality.parse("us-east1")),
            now=self.clock.now(),
            rng=random.Random(1),
        )

    def _on(self) -> None:
        self.applied.set()

    def reset(self) -> None:
        self.table = self._table()
        self.applied.clear()

    def eject(self) -> None:
        cluster = self.table.clusters[SERVICE.cluster_name]
        cluster.record(EAST, AttemptResult.answer(503), self.clock.now(), finished=False)
        for event in cluster.drain_events():
            self.link.announce(event)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(url: str, redis_pid: int, n: int, rounds: int) -> dict[str, float]:
    brains = [Brain(url, f"bench-{n}", f"b{i}") for i in range(n)]
    for brain in brains:
        brain.link.start()
    deadline = time.monotonic() + 10
    while not all(b.link.connected for b in brains):
        if time.monotonic() > deadline:
            raise SystemExit("bench/fleet.py: the brains did not connect to Redis")
        await asyncio.sleep(0.01)
    times: list[float] = []
    redis_cpu, brain_cpu = _cpu_s(redis_pid), 0.0
    for r in range(rounds):
        for brain in brains:
            brain.reset()  # not measured: the bench's own set-up
        sender, others = brains[r % n], [b for i, b in enumerate(brains) if i != r % n]
        cpu, start = time.process_time(), time.perf_counter()
        sender.eject()
        await asyncio.wait_for(asyncio.gather(*(b.applied.wait() for b in others)), 10)
        times.append(time.perf_counter() - start)
        brain_cpu += time.process_time() - cpu
        assert all(b.link.verdicts[FleetVerdict.EJECTED] for b in others)
        await asyncio.sleep(0.005)  # let the keys and channels settle between rounds
    redis_cpu = _cpu_s(redis_pid) - redis_cpu
    for brain in brains:
        await brain.link.stop()
    return {
        "p50_ms": _percentile(times, 0.5) * 1000,
        "p99_ms": _percentile(times, 0.99) * 1000,
        "mean_ms": statistics.fmean(times) * 1000,
        "redis_cpu_us": redis_cpu / rounds * 1e6,
        "brain_cpu_us": brain_cpu / rounds * 1e6,
    }


async def _main(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        print("bench/fleet.py: needs redis-server on PATH", file=sys.stderr)
        return 2
    port = free_port()
    redis = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        print(f"bench/fleet.py: redis-server on 127.0.0.1:{port}, {args.rounds} rounds each")
        print("brains  p50 ms  p99 ms  mean ms  redis CPU µs/ejection  brains' CPU µs/ejection")
        for n in args.brains:
            m = await _measure(url, redis.pid, n, args.rounds)
            print(
                f"{n:>6}  {m['p50_ms']:6.2f}  {m['p99_ms']:6.2f}  {m['mean_ms']:7.2f}"
                f"  {m['redis_cpu_us']:21.0f}  {m['brain_cpu_us']:23.0f}"
            )
    finally:
        redis.kill()
        await redis.wait()
    return 0


def main() -> int:
    # The brains' per-ejection log lines would be most of the output (and of the CPU).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--brains",
        default="3,30",
        type=lambda t: [int(x) for x in t.split(",")],
        help="fleet sizes, comma-separated (default 3,30)",
    )
    parser.add_argument("--rounds", type=int, default=200, help="ejections per fleet size")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
