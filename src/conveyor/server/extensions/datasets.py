"""Published datasets: named data that outlives the client that published it.

A client pickles the data (a future, a persisted collection, anything) on its side; the
scheduler keeps the bytes unopened with the keys of the futures inside them. Those keys
are wanted by a pseudo-client, ``published-datasets``, through the state machine's
``ClientDesiresKeys``/``ClientReleasesKeys`` events, so their results stay on the cluster
after the publishing client releases its own futures, until the dataset is unpublished.
A client that gets the dataset unpickles it and asks for its keys as its own.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from conveyor.core import events as se
from conveyor.rpc import Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

#: the pseudo-client that wants the keys of published datasets
PUBLISHED = "published-datasets"


class DatasetsExtension:
    """Scheduler side of ``Client.publish_dataset`` and friends."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: name -> {"data": opaque bytes, "keys": keys of the futures inside}
        self.datasets: dict[Hashable, dict[str, Any]] = {}
        #: key -> how many datasets hold it
        self._holds: dict[Any, int] = {}
        scheduler.handlers.update(
            {
                "publish-put": self.put,
                "publish-get": self.get,
                "publish-list": lambda p, m: sorted(self.datasets, key=str),
                "publish-delete": self.delete,
            }
        )

    def put(self, peer: Peer, msg: Msg) -> None:
        """Publish ``msg["data"]`` as ``msg["name"]`` (KeyError if taken, unless
        ``override``), holding the keys it names."""
        name = _name(msg)
        if name in self.datasets and not msg.get("override"):
            raise KeyError(f"Dataset {name!r} already exists")
        keys = list(dict.fromkeys(msg.get("keys") or ()))
        self._hold(keys)  # before the old dataset lets go: keys they share stay held
        old = self.datasets.get(name)
        self.datasets[name] = {"data": msg["data"], "keys": keys}
        if old is not None:
            self._let_go(old["keys"])

    def get(self, peer: Peer, msg: Msg) -> dict[str, Any] | None:
        """The dataset called ``msg["name"]``, or None if there is none."""
        return self.datasets.get(_name(msg))

    def delete(self, peer: Peer, msg: Msg) -> None:
        """Unpublish ``msg["name"]`` (KeyError if there is no such dataset)."""
        name = _name(msg)
        if name not in self.datasets:
            raise KeyError(f"Dataset {name!r} not found")
        self._let_go(self.datasets.pop(name)["keys"])

    def restart(self, scheduler: Scheduler) -> None:
        """Everything was forgotten (``Client.restart``): the datasets went with it."""
        self.datasets.clear()
        self._holds.clear()
        self._drop_pseudo_client()

    def _hold(self, keys: list[Any]) -> None:
        new = []
        for key in keys:
            n = self._holds.get(key, 0)
            self._holds[key] = n + 1
            if not n:
                new.append(key)
        if new:
            self.scheduler.apply(se.ClientDesiresKeys(time.time(), PUBLISHED, new))

    def _let_go(self, keys: list[Any]) -> None:
        gone = []
        for key in keys:
            n = self._holds.get(key, 0) - 1
            if n > 0:
                self._holds[key] = n
            else:
                self._holds.pop(key, None)
                gone.append(key)
        if gone:
            self.scheduler.apply(se.ClientReleasesKeys(time.time(), PUBLISHED, gone))
        if not self._holds:
            self._drop_pseudo_client()

    def _drop_pseudo_client(self) -> None:
        # an idle scheduler closes only when no client is left (idle-timeout)
        if PUBLISHED in self.scheduler.state.clients:
            self.scheduler.apply(se.RemoveClient(time.time(), PUBLISHED))


def _name(msg: Msg) -> Hashable:
    name = msg["name"]
    hash(name)  # TypeError: a name from the wire must be a str, number or tuple
    return name  # type: ignore[no-any-return]
