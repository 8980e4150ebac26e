"""``Client.explain``: why a task is not running, or what it is doing (:class:`ExplainMixin`,
one of ``Client``'s bases)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.client.future import Future
from conveyor.client.graph import normalize_key

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape


class ExplainMixin:
    """The Client's ``explain``."""

    def explain(self: ClientShape, key_or_future: Any) -> Any:
        """One sentence from the scheduler about a task (a Future or a key): why it is
        not running yet, or what it is doing.

        It names what the task waits for: the dependencies not yet computed (a few keys
        and a count), the resource no worker can offer (how much it needs against the
        most any worker has) or that is busy, the restricted workers that are not
        connected, or the number of tasks queued ahead of it (root-task queuing). Or
        where it runs and for how long, which workers hold its result, the error it
        raised, or that the scheduler does not know the key. Awaitable for an
        asynchronous client.

        >>> client.explain(future)  # doctest: +SKIP
        "'train-0' cannot start yet: no worker has any GPU (it needs 1). It starts when
        such a worker joins"
        """
        key = key_or_future.key if isinstance(key_or_future, Future) else key_or_future
        return self.sync(self._request, {"op": "explain", "key": normalize_key(key)})
