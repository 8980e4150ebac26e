"""Introspection and code on the cluster: what workers hold and run, ``run`` on workers,
``run_on_scheduler``, plugins, uploaded files, versions and scheduler files.

Functions, arguments and plugins travel as cloudpickles (by value for modules registered
with ``cloudpickle.register_pickle_by_value``, and for ``__main__``). ``run`` talks to the
workers directly, as ``gather`` does; the rest goes through the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import cloudpickle
from dask.utils import funcname

from conveyor import config
from conveyor.client.structure import as_list, collect_futures
from conveyor.protocol import dumps_function, unpack_traceback, unpickle_bytes
from conveyor.rpc import RemoteError
from conveyor.rpc.versions import mismatches, versions

if TYPE_CHECKING:
    from conveyor.client.future import Future
    from conveyor.client.shape import ClientShape

_ON_ERROR = ("raise", "return", "ignore")


class ControlMixin:
    """The Client's introspection calls and the code it runs on the cluster."""

    # ------------------------------------------------------------ what is where

    def cancel(self: ClientShape, futures: Any, force: bool = False) -> Any:
        """Stop computing these futures and release their results."""
        return self.sync(_cancel, self, collect_futures(futures), force)

    def scheduler_info(self: ClientShape) -> dict[str, Any]:
        """The scheduler's identity and its workers."""
        return self.sync(self._request, {"op": "scheduler-info"})  # type: ignore[no-any-return]

    def who_has(self: ClientShape, futures: Any = None) -> dict[Any, list[str]]:
        """Which workers hold each key."""
        keys = None if futures is None else [f.key for f in collect_futures(futures)]
        return self.sync(self._request, {"op": "who-has", "keys": keys})  # type: ignore[no-any-return]

    def nthreads(self: ClientShape) -> dict[str, int]:
        """Threads per worker."""
        return self.sync(self._request, {"op": "ncores"})  # type: ignore[no-any-return]

    ncores = nthreads

    def story(self: ClientShape, *keys: Any) -> list[Any]:
        """The scheduler's transition log for these keys."""
        return self.sync(self._request, {"op": "story", "keys": list(keys)})  # type: ignore[no-any-return]

    def wait_for_workers(
        self: ClientShape, n_workers: int = 1, timeout: float | str | None = None
    ) -> Any:
        """Block until at least ``n_workers`` workers are connected."""
        return self.sync(_wait_for_workers, self, n_workers, config.parse_duration(timeout))

    def has_what(self: ClientShape, workers: str | Iterable[str] | None = None) -> Any:
        """The keys each worker holds: ``{address: [keys]}`` (all workers by default)."""
        msg = {"op": "has-what", "workers": as_list(workers)}
        return self.sync(_lists, self, msg)

    def processing(self: ClientShape, workers: str | Iterable[str] | None = None) -> Any:
        """The keys each worker is running or has been sent to run: ``{address: [keys]}``."""
        msg = {"op": "processing", "workers": as_list(workers)}
        return self.sync(_lists, self, msg)

    def nbytes(self: ClientShape, keys: Iterable[Any] | None = None, summary: bool = True) -> Any:
        """The size in bytes of each key in memory (``keys``, or all), as measured on
        the workers; with ``summary`` (distributed's default), summed per key prefix
        (``{"inc": 280}``)."""
        msg: dict[str, Any] = {"op": "nbytes", "summary": bool(summary)}
        if keys is not None:
            msg["keys"] = [getattr(k, "key", k) for k in keys]
        return self.sync(self._request, msg)

    @property
    def dashboard_link(self: ClientShape) -> str | None:
        """The scheduler's dashboard URL (``http://127.0.0.1:8787/``; a ``LocalCluster``
        serves one by default), or None when it serves none."""
        link = getattr(self.cluster, "dashboard_link", None)
        return link if isinstance(link, str) else self._scheduler_dashboard

    def write_scheduler_file(self: ClientShape, scheduler_file: str) -> Any:
        """Write the scheduler's identity (``scheduler_info()``, address included) as JSON
        to ``scheduler_file``, so that other clients can connect with it. ValueError if
        this client already has a scheduler file."""
        if self.scheduler_file is not None:
            raise ValueError(f"this client already uses the scheduler file {self.scheduler_file}")
        return self.sync(_write_scheduler_file, self, scheduler_file)

    def get_versions(self: ClientShape, check: bool = False) -> Any:
        """Host details and package versions of this client, the scheduler and every
        worker: ``{"client": {...}, "scheduler": {...}, "workers": {address: {...}}}``,
        each ``{"host": {...}, "packages": {name: version}}``. With ``check``, raise
        ValueError if python (major.minor), conveyor, dask, msgpack or cloudpickle
        differ between them."""
        return self.sync(_get_versions, self, check)

    # ---------------------------------------------------------------- run code

    def run(
        self: ClientShape,
        function: Callable[..., Any],
        *args: Any,
        workers: str | Iterable[str] | None = None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> Any:
        """Call ``function(*args, **kwargs)`` on every worker (or those at ``workers``,
        addresses or names), in the worker's process on its event loop, and return
        ``{address: result}``. A function taking ``dask_worker`` gets the Worker; a
        coroutine function is awaited. ``on_error``: "raise" the first exception,
        "return" exceptions as results, or "ignore" (leave those workers out). With
        ``wait=False``, return None at once without waiting for the calls. With
        ``nanny=True`` the function runs in the nannies of those workers instead
        (``dask_worker`` gets the Nanny) and results are keyed by nanny address;
        ValueError if one of them has no nanny."""
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")
        if not callable(function):
            raise TypeError(f"run needs a callable, not {type(function).__name__}")
        msg = _call_message("run", function, args, kwargs)
        return self.sync(_run, self, msg, as_list(workers), wait, on_error, nanny)

    def run_on_scheduler(
        self: ClientShape, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Call ``function(*args, **kwargs)`` in the scheduler's process, on its event
        loop, and return the result (``dask_scheduler`` gets the Scheduler; a coroutine
        function is awaited). Only schedulers that allow remote code run it (a
        LocalCluster's does); others refuse with PermissionError saying how to allow it."""
        if not callable(function):
            raise TypeError(f"run_on_scheduler needs a callable, not {type(function).__name__}")
        msg = _call_message("run-on-scheduler", function, args, kwargs)
        return self.sync(_run_on_scheduler, self, msg)

    # ----------------------------------------------------------------- plugins

    def register_plugin(
        self: ClientShape, plugin: Any, name: str | None = None, idempotent: bool | None = None
    ) -> Any:
        """Register a scheduler, worker or nanny plugin, by its base class.

        A :class:`~conveyor.WorkerPlugin` is set up on every worker, and on workers
        that join later; returns ``{address: {"status": "OK"}}`` and raises what a
        worker's ``setup`` raised. A :class:`~conveyor.NannyPlugin` is set up the same
        way in every nanny (keyed by nanny address). A :class:`~conveyor.SchedulerPlugin`
        is added to the scheduler, which must allow remote code. A plugin of the same
        name replaces the old one, unless ``idempotent``, which keeps the old one.
        """
        kind = _plugin_kind(plugin)
        if kind is None:
            raise TypeError(
                f"{type(plugin).__name__} is not a SchedulerPlugin, WorkerPlugin or "
                "NannyPlugin subclass"
            )
        name = name or getattr(plugin, "name", None) or f"{funcname(type(plugin))}-{uuid.uuid4()}"
        msg = {"name": name, "plugin": _pickle(plugin), "idempotent": bool(idempotent)}
        if kind == "scheduler":
            return self.sync(_scheduler_request, self, {"op": "register-scheduler-plugin", **msg})
        if kind == "nanny":
            nanny_msg = {"op": "register-nanny-plugin", **msg}
            return self.sync(_worker_plugin_request, self, nanny_msg)
        return self.sync(
            _worker_plugin_request, self, {"op": "register-worker-plugin", "kind": "pickle", **msg}
        )

    def register_worker_plugin(
        self: ClientShape, plugin: Any, name: str | None = None, nanny: bool | None = None
    ) -> Any:
        """Register a worker plugin, or with ``nanny=True`` a nanny plugin
        (distributed's older spelling of ``register_plugin``)."""
        wanted = "nanny" if nanny else "worker"
        if _plugin_kind(plugin) != wanted:
            raise TypeError(
                f"{type(plugin).__name__} is not a {wanted.capitalize()}Plugin subclass"
            )
        return ControlMixin.register_plugin(self, plugin, name)

    def unregister_worker_plugin(self: ClientShape, name: str, nanny: bool | None = None) -> Any:
        """Tear the worker plugin ``name`` (with ``nanny=True``, the nanny plugin) down
        everywhere and forget it (ValueError if there is none); returns
        ``{address: {"status": "OK"}}``."""
        op = "unregister-nanny-plugin" if nanny else "unregister-worker-plugin"
        msg = {"op": op, "name": name}
        return self.sync(_worker_plugin_request, self, msg)

    def unregister_scheduler_plugin(self: ClientShape, name: str) -> Any:
        """Remove the scheduler plugin ``name`` that a client registered."""
        msg = {"op": "unregister-scheduler-plugin", "name": name}
        return self.sync(_scheduler_request, self, msg)

    def upload_file(self: ClientShape, filename: str | os.PathLike[str], load: bool = True) -> Any:
        """Send a file (a ``.py`` module, or an ``.egg``/``.zip``/``.whl`` archive) to
        every worker, and to workers that join later, where tasks can import it; with
        ``load``, each worker imports it (again, if it had: a new version replaces the
        old). Returns ``{address: {"status": "OK"}}``; raises what a worker raised."""
        path = os.fspath(filename)
        with open(path, "rb") as f:
            data = f.read()
        base = os.path.basename(path)
        msg = {
            "op": "register-worker-plugin",
            "kind": "upload",
            "name": f"upload-file-{base}",
            "filename": base,
            "data": data,
            "load": bool(load),
        }
        return self.sync(_worker_plugin_request, self, msg)


# ------------------------------------------------------------------- helpers


def _pickle(obj: Any) -> bytes:
    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _call_message(op: str, function: Callable[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
    return {
        "op": op,
        "function": dumps_function(function),
        "args": _pickle(tuple(args)),
        "kwargs": _pickle(dict(kwargs)),
    }


def _plugin_kind(plugin: Any) -> str | None:
    """ "scheduler", "worker" or "nanny" by the plugin's base classes (conveyor's, or
    distributed's of the same names), or None."""
    bases = {cls.__name__ for cls in type(plugin).__mro__}
    for kind in ("nanny", "worker", "scheduler"):
        if f"{kind.capitalize()}Plugin" in bases:
            return kind
    return None


def _exception(reply: dict[str, Any]) -> BaseException:
    """The exception a failed call raised remotely, with its traceback."""
    exc: BaseException
    try:
        loaded = unpickle_bytes(reply["exception"]) if reply.get("exception") else None
    except Exception:
        loaded = None
    if isinstance(loaded, BaseException):
        exc = loaded
    else:
        exc = RuntimeError(str(reply.get("text") or "the remote call failed"))
    tb = unpack_traceback(reply.get("traceback"))
    return exc.with_traceback(tb) if tb is not None else exc


#: errors a scheduler's refusal is raised as here, by the name it arrives with
_LOCAL_ERRORS: dict[str, type[Exception]] = {
    "RemoteCodeDisabled": PermissionError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "KeyError": KeyError,
}


def _refused(error: RemoteError) -> BaseException:
    """A scheduler's refusal ("ValueError: ...") as the exception it names, else ``error``."""
    name, _, text = str(error).partition(": ")
    kind = _LOCAL_ERRORS.get(name)
    return error if kind is None else kind(text)


async def _lists(client: ClientShape, msg: dict[str, Any]) -> dict[str, list[Any]]:
    reply = await client._request(msg)
    return {address: list(keys) for address, keys in reply.items()}


async def _write_scheduler_file(client: ClientShape, path: str) -> None:
    info = await client._request({"op": "scheduler-info"})
    text = json.dumps(info, indent=2, default=str)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def worker_addresses(client: ClientShape, workers: list[str] | None) -> list[str]:
    """Addresses of ``workers`` (addresses or names; all workers if None).
    ValueError for one the scheduler does not know."""
    info = (await client._request({"op": "scheduler-info"}))["workers"]
    if workers is None:
        return sorted(info)
    by_name = {str(w["name"]): a for a, w in info.items()}
    out = []
    for w in workers:
        address = w if w in info else by_name.get(str(w))
        if address is None:
            raise ValueError(f"no worker at or named {w!r}")
        out.append(address)
    return list(dict.fromkeys(out))


async def _ask_worker(client: ClientShape, address: str, msg: dict[str, Any]) -> Any:
    assert client.pool is not None
    try:
        peer = await client.pool.get(address)
        return await peer.request(msg)
    except (OSError, RemoteError) as e:  # the worker left, or does not know the request
        return {"status": "error", "exception": None, "text": f"{type(e).__name__}: {e}"}


async def _run(
    client: ClientShape,
    msg: dict[str, Any],
    workers: list[str] | None,
    wait: bool,
    on_error: str,
    nanny: bool = False,
) -> dict[str, Any] | None:
    assert client.pool is not None
    addresses = await worker_addresses(client, workers)
    if nanny:
        nannies = await client._request({"op": "nannies"})
        orphans = [a for a in addresses if a not in nannies]
        if orphans:
            raise ValueError(f"run(nanny=True): workers without a nanny: {orphans}")
        addresses = list(dict.fromkeys(nannies[a] for a in addresses))
    if not wait:
        for address in addresses:
            peer = await client.pool.get(address)
            peer.send(dict(msg))
        return None
    replies = await asyncio.gather(*(_ask_worker(client, a, dict(msg)) for a in addresses))
    out: dict[str, Any] = {}
    for address, reply in zip(addresses, replies, strict=True):
        if reply.get("status") == "OK":
            out[address] = unpickle_bytes(reply["result"])
        elif on_error == "raise":
            raise _exception(reply)
        elif on_error == "return":
            out[address] = _exception(reply)
    return out


async def _run_on_scheduler(client: ClientShape, msg: dict[str, Any]) -> Any:
    reply = await _scheduler_request(client, msg)
    if reply.get("status") != "OK":
        raise _exception(reply)
    return unpickle_bytes(reply["result"])


async def _scheduler_request(client: ClientShape, msg: dict[str, Any]) -> Any:
    try:
        return await client._request(msg)
    except RemoteError as e:
        raise _refused(e) from None


async def _cancel(client: ClientShape, futures: list[Future], force: bool) -> None:
    keys = list({f.key for f in futures})
    await client._request({"op": "cancel-keys", "keys": keys, "force": force})
    for f in futures:
        if not f._state.done() or f._state.status == "finished":
            f._state.cancel()
        with client._lock:
            if client.futures.get(f.key) is f._state:
                del client.futures[f.key]


async def _wait_for_workers(client: ClientShape, n_workers: int, timeout: float | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while len(await client._request({"op": "ncores"})) < n_workers:
        if deadline is not None and loop.time() > deadline:
            raise TimeoutError(f"fewer than {n_workers} workers after {timeout} s")
        await asyncio.sleep(0.05)


async def _worker_plugin_request(client: ClientShape, msg: dict[str, Any]) -> dict[str, Any]:
    """Send a worker-plugin request; raise what the first failing worker raised."""
    replies = await _scheduler_request(client, msg)
    out = {}
    for address, reply in replies.items():
        if reply.get("status") != "OK":
            raise _exception(reply)
        out[address] = {"status": "OK"}
    return out


async def _get_versions(client: ClientShape, check: bool) -> dict[str, Any]:
    scheduler = await client._request({"op": "versions"})
    addresses = await worker_addresses(client, None)
    replies = await asyncio.gather(*(_ask_worker(client, a, {"op": "versions"}) for a in addresses))
    workers = {a: r for a, r in zip(addresses, replies, strict=True) if "packages" in r}
    mine = versions()
    if check:
        wrong = mismatches(mine, scheduler, workers)
        if wrong:
            lines = [f"  {name}: {seen}" for name, seen in wrong.items()]
            raise ValueError("Mismatched versions found:\n" + "\n".join(lines))
    return {"client": mine, "scheduler": scheduler, "workers": workers}
