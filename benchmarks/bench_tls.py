#!/usr/bin/env python3
"""What TLS costs: tcp:// against tls:// on loopback, latency and bulk transfer.

Run from the repository root::

    python benchmarks/bench_tls.py [--rounds 5] [--pings 2000] [--megabytes 100]
                                   [--loop conveyor|asyncio]

An echo server runs in a second process (its own event loop: uvloop when installed, like
every conveyor server, or asyncio's own with ``--loop asyncio``) listening on both
``tcp://127.0.0.1`` and ``tls://127.0.0.1`` with ``Security.temporary()`` credentials
(pickled to it: they never touch a disk). The client, in this process, measures per
round and per transport:

* ``connect``: opening a connection, TLS handshake (mutual, EC P-256) and conveyor
  handshake included (median of 50);
* ``latency``: a small request and its reply on an open connection (median of
  ``--pings``);
* ``bulk``: ``--megabytes`` MB sent in 10 MB messages (one out-of-band frame each, as
  worker data transfers travel) and acknowledged by the server, as MB/s.

Rounds alternate the transports in ABBA order; the medians over rounds, their ranges
(min-max) and the TLS/TCP ratios are printed. Every message is checked; nothing here
passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from conveyor import Security
from conveyor.comm import Comm, CommClosedError, connect, listen
from conveyor.protocol.serialize import Serialized
from conveyor.rpc.loop import new_event_loop

CHUNK = 10_000_000
CONNECTS = 50


#: the server's handlers still running (the client closed their comms, or will)
HANDLERS: set[asyncio.Task[Any]] = set()


async def serve(comm: Comm) -> None:
    """Echo small messages; acknowledge bulk ones with their size."""
    task = asyncio.current_task()
    assert task is not None
    HANDLERS.add(task)
    task.add_done_callback(HANDLERS.discard)
    try:
        while True:
            msg = await comm.read()
            if isinstance(msg, dict) and msg.get("op") == "bulk":
                data = msg["data"]
                assert isinstance(data, Serialized)
                await comm.write({"op": "ack", "nbytes": data.nbytes})
            else:
                await comm.write(msg)
    except CommClosedError:
        pass


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    """conveyor's loop (uvloop when installed), or asyncio's own."""
    return new_event_loop() if kind == "conveyor" else asyncio.new_event_loop()


def server_main(security: Security, pipe: Connection, loop_kind: str) -> None:
    """Listen on tcp:// and tls:// until told to stop through ``pipe``."""

    async def main() -> None:
        async with (
            listen("tcp://127.0.0.1:0", serve) as tcp,
            listen("tls://127.0.0.1:0", serve, **security.get_listen_args("worker")) as tls,
        ):
            pipe.send({"tcp": tcp.contact_address, "tls": tls.contact_address})
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, pipe.recv)
            if HANDLERS:  # every comm was closed by the client: they are ending
                await asyncio.wait(HANDLERS, timeout=10)

    loop = make_loop(loop_kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def median(values: list[float]) -> float:
    return statistics.median(values)


async def measure_connect(addr: str, args: dict[str, Any]) -> float:
    """Median seconds to open (and handshake) a connection."""
    times = []
    for _ in range(CONNECTS):
        start = time.perf_counter()
        comm = await connect(addr, timeout=10, **args)
        times.append(time.perf_counter() - start)
        await comm.close()
    return median(times)


async def measure_latency(comm: Comm, pings: int) -> float:
    """Median seconds for a small request and its reply."""
    times = []
    for i in range(pings):
        msg = {"op": "ping", "i": i}
        start = time.perf_counter()
        await comm.write(msg)
        reply = await comm.read()
        times.append(time.perf_counter() - start)
        assert reply == msg, reply
    return median(times)


async def measure_bulk(comm: Comm, megabytes: int) -> float:
    """MB/s for ``megabytes`` MB sent in 10 MB messages, all acknowledged."""
    payload = bytes(range(256)) * (CHUNK // 256)
    count = max(1, megabytes * 1_000_000 // len(payload))

    async def acks() -> int:
        total = 0
        for _ in range(count):
            reply = await comm.read()
            assert isinstance(reply, dict) and reply["op"] == "ack", reply
            total += int(reply["nbytes"])
        return total

    start = time.perf_counter()
    reader = asyncio.ensure_future(acks())
    for _ in range(count):
        await comm.write({"op": "bulk", "data": Serialized(b"", [payload])})
    total = await reader
    elapsed = time.perf_counter() - start
    assert total == count * len(payload), total
    return total / elapsed / 1e6


async def one_round(
    addr: str, args: dict[str, Any], pings: int, megabytes: int
) -> dict[str, float]:
    out = {"connect": await measure_connect(addr, args)}
    comm = await connect(addr, timeout=10, **args)
    try:
        out["latency"] = await measure_latency(comm, pings)
        out["bulk"] = await measure_bulk(comm, megabytes)
    finally:
        await comm.close()
    return out


def spread(values: list[float], scale: float, fmt: str) -> str:
    return (
        f"{format(median(values) * scale, fmt)} "
        f"({format(min(values) * scale, fmt)}-{format(max(values) * scale, fmt)})"
    )


async def run(
    addresses: dict[str, str], security: Security, rounds: int, pings: int, megabytes: int
) -> None:
    args = {"tcp": {}, "tls": security.get_connection_args("client")}
    results: dict[str, list[dict[str, float]]] = {"tcp": [], "tls": []}
    await one_round(addresses["tls"], args["tls"], 100, 20)  # warm up both
    await one_round(addresses["tcp"], args["tcp"], 100, 20)
    for r in range(rounds):
        order = ["tcp", "tls"] if r % 2 == 0 else ["tls", "tcp"]
        for scheme in order:
            res = await one_round(addresses[scheme], args[scheme], pings, megabytes)
            results[scheme].append(res)
            print(
                f"round {r + 1} {scheme}: connect {res['connect'] * 1e3:.2f} ms, "
                f"latency {res['latency'] * 1e6:.0f} us, bulk {res['bulk']:.0f} MB/s",
                flush=True,
            )
    print("\nmedian (min-max) over rounds")
    metrics: list[tuple[str, str, float, str, Callable[[float, float], float]]] = [
        ("connect", "ms", 1e3, ".2f", lambda tls, tcp: tls / tcp),
        ("latency", "us", 1e6, ".0f", lambda tls, tcp: tls / tcp),
        ("bulk", "MB/s", 1.0, ".0f", lambda tls, tcp: tls / tcp),
    ]
    for name, unit, scale, fmt, ratio in metrics:
        tcp = [r[name] for r in results["tcp"]]
        tls = [r[name] for r in results["tls"]]
        print(
            f"{name:8} tcp {spread(tcp, scale, fmt)} {unit}, tls {spread(tls, scale, fmt)} "
            f"{unit}, tls/tcp {ratio(median(tls), median(tcp)):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument(
        "--loop", choices=["conveyor", "asyncio"], default="conveyor", help="event loop"
    )
    opts = parser.parse_args()
    security = Security.temporary()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=server_main, args=(security, child, opts.loop), daemon=True)
    server.start()
    try:
        addresses = parent.recv()
        loop = make_loop(opts.loop)
        print(f"python {sys.version.split()[0]}, loop {type(loop).__module__}")
        try:
            loop.run_until_complete(
                run(addresses, security, opts.rounds, opts.pings, opts.megabytes)
            )
        finally:
            loop.close()
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join()


if __name__ == "__main__":
    main()
