"""Extra services (``Scheduler(services=..., service_kwargs=...)``): started with the
scheduler on the loopback interface, listed with their ports, stopped with it; mistakes
refused before anything listens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conveyor import Scheduler
from conveyor.testing.cluster import in_process_cluster


def hello_app(scheduler: Scheduler, greeting: str = "hello") -> web.Application:
    """An HTTP service that reads the scheduler it serves."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"greeting": greeting, "workers": len(scheduler.workers)})

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


class EchoServer:
    """A service in distributed's form: ``listen((host, port))``, ``.port``, ``stop()``."""

    instances: list[EchoServer] = []

    def __init__(self, scheduler: Scheduler, suffix: bytes = b"!") -> None:
        self.scheduler = scheduler
        self.suffix = suffix
        self.server: asyncio.Server | None = None
        self.port = 0
        self.host = ""
        self.stopped = False
        EchoServer.instances.append(self)

    async def listen(self, address: tuple[str, int]) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readline()).strip() + self.suffix)
            await writer.drain()
            writer.close()

        self.host = address[0]
        self.server = await asyncio.start_server(echo, *address)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.stopped = True


def test_services_start_with_the_scheduler_and_stop_with_it(tmp_path: Path) -> None:
    EchoServer.instances.clear()
    sched_file = tmp_path / "scheduler.json"

    async def main() -> None:
        kwargs: dict[str, Any] = {
            "services": {"hello": hello_app, ("echo", 0): EchoServer},
            "service_kwargs": {"hello": {"greeting": "bonjour"}, "echo": {"suffix": b"?"}},
            "scheduler_file": str(sched_file),
        }
        async with in_process_cluster(n_workers=2, scheduler_kwargs=kwargs) as (s, _, c):
            ports = s.service_ports()
            assert set(ports) == {"hello", "echo"} and all(ports.values())
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{ports['hello']}/hello"
                async with http.get(url) as resp:
                    assert await resp.json() == {"greeting": "bonjour", "workers": 2}
            reader, writer = await asyncio.open_connection("127.0.0.1", ports["echo"])
            writer.write(b"ping\n")
            assert await reader.read() == b"ping?"
            writer.close()
            echo = EchoServer.instances[0]
            assert echo.host == "127.0.0.1" and echo.scheduler is s
            info = await c.scheduler_info()
            assert info["services"] == ports
            assert json.loads(sched_file.read_text())["services"] == ports
        assert echo.stopped and not s.services
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", ports["hello"])

    asyncio.run(main())


def test_a_service_may_name_its_host_and_port() -> None:
    async def main() -> None:
        kwargs = {"services": {("hello", "127.0.0.1:0"): hello_app}}
        async with in_process_cluster(n_workers=1, scheduler_kwargs=kwargs) as (s, _, _c):
            assert s.service_ports()["hello"] > 0

    asyncio.run(main())


def test_mistakes_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="does not define"):
        Scheduler(services={"hello": hello_app}, service_kwargs={"helo": {}})
    with pytest.raises(ValueError, match="does not define"):
        Scheduler(service_kwargs={"hello": {}})
    with pytest.raises(ValueError, match="scheduler's own"):
        Scheduler(services={"dashboard": hello_app})
    with pytest.raises(TypeError, match="callable"):
        Scheduler(services={"hello": 3})
    with pytest.raises(TypeError, match="name or \\(name, port\\)"):
        Scheduler(services={("hello", 1, 2): hello_app})
    with pytest.raises(ValueError, match="int or 'host:port'"):
        Scheduler(services={("hello", "nowhere"): hello_app})
    with pytest.raises(TypeError, match="mapping"):
        Scheduler(services={"hello": hello_app}, service_kwargs={"hello": 3})


def test_a_service_that_cannot_start_stops_the_scheduler_start() -> None:
    class NoPort:
        def __init__(self, scheduler: Scheduler) -> None:
            self.closed = False

        def start(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    made: list[Any] = []

    def factory(scheduler: Scheduler) -> Any:
        made.append(NoPort(scheduler))
        return made[-1]

    async def main() -> None:
        s = Scheduler(host="127.0.0.1", port=0, dashboard=False, services={"bad": factory})
        with pytest.raises(TypeError, match=r"no integer \.port"):
            await s.start()
        assert made[0].closed and not s.services

    asyncio.run(main())
