"""Finding futures inside nested containers and putting results back in their place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from conveyor.client.future import Future

_MISSING = object()


def collect_futures(obj: Any) -> list[Future]:
    """Every Future inside ``obj`` (lists, tuples, sets, dict values), depth first."""
    out: list[Future] = []
    _collect(obj, out)
    return out


def _collect(obj: Any, out: list[Future]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _collect(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, out)


def substitute(obj: Any, data: dict[Any, Any], skip: set[Any]) -> Any:
    """``obj`` with every Future replaced by its value; futures in ``skip`` are dropped."""
    value = _sub(obj, data, skip)
    return None if value is _MISSING else value


def _sub(obj: Any, data: dict[Any, Any], skip: set[Any]) -> Any:
    if isinstance(obj, Future):
        return _MISSING if obj.key in skip else data[obj.key]
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [v for v in (_sub(x, data, skip) for x in obj) if v is not _MISSING]
        if isinstance(obj, list):
            return items
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        out = {k: _sub(v, data, skip) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v is not _MISSING}
    return obj


def as_list(workers: str | Iterable[str] | None) -> list[str] | None:
    """``workers=`` as a list: one name or address, or several, or None for any."""
    if workers is None:
        return None
    if isinstance(workers, str):
        return [workers]
    return list(workers)


def flatten_keys(keys: Any) -> Iterator[Any]:
    """The keys inside nested lists of keys, in order (a key may be a tuple)."""
    if isinstance(keys, list):
        for k in keys:
            yield from flatten_keys(k)
    else:
        yield keys
