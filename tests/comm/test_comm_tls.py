"""TLS: the tls:// transport, its refusals, the encryption policy and Security."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import ssl
import sys
import tempfile
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from conveyor import Security
from conveyor.comm import Comm, CommClosedError, connect, listen, parse_address, parse_host_port
from conveyor.comm.certificates import TemporaryCredentials, make_temporary_credentials
from conveyor.comm.tls import TLSRefusedError, check_ssl_context

LOCAL_TLS = "tls://127.0.0.1:0"
#: how a client learns that the server refused its certificate
REFUSED = r"refused this side's (TLS )?certificate|TLS handshake .* failed"

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test coroutine (with a time limit) on the default loop and on uvloop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if request.param == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    def run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 60))

    return run


@pytest.fixture(scope="module")
def security() -> Security:
    return Security.temporary()


@pytest.fixture(scope="module")
def other_ca() -> TemporaryCredentials:
    """Credentials from a CA the cluster does not trust."""
    return make_temporary_credentials()


class Server:
    """An echo handler that records the comms it was given."""

    def __init__(self) -> None:
        self.comms: list[Comm] = []

    async def __call__(self, comm: Comm) -> None:
        self.comms.append(comm)
        try:
            while True:
                msg = await comm.read()
                await comm.write(msg)
                if msg == "push":  # a message the server sends unprompted
                    await comm.write({"pushed": b"x" * 3_000_000})
        except CommClosedError:
            pass


def client_context(
    ca: str, cert: str | None = None, key: str | None = None, **settings: Any
) -> ssl.SSLContext:
    """A client context made by hand, for peers Security would not make."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca)
    if cert is not None:
        sec = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key)
        ctx = sec.get_connection_args("client")["ssl_context"]
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def host_port(addr: str) -> tuple[str, int]:
    return parse_host_port(parse_address(addr)[1])


async def round_trip(addr: str, security: Security) -> None:
    comm = await connect(addr, timeout=10, **security.get_connection_args("client"))
    await comm.write({"op": "ping", "n": 1})
    assert await comm.read() == {"op": "ping", "n": 1}
    await comm.close()


def asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- the transport ---------------------------------------------------------------------


def test_round_trip_both_directions_and_large_messages(run: Runner, security: Security) -> None:
    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **security.get_listen_args("scheduler")) as lst:
            assert lst.contact_address.startswith("tls://127.0.0.1:")
            comm = await connect(lst.contact_address, **security.get_connection_args("worker"))
            assert comm.peer_address == lst.contact_address
            assert comm.local_address.startswith("tls://127.0.0.1:")
            assert comm.peer_info["op"] == "handshake"
            await comm.write("push")
            assert await comm.read() == "push"
            assert await comm.read() == {"pushed": b"x" * 3_000_000}  # server -> client
            big = {"data": os.urandom(12_000_000), "more": (b"y" * 70_000,) * 20}
            await comm.write(big)  # client -> server -> client
            assert await comm.read() == big
            await comm.close()
            assert len(server.comms) == 1
            assert server.comms[0].peer_address == comm.local_address

    run(main())


def test_silent_peer_is_closed_after_the_handshake_timeout(run: Runner, security: Security) -> None:
    async def main() -> None:
        server = Server()
        args = security.get_listen_args("scheduler")
        async with listen(LOCAL_TLS, server, handshake_timeout=0.3, **args) as lst:
            reader, writer = await asyncio.open_connection(*host_port(lst.contact_address))
            loop = asyncio.get_running_loop()
            start = loop.time()
            with contextlib.suppress(ConnectionResetError):  # closed, not answered
                assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.2 < loop.time() - start < 3
            writer.close()
            assert server.comms == []
            await round_trip(lst.contact_address, security)

    run(main())


def test_plain_tcp_client_is_refused(
    run: Runner, security: Security, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **security.get_listen_args("scheduler")) as lst:
            plain = lst.contact_address.replace("tls://", "tcp://")
            with pytest.raises(CommClosedError):
                await connect(plain, timeout=5)
            assert server.comms == []
            await round_trip(lst.contact_address, security)  # still serving
            assert len(server.comms) == 1

    run(main())
    assert asyncio_errors(caplog) == []


def test_tls_client_to_plain_listener_fails(run: Runner, security: Security) -> None:
    async def main() -> None:
        async with listen("tcp://127.0.0.1:0", Server()) as lst:
            tls = lst.contact_address.replace("tcp://", "tls://")
            with pytest.raises(OSError):
                await connect(tls, timeout=5, **security.get_connection_args("client"))

    run(main())


def test_client_certificate_from_another_ca_is_refused(
    run: Runner,
    security: Security,
    other_ca: TemporaryCredentials,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert security.tls_ca_file is not None
    # trusts the cluster's CA, but presents a certificate signed by another one
    foreign = client_context(security.tls_ca_file, other_ca.cert, other_ca.key)

    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **security.get_listen_args("worker")) as lst:
            with pytest.raises(TLSRefusedError, match=REFUSED):
                await connect(lst.contact_address, timeout=5, ssl_context=foreign)
            assert server.comms == []
            await round_trip(lst.contact_address, security)

    run(main())
    assert asyncio_errors(caplog) == []


def test_server_certificate_from_another_ca_is_refused(
    run: Runner, security: Security, other_ca: TemporaryCredentials
) -> None:
    impostor = Security(
        tls_ca_file=other_ca.ca_cert,
        tls_scheduler_cert=other_ca.cert,
        tls_scheduler_key=other_ca.key,
    )

    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **impostor.get_listen_args("scheduler")) as lst:
            with pytest.raises(TLSRefusedError, match="certificate verify failed"):
                await connect(
                    lst.contact_address, timeout=5, **security.get_connection_args("client")
                )
            assert server.comms == []

    run(main())


@pytest.mark.parametrize("tls_version", ["1.3", "1.2"])
def test_client_without_certificate_is_refused_at_once(
    run: Runner, security: Security, tls_version: str
) -> None:
    assert security.tls_ca_file is not None
    anonymous = client_context(security.tls_ca_file)  # verifies the server, shows nothing
    server_security = Security(  # contexts of its own, since this test changes one
        tls_ca_file=security.tls_ca_file,
        tls_scheduler_cert=security.tls_scheduler_cert,
        tls_scheduler_key=security.tls_scheduler_key,
    )
    args = server_security.get_listen_args("scheduler")
    if tls_version == "1.2":  # the refusal comes during the TLS handshake, not after it
        args["ssl_context"].maximum_version = ssl.TLSVersion.TLSv1_2

    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **args) as lst:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(TLSRefusedError, match=REFUSED):
                await connect(lst.contact_address, timeout=30, ssl_context=anonymous)
            assert loop.time() - start < 10  # not retried until the timeout
            assert server.comms == []
            await round_trip(lst.contact_address, security)

    run(main())


def test_tls_older_than_1_2_is_refused(run: Runner, security: Security) -> None:
    assert security.tls_ca_file is not None
    # a client that offers TLS 1.0-1.1 only (OpenSSL's security level 0 lets it try)
    sec = Security(
        tls_ca_file=security.tls_ca_file,
        tls_client_cert=security.tls_client_cert,
        tls_client_key=security.tls_client_key,
    )
    old = client_context(security.tls_ca_file)
    old_with_cert = sec.get_connection_args("client")["ssl_context"]
    with warnings.catch_warnings():  # setting TLS 1.0 and 1.1 is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for ctx in (old, old_with_cert):
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1

    async def main() -> None:
        server = Server()
        async with listen(LOCAL_TLS, server, **security.get_listen_args("scheduler")) as lst:
            # conveyor's connect will not even try with such a context
            with pytest.raises(ValueError, match=r"allows TLSv1; .*TLS 1\.2 or newer"):
                await connect(lst.contact_address, timeout=5, ssl_context=old_with_cert)
            # and the listener refuses the old hello of a client that tries anyway
            for ctx in (old, old_with_cert):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    _, writer = await asyncio.open_connection(
                        *host_port(lst.contact_address), ssl=ctx, server_hostname=None
                    )
                    writer.close()
            assert server.comms == []
            await round_trip(lst.contact_address, security)
        # control: the refusal was the listener's, since a lax server accepts that client
        lax = Security(
            tls_ca_file=security.tls_ca_file,
            tls_scheduler_cert=security.tls_scheduler_cert,
            tls_scheduler_key=security.tls_scheduler_key,
        ).get_listen_args("scheduler")["ssl_context"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            lax.set_ciphers("DEFAULT:@SECLEVEL=0")
            lax.minimum_version = ssl.TLSVersion.TLSv1
        plain = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=lax)
        async with plain:
            port = plain.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=old_with_cert)
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
            writer.close()

    run(main())


# -- the encryption policy -------------------------------------------------------------


def test_require_encryption_refuses_plain_tcp(run: Runner) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match=r"encryption is required.*tls://"):
            listen("tcp://127.0.0.1:0", Server(), require_encryption=True)
        async with listen("tcp://127.0.0.1:0", Server()) as lst:
            with pytest.raises(ValueError, match="encryption is required"):
                await connect(lst.contact_address, timeout=5, require_encryption=True)
            with dask.config.set({"conveyor.comm.require-encryption": True}):
                with pytest.raises(ValueError, match="encryption is required"):
                    listen("tcp://127.0.0.1:0", Server())
                with pytest.raises(ValueError, match="encryption is required"):
                    await connect(lst.contact_address, timeout=5)
                # explicit permission beats the configuration
                comm = await connect(lst.contact_address, timeout=5, require_encryption=False)
                await comm.close()
                # inproc never leaves the process: allowed
                async with listen("inproc://", Server()) as inproc:
                    comm = await connect(inproc.contact_address, timeout=5)
                    await comm.close()

    run(main())


def test_require_encryption_allows_tls(run: Runner) -> None:
    security = Security.temporary(require_encryption=True)
    assert security.get_listen_args("scheduler")["require_encryption"] is True

    async def main() -> None:
        async with listen(LOCAL_TLS, Server(), **security.get_listen_args("scheduler")) as lst:
            await round_trip(lst.contact_address, security)

    run(main())


def test_contexts_must_match_the_scheme(run: Runner, security: Security) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="needs an ssl_context"):
            listen(LOCAL_TLS, Server())
        with pytest.raises(ValueError, match="needs an ssl_context"):
            await connect("tls://127.0.0.1:1", timeout=5)
        server_ctx = security.get_listen_args("scheduler")["ssl_context"]
        client_ctx = security.get_connection_args("client")["ssl_context"]
        with pytest.raises(ValueError, match="not a tls:// address"):
            listen("tcp://127.0.0.1:0", Server(), ssl_context=server_ctx)
        with pytest.raises(ValueError, match="not a tls:// address"):
            await connect("tcp://127.0.0.1:1", ssl_context=client_ctx)
        with pytest.raises(ValueError, match="server-side"):
            await connect("tls://127.0.0.1:1", timeout=5, ssl_context=server_ctx)
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # does not ask for client certificates
        with pytest.raises(ValueError, match="mutual TLS"):
            listen(LOCAL_TLS, Server(), ssl_context=lax)
        # Security arguments without TLS credentials suit a plain address
        plain = Security(require_encryption=False)
        assert plain.get_listen_args("worker") == {"ssl_context": None, "require_encryption": False}
        async with listen("tcp://127.0.0.1:0", Server(), **plain.get_listen_args("worker")) as lst:
            comm = await connect(lst.contact_address, **plain.get_connection_args("client"))
            await comm.close()

    run(main())


def test_check_ssl_context_refuses_old_versions(security: Security) -> None:
    ctx = security.get_connection_args("client")["ssl_context"]
    assert check_ssl_context(ctx, server_side=False, addr="tls://x:1") is ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ValueError, match="TLSv1_1"):
        check_ssl_context(ctx, server_side=False, addr="tls://x:1")
    with pytest.raises(ValueError, match=r"ssl\.SSLContext"):
        check_ssl_context("context", server_side=True, addr="tls://x:1")


# -- Security --------------------------------------------------------------------------


def test_contexts_are_mutual_tls_with_the_cluster_ca_only(security: Security) -> None:
    for role in ("scheduler", "worker", "nanny", "client"):
        for args in (security.get_listen_args(role), security.get_connection_args(role)):
            ctx = args["ssl_context"]
            assert isinstance(ctx, ssl.SSLContext)
            assert ctx.verify_mode == ssl.CERT_REQUIRED
            assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
            assert not ctx.check_hostname
            assert ctx.cert_store_stats()["x509_ca"] == 1  # not the system's CAs
            assert args["require_encryption"] is True
    assert security.get_listen_args("scheduler")["ssl_context"].protocol == (
        ssl.PROTOCOL_TLS_SERVER
    )
    with pytest.raises(ValueError, match="Unknown role"):
        security.get_listen_args("dashboard")


@pytest.fixture
def credential_files(tmp_path: Path, security: Security) -> dict[str, str]:
    """The temporary credentials written to files (as a user's would be)."""
    assert security.tls_ca_file and security.tls_client_cert and security.tls_client_key
    files = {"ca": security.tls_ca_file, "cert": security.tls_client_cert}
    files["key"] = security.tls_client_key
    files["both"] = security.tls_client_cert + security.tls_client_key
    paths = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        paths[name] = str(path)
    return paths


def test_security_from_files_and_config(run: Runner, credential_files: dict[str, str]) -> None:
    f = credential_files
    server = Security(
        tls_ca_file=f["ca"],
        tls_scheduler_cert=f["both"],  # a certificate file holding its key
        tls_min_version="1.3",
        require_encryption=True,
    )
    assert server.tls_scheduler_key is None
    assert server.get_listen_args("scheduler")["ssl_context"].minimum_version == (
        ssl.TLSVersion.TLSv1_3
    )
    assert server.get_listen_args("worker")["ssl_context"] is None  # no worker credentials
    settings = {
        "conveyor.comm.tls.ca-file": f["ca"],
        "conveyor.comm.tls.client.cert": f["cert"],
        "conveyor.comm.tls.client.key": f["key"],
        "conveyor.comm.tls.ciphers": "ECDHE+AESGCM",
        "conveyor.comm.tls.min-version": 1.2,
        "conveyor.comm.require-encryption": True,
    }
    with dask.config.set(settings):
        client = Security()
    assert client.tls_client_cert == f["cert"] and client.require_encryption
    assert client.tls_ciphers == "ECDHE+AESGCM"
    assert f["ca"] in repr(client)

    async def main() -> None:
        async with listen(LOCAL_TLS, Server(), **server.get_listen_args("scheduler")) as lst:
            await round_trip(lst.contact_address, client)

    run(main())


def test_bad_constructions_raise(
    credential_files: dict[str, str], security: Security, other_ca: TemporaryCredentials
) -> None:
    f = credential_files
    with pytest.raises(ValueError, match="tls_client_key is given without tls_client_cert"):
        Security(tls_ca_file=f["ca"], tls_client_key=f["key"])
    with pytest.raises(ValueError, match="without tls_ca_file"):
        Security(tls_worker_cert=f["cert"], tls_worker_key=f["key"])
    with pytest.raises(ValueError, match="no key in that file"):
        Security(tls_ca_file=f["ca"], tls_worker_cert=f["cert"])
    with pytest.raises(ValueError, match="not a matching"):
        Security(tls_ca_file=f["ca"], tls_worker_cert=f["cert"], tls_worker_key=other_ca.key)
    with pytest.raises(FileNotFoundError, match="tls_ca_file: no such file"):
        Security(tls_ca_file="/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError, match="tls_scheduler_key"):
        Security(tls_ca_file=f["ca"], tls_scheduler_cert=f["cert"], tls_scheduler_key="nope")
    with pytest.raises(ValueError, match=r"tls_ca_file .* no usable certificate"):
        Security(tls_ca_file=f["key"], tls_client_cert=f["both"])
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1, "1.1", 1.0):
        with pytest.raises(ValueError, match=r"TLS 1\.2 or newer|older than 1\.2"):
            Security(tls_min_version=old)
    with pytest.raises(ValueError, match="selects no cipher"):
        Security(tls_ca_file=f["ca"], tls_client_cert=f["both"], tls_ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ValueError, match="require_encryption must be"):
        Security(require_encryption="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Security(tls_cert=f["cert"])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="tls_min_version"):
        Security.temporary(tls_min_version=ssl.TLSVersion.TLSv1_1)


@pytest.fixture
def audit_opens() -> Iterator[list[tuple[str, object]]]:
    """Files opened for writing (by Python code) while the fixture is active."""
    opened: list[tuple[str, object]] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not active or event != "open" or not isinstance(args[0], (str, bytes, Path)):
            return
        mode, flags = args[1], args[2]
        writes = isinstance(mode, str) and any(c in mode for c in "wax+")
        writes |= isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writes:
            opened.append((os.fsdecode(args[0]), mode))

    sys.addaudithook(hook)  # cannot be removed: it goes quiet instead
    yield opened
    active.clear()


def test_temporary_writes_nothing_and_hides_keys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    audit_opens: list[tuple[str, object]],
) -> None:
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(cwd)
    before = {p: sorted(os.listdir(p)) for p in (tmp, cwd)}
    security = Security.temporary()
    assert {p: sorted(os.listdir(p)) for p in (tmp, cwd)} == before
    assert audit_opens == []
    (tmp / "control").write_text("x")  # the hook does see writes
    assert audit_opens == [(str(tmp / "control"), "w")]
    audit_opens.clear()
    assert "BEGIN" not in repr(security) and "BEGIN" not in str(security)
    assert "<in memory>" in repr(security)
    assert security.tls_client_key is not None and "PRIVATE KEY" in security.tls_client_key
    copy = pickle.loads(pickle.dumps(security))  # travels to processes it starts
    assert copy.tls_client_key == security.tls_client_key
    assert copy.get_listen_args("worker")["ssl_context"] is not None


def test_memory_file_fallback_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, security: Security
) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    monkeypatch.delattr(os, "memfd_create", raising=False)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("conveyor-tls-")}
    copy = pickle.loads(pickle.dumps(security))
    assert copy.get_connection_args("client")["ssl_context"] is not None
    after = {n for n in os.listdir("/dev/shm") if n.startswith("conveyor-tls-")}
    assert after <= before
