"""Extra services a scheduler runs beside its own listener: ``Scheduler(services=...)``.

``services`` maps a name, or a ``(name, port)`` pair, to a factory called as
``factory(scheduler, **service_kwargs.get(name, {}))`` once the scheduler listens. What
the factory returns is started on the scheduler's event loop:

- an :class:`aiohttp.web.Application` is served over HTTP at the scheduler's host and the
  given port (``0`` or no port: a free one);
- any other object is started with ``listen((host, port))`` (the form distributed's
  services take) or else ``start()``, either of which may be a coroutine; it reports the
  port it serves on as ``.port`` and is stopped with ``close()`` or ``stop()``.

A port may also be written ``"host:port"`` to bind another host than the scheduler's.
Each running service is in ``Scheduler.services`` under its name, with its port in
``scheduler_info()["services"]`` and the scheduler file.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: names the scheduler uses for its own services
RESERVED = frozenset({"dashboard"})


@dataclass(frozen=True)
class ServiceSpec:
    """One service to start: its name, where it listens, and how to make it."""

    name: str
    host: str | None
    port: int
    factory: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_services(
    services: Mapping[Any, Any] | None, service_kwargs: Mapping[Any, Any] | None
) -> list[ServiceSpec]:
    """Check ``services`` and ``service_kwargs`` (see the module docstring) at
    construction, so that a mistake shows before anything listens."""
    specs: list[ServiceSpec] = []
    kwargs_by_name = dict(service_kwargs or {})
    for key, factory in (services or {}).items():
        name, host, port = _name_and_port(key)
        if name in RESERVED:
            raise ValueError(f"services: {name!r} is the scheduler's own service")
        if not callable(factory):
            raise TypeError(f"services[{key!r}] must be callable (a class or a factory)")
        extra = kwargs_by_name.pop(name, {})
        if not isinstance(extra, Mapping):
            raise TypeError(f"service_kwargs[{name!r}] must be a mapping of keywords")
        specs.append(ServiceSpec(name, host, port, factory, dict(extra)))
    if kwargs_by_name:
        raise ValueError(
            f"service_kwargs names services that services= does not define: "
            f"{sorted(map(str, kwargs_by_name))}"
        )
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("services: a name appears twice")
    return specs


def _name_and_port(key: Any) -> tuple[str, str | None, int]:
    if isinstance(key, str):
        return key, None, 0
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        raise TypeError(f"services: a key is a name or (name, port), not {key!r}")
    name, where = key
    if isinstance(where, int) and not isinstance(where, bool):
        return name, None, where
    if isinstance(where, str):
        host, sep, port = where.rpartition(":")
        if (sep and port.isdigit()) or where.isdigit():
            return name, (host.strip("[]") or None) if sep else None, int(port or where)
    raise ValueError(f"services: the port of {name!r} must be an int or 'host:port'")


class AppService:
    """An aiohttp application served on its own port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._runner: Any = None

    async def listen(self, host: str, port: int) -> None:
        """Serve the application at ``host:port`` (0: a free port)."""
        # aiohttp is loaded: the factory made an Application with it
        web = sys.modules["aiohttp.web"]
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()


async def start_service(spec: ServiceSpec, scheduler: Any, default_host: str) -> Any:
    """Make and start the service ``spec`` for ``scheduler``; returns the object to
    keep in ``Scheduler.services``."""
    obj = spec.factory(scheduler, **spec.kwargs)
    host = spec.host or default_host
    web = sys.modules.get("aiohttp.web")
    if web is not None and isinstance(obj, web.Application):
        service = AppService(obj)
        await service.listen(host, spec.port)
        return service
    if hasattr(obj, "listen"):
        await _maybe_await(obj.listen((host, spec.port)))
    elif hasattr(obj, "start"):
        await _maybe_await(obj.start())
    else:
        raise TypeError(
            f"service {spec.name!r}: {type(obj).__name__} is neither an aiohttp "
            "Application nor has listen((host, port)) or start()"
        )
    if not isinstance(getattr(obj, "port", None), int):
        await stop_service(obj)
        raise TypeError(f"service {spec.name!r}: started, but has no integer .port")
    return obj


async def stop_service(service: Any) -> None:
    """Stop a service started by :func:`start_service` (``close()`` or ``stop()``)."""
    stop = getattr(service, "close", None) or getattr(service, "stop", None)
    if stop is not None:
        await _maybe_await(stop())


async def _maybe_await(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result
