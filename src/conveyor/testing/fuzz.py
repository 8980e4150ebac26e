"""Malformed inputs for fuzzing conveyor's listeners (deterministic for a given seed).

:func:`comm_cases` yields :class:`FuzzCase` byte strings for a conveyor TCP listener
(scheduler, worker or nanny): random bytes, valid frames with bits flipped, truncated
frames, absurd declared lengths and frame counts, HTTP requests and a real TLS
ClientHello on the plain TCP port, and, after a valid handshake, valid msgpack frames
with unknown ops, known ops with fields of the wrong types, deep nesting and bad
extension references. :func:`http_cases` yields malformed requests for the dashboard.
Valid frames are built with the project's own encoder (:func:`conveyor.protocol.encode`
and :func:`~conveyor.protocol.encode_frames`) and then mutated.

The generators never produce a message meant to do harm (no ``close``, ``terminate`` or
``restart`` op, no pickle): they test parsing, not authorization.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgpack

from conveyor.comm.handshake import PROTOCOL_VERSION
from conveyor.protocol import encode, encode_frames

__all__ = [
    "NANNY_OPS",
    "SCHEDULER_OPS",
    "WORKER_OPS",
    "FuzzCase",
    "comm_cases",
    "frames_bytes",
    "handshake_bytes",
    "http_cases",
    "tls_client_hello",
]

#: Scheduler ops that only read or that a stranger may call harmlessly; the fuzzer
#: sends them with fields of the wrong types.
SCHEDULER_OPS: tuple[str, ...] = (
    "identity",
    "ncores",
    "who-has",
    "has-what",
    "nbytes",
    "processing",
    "story",
    "explain",
    "get-metadata",
    "publish-get",
    "variable-get",
    "task-finished",
    "task-erred",
    "heartbeat-worker",
    "register-worker",
    "register-client",
    "update-graph",
    "client-desires-keys",
    "client-releases-keys",
    "cancel-keys",
    "missing-data",
    "long-running",
    "worker-paused",
    "memory-synced",
    "log-event",
    "get-events",
    "task-stream",
    "progress-poll",
    "semaphore-value",
    "queue-qsize",
    "scheduler-info",
)
#: The same for a worker's listener.
WORKER_OPS: tuple[str, ...] = (
    "identity",
    "get-data",
    "update-data",
    "compute-task",
    "free-keys",
    "refresh-who-has",
    "acquire-replicas",
    "free-functions",
    "sync-memory",
)
#: The same for a nanny's listener. Not ``plugin-add``: the nanny unpickles its
#: ``plugin`` bytes from any peer (and logs a traceback when they are not a pickle).
NANNY_OPS: tuple[str, ...] = ("identity", "worker-up", "plugin-remove")

_FIELDS = (
    "keys",
    "key",
    "client",
    "address",
    "tasks",
    "data",
    "who_has",
    "nbytes",
    "worker",
    "name",
    "plugin",
    "metrics",
    "timeout",
    "n",
    "spec",
    "deps",
    "stimulus_id",
)

# Wrong-typed values: never a non-empty string (no plausible address or key) and no
# bytes but zeros (never a pickle).
_WRONG: tuple[object, ...] = (
    None,
    -1,
    0,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    True,
    "",
    b"\x00" * 7,
    [],
    (None, -1),
    [[[]]],
    {},
    {1: 2},
    {None: []},
    {"a": {"b": {"c": [1, 2.5, None]}}},
)


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One malformed input: ``payload`` is sent on a fresh connection.

    ``kind`` names the generator; ``handshaken`` is True when the payload starts with a
    complete, valid handshake (the server then serves the connection as a peer's), None
    when it may (a bit flipped inside the handshake's strings can leave it valid);
    ``eof`` says whether the sender half-closes after the payload (if not, the server
    must close on its own: on bad bytes at once, else at the handshake timeout).
    """

    kind: str
    payload: bytes
    handshaken: bool | None = False
    eof: bool = True


def frames_bytes(msg: object) -> bytes:
    """The wire bytes of ``msg`` as conveyor sends it (header and frames)."""
    return b"".join(bytes(f) for f in encode_frames(encode(msg)))


def handshake_bytes(
    role: str = "client", protocol: object = PROTOCOL_VERSION, token: str | None = None
) -> bytes:
    """The wire bytes of a handshake message (showing ``token``, if given)."""
    msg: dict[str, object] = {"op": "handshake", "protocol": protocol, "role": role}
    if token is not None:
        msg["token"] = token
    return frames_bytes(msg)


def tls_client_hello(server_hostname: str = "localhost") -> bytes:
    """A real TLS ClientHello, as the standard library's TLS client first sends it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()


def _nested(depth: int) -> bytes:
    """msgpack bytes of ``depth`` nested one-element arrays around nil."""
    return b"\x91" * depth + b"\xc0"


def _raw_message(frame0: bytes, *more: bytes) -> bytes:
    frames = [frame0, *more]
    header = struct.pack(f"<I{len(frames)}Q", len(frames), *(len(f) for f in frames))
    return header + b"".join(frames)


def _wrong_message(rng: random.Random, ops: Sequence[str]) -> dict[object, object]:
    msg: dict[object, object] = {"op": rng.choice(ops)}
    for field in rng.sample(_FIELDS, rng.randint(0, 5)):
        msg[field] = rng.choice(_WRONG)
    if rng.random() < 0.5:
        msg["reply"] = rng.choice([1, -1, 2**40, None, 1.5, [], ""])
    return msg


def _valid_exchange(rng: random.Random, hs: bytes, ops: Sequence[str]) -> bytes:
    return hs + frames_bytes({"op": rng.choice(ops), "reply": rng.randint(1, 1000)})


def comm_cases(
    seed: int,
    n: int,
    ops: Sequence[str] = SCHEDULER_OPS,
    role: str = "client",
    token: str | None = None,
) -> Iterator[FuzzCase]:
    """Yield ``n`` malformed inputs for a conveyor TCP listener, cycling through the
    kinds; ``ops`` are the listener's known ops (sent with wrong field types). With
    ``token`` (the cluster token workers and nannies ask for), half the handshakes show
    it, so that the malformed messages after them reach the handlers."""
    rng = random.Random(seed)
    hello = tls_client_hello()
    plain = handshake_bytes(role)
    admitted = handshake_bytes(role, token=token) if token is not None else plain
    kinds = (
        "random",
        "bitflip",
        "truncated",
        "absurd-length",
        "http",
        "tls-hello",
        "unknown-op",
        "wrong-types",
        "nesting",
        "bad-ext",
        "bad-handshake",
        "not-a-dict",
    )
    for i in range(n):
        kind = kinds[i % len(kinds)]
        eof = rng.random() < 0.8
        hs = admitted if rng.random() < 0.5 else plain
        if kind == "random":
            yield FuzzCase(kind, rng.randbytes(rng.choice([1, 3, 4, 12, 100, 4096])), eof=eof)
        elif kind == "bitflip":
            data = bytearray(_valid_exchange(rng, hs, ops))
            flipped = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))]
            for at in flipped:
                data[at] ^= 1 << rng.randrange(8)
            # a flip inside the handshake may leave it valid (a role "clienp")
            handshaken = True if min(flipped) >= len(hs) else None
            yield FuzzCase(kind, bytes(data), handshaken=handshaken, eof=eof)
        elif kind == "truncated":
            whole = _valid_exchange(rng, hs, ops)
            cut = rng.randrange(1, len(whole))
            yield FuzzCase(kind, whole[:cut], handshaken=cut >= len(hs), eof=eof)
        elif kind == "absurd-length":
            prefix = hs if rng.random() < 0.5 else b""
            handshaken = bool(prefix)
            header = rng.choice(
                [
                    struct.pack("<IQ", 1, rng.choice([1 << 40, 2**64 - 1, 1 << 31])),
                    struct.pack("<I", rng.choice([1 << 30, 2**32 - 1, 0, 100_000_000])),
                    struct.pack("<IQQ", 2, 10, 2**64 - 1),
                    struct.pack("<I", 3) + b"\xff" * 24,
                ]
            )
            yield FuzzCase(kind, prefix + header, handshaken=handshaken, eof=eof)
        elif kind == "http":
            method = rng.choice([b"GET", b"POST", b"OPTIONS", b"PRI"])
            yield FuzzCase(kind, method + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n", eof=eof)
        elif kind == "tls-hello":
            yield FuzzCase(kind, hello[: rng.choice([len(hello), 5, 50])], eof=eof)
        elif kind == "unknown-op":
            op = rng.choice(["", "no-such-op", "\x00", "x" * 1000, "handshake", "ÿ"])
            body = frames_bytes({"op": op, "reply": rng.randint(1, 9)})
            yield FuzzCase(kind, hs + body, handshaken=True, eof=eof)
        elif kind == "wrong-types":
            msgs = [_wrong_message(rng, ops) for _ in range(rng.randint(1, 3))]
            body = frames_bytes(msgs if rng.random() < 0.3 else msgs[0])
            yield FuzzCase(kind, hs + body, handshaken=True, eof=eof)
        elif kind == "nesting":
            depth = rng.choice([100, 1000, 100_000])
            yield FuzzCase(kind, hs + _raw_message(_nested(depth)), handshaken=True, eof=eof)
        elif kind == "bad-ext":
            ext = msgpack.ExtType(
                rng.choice([1, 2, 3, 127]),
                msgpack.packb(rng.choice([[1, 0], [5, 5], [1, 0, [9, 9]], [-1, 0], 7, "x"])),
            )
            frame0 = msgpack.packb({"op": rng.choice(ops), "data": ext, "reply": 1})
            extra = [b"\x00" * rng.randint(0, 3) for _ in range(rng.randint(0, 2))]
            yield FuzzCase(kind, hs + _raw_message(frame0, *extra), handshaken=True, eof=eof)
        elif kind == "bad-handshake":
            bad = rng.choice(
                [
                    handshake_bytes(role, protocol=99),
                    handshake_bytes(role, protocol="1"),
                    frames_bytes({"op": "handshake", 1: 2, "protocol": PROTOCOL_VERSION}),
                    frames_bytes(["handshake"]),
                    frames_bytes({"op": "identity", "reply": 1}),
                ]
            )
            yield FuzzCase(kind, bad, eof=eof)
        else:  # not-a-dict
            value: object = rng.choice([1, "op", None, [1, 2], [[{}]], b"\x00", 2.5, {1: {2: 3}}])
            yield FuzzCase(kind, hs + frames_bytes(value), handshaken=True, eof=eof)


def http_cases(seed: int, n: int) -> Iterator[tuple[str, bytes]]:
    """Yield ``n`` ``(kind, request bytes)`` malformed HTTP inputs for the dashboard."""
    rng = random.Random(seed)
    paths = [
        b"/static/../../../../etc/passwd",
        b"/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        b"/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/static//etc/passwd",
        b"/static/..\\..\\..\\etc\\passwd",
        b"/../../../../etc/passwd",
        b"/api/v1/task-stream?since=x&limit=-5",
        b"/api/v1/task-stream?since=99999999999999999999999&limit=1e400",
        b"/api/v1/task-stream?format=compact&merge_ms=nan",
        b"/api/v1/task-stream?format=compact&merge_ms=-inf",
        b"/api/v1/snapshot?since=-1&merge_ms=1e309",
        b"/api/v1/snapshot?limit=%00",
        b"/metrics?x=" + b"%" * 100,
        b"/%ff%fe%00",
        b"/" + b"a" * 10000,
        b"*",
        b"http://evil.example/",
    ]
    kinds = ("traversal", "bad-method", "huge-header", "garbage", "bad-version", "body")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        path = rng.choice(paths)
        if kind == "traversal":
            yield kind, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        elif kind == "bad-method":
            method = rng.choice([b"BREW", b"G\x00T", b"DELETE", b"PUT", b"TRACE", b"X" * 500])
            yield kind, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        elif kind == "huge-header":
            size = rng.choice([9000, 100_000, 1_000_000])
            yield kind, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
        elif kind == "garbage":
            yield kind, rng.randbytes(rng.choice([1, 16, 1000]))
        elif kind == "bad-version":
            version = rng.choice([b"HTTP/9.9", b"HTTP/1", b"HTTPS/1.1", b"", b"HTTP/1.1 extra"])
            yield kind, b"GET " + path + b" " + version + b"\r\nHost: x\r\n\r\n"
        else:  # body
            length = rng.choice([b"-1", b"99999999999999999999", b"abc", b"10"])
            yield (
                kind,
                (
                    b"POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: "
                    + length
                    + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                ),
            )
