"""Data the scheduler keeps for clients: published datasets and cluster metadata.

A dataset is pickled here (cloudpickle, so lambdas and persisted collections travel) while
the futures inside it are noted: the scheduler keeps the bytes unopened and holds those
futures' results on the cluster until the dataset is unpublished, whoever published it.
``get_dataset`` unpickles the bytes with every future bound to the calling client, which
then asks the scheduler for their keys as its own.

Metadata values travel as msgpack: numbers, strings, bytes, None, lists (which come back
as tuples) and dictionaries.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Hashable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import cloudpickle
from dask.typing import no_default

from conveyor.client.future import Future
from conveyor.rpc import RemoteError

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape


class DatasetsMixin:
    """The Client's published datasets and metadata."""

    # --------------------------------------------------------------- metadata

    def set_metadata(self: ClientShape, key: Any, value: Any) -> Any:
        """Store ``value`` on the scheduler under ``key``: one key, or a list of keys
        naming a path in nested dictionaries (made as needed)."""
        msg = {"op": "set-metadata", "keys": _path(key), "value": value}
        return self.sync(self._request, msg)

    def get_metadata(self: ClientShape, key: Any, default: Any = no_default) -> Any:
        """The value stored under ``key`` (or a path of keys); ``default`` if there is
        none, KeyError without one."""
        return self.sync(_get_metadata, self, _path(key), default)

    # --------------------------------------------------------------- datasets

    def publish_dataset(
        self: ClientShape,
        *args: Any,
        name: Hashable | None = None,
        override: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Publish data under names: ``publish_dataset(data, name="x")`` or
        ``publish_dataset(x=data, y=other)``. The futures inside stay computed on the
        cluster until the dataset is unpublished, even after this client releases
        them. KeyError if a name is taken, unless ``override``."""
        items: dict[Hashable, Any] = {}
        if name is not None:
            if not args:
                raise ValueError("publish_dataset(data, name=...) needs the data to publish")
            items[name] = args[0] if len(args) == 1 else args
        elif args:
            raise ValueError(
                "name the data to publish: publish_dataset(data, name='x') or "
                "publish_dataset(x=data)"
            )
        items.update(kwargs)
        if not items:
            raise ValueError("publish_dataset needs something to publish")
        packed = {n: _pickle_noting_futures(data) for n, data in items.items()}
        return self.sync(_publish, self, packed, bool(override))

    def get_dataset(self: ClientShape, name: Hashable, default: Any = no_default) -> Any:
        """The dataset published as ``name`` (its futures now this client's too);
        ``default`` if there is none, KeyError without one."""
        return self.sync(_get_dataset, self, name, default)

    def list_datasets(self: ClientShape) -> Any:
        """The names of the published datasets."""
        return self.sync(_list_datasets, self)

    def unpublish_dataset(self: ClientShape, name: Hashable) -> Any:
        """Remove the dataset ``name`` (KeyError if there is none); its futures' results
        go unless someone else holds them."""
        return self.sync(_unpublish, self, name)

    @property
    def datasets(self: ClientShape) -> Datasets:
        """The published datasets as a mapping: ``client.datasets["x"]``,
        ``client.datasets["x"] = data``, ``del client.datasets["x"]``, ``list(...)``."""
        return Datasets(self)


class Datasets(MutableMapping[Hashable, Any]):
    """The published datasets of a client's cluster, as a mapping (``Client.datasets``).

    With an asynchronous client, ``await client.datasets[name]``; assigning, deleting,
    iterating and ``len`` need a synchronous client (use the ``*_dataset`` methods)."""

    def __init__(self, client: ClientShape) -> None:
        self._client = client

    def _need_sync(self, what: str) -> None:
        if self._client.asynchronous:
            raise TypeError(
                f"client.datasets does not support {what} with an asynchronous client; "
                "use the client's publish_dataset, unpublish_dataset and list_datasets"
            )

    def __getitem__(self, name: Hashable) -> Any:
        return self._client.get_dataset(name)  # type: ignore[attr-defined]

    def __setitem__(self, name: Hashable, data: Any) -> None:
        self._need_sync("assignment")
        self._client.publish_dataset(data, name=name)  # type: ignore[attr-defined]

    def __delitem__(self, name: Hashable) -> None:
        self._need_sync("deletion")
        self._client.unpublish_dataset(name)  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        self._need_sync("'in'")
        return name in self._client.list_datasets()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Hashable]:
        self._need_sync("iteration")
        return iter(self._client.list_datasets())  # type: ignore[attr-defined]

    def __len__(self) -> int:
        self._need_sync("len()")
        return len(self._client.list_datasets())  # type: ignore[attr-defined]


# ------------------------------------------------------------------- helpers


def _path(key: Any) -> list[Any]:
    keys = list(key) if isinstance(key, (list, tuple)) else [key]
    if not keys:
        raise ValueError("a metadata key path needs at least one key")
    return keys


async def _get_metadata(client: ClientShape, keys: list[Any], default: Any) -> Any:
    reply = await client._request({"op": "get-metadata", "keys": keys})
    if reply["found"]:
        return reply["value"]
    if default is no_default:
        raise KeyError(keys[0] if len(keys) == 1 else keys)
    return default


class _NotingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """A cloudpickler that notes the key of every Future it pickles."""

    def __init__(self, file: io.BytesIO, keys: list[Any]) -> None:
        super().__init__(file, protocol=5)
        self.keys = keys

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Future):
            self.keys.append(obj.key)
        return super().reducer_override(obj)


def _pickle_noting_futures(data: Any) -> tuple[bytes, list[Any]]:
    """``data`` pickled, and the keys of the futures inside it."""
    keys: list[Any] = []
    buffer = io.BytesIO()
    try:
        _NotingPickler(buffer, keys).dump(data)
    except Exception as e:
        raise TypeError(f"cannot publish {type(data).__name__}: {e}") from e
    return buffer.getvalue(), list(dict.fromkeys(keys))


class _BindingUnpickler(pickle.Unpickler):
    """Unpickles futures bound to ``client``, which asks for their keys."""

    def __init__(self, data: bytes, client: ClientShape) -> None:
        super().__init__(io.BytesIO(data))
        self.client = client

    def find_class(self, module: str, name: str) -> Any:
        if module == "conveyor.client.future" and name == "_unpickle_future":
            return self.client._adopt_future
        return super().find_class(module, name)


async def _request_or_key_error(client: ClientShape, msg: dict[str, Any]) -> Any:
    """``client._request(msg)``, raising the scheduler's KeyError as a KeyError."""
    try:
        return await client._request(msg)
    except RemoteError as e:
        text = str(e)
        if text.startswith("KeyError: "):
            raise KeyError(text.removeprefix("KeyError: ").strip("'\"")) from None
        raise


async def _publish(
    client: ClientShape, packed: dict[Hashable, tuple[bytes, list[Any]]], override: bool
) -> None:
    for name, (data, keys) in packed.items():
        msg = {"op": "publish-put", "name": name, "data": data, "keys": keys}
        await _request_or_key_error(client, {**msg, "override": override})


async def _get_dataset(client: ClientShape, name: Hashable, default: Any) -> Any:
    found = await client._request({"op": "publish-get", "name": name})
    if found is None:
        if default is no_default:
            raise KeyError(f"Dataset {name!r} not found")
        return default
    return _BindingUnpickler(found["data"], client).load()


async def _list_datasets(client: ClientShape) -> list[Any]:
    return list(await client._request({"op": "publish-list"}))


async def _unpublish(client: ClientShape, name: Hashable) -> None:
    await _request_or_key_error(client, {"op": "publish-delete", "name": name})
