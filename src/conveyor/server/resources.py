"""Worker resources as users write them: ``{"GPU": 2}`` or ``"GPU=2,MEM=10e9"``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from conveyor import config


def parse_resources(value: Any) -> dict[str, float]:
    """Resource amounts from a mapping or a ``"NAME=AMOUNT,NAME=AMOUNT"`` string.

    Amounts are finite numbers >= 0 (``10e9``, ``2``); in a string they may also be sizes
    (``"MEM=10GB"``). None or an empty value means no resources. ValueError names the
    first bad entry.
    """
    if value is None or value == "":
        return {}
    items: list[tuple[Any, Any]]
    if isinstance(value, str):
        items = []
        for part in value.replace(" ", ",").split(","):
            if not part:
                continue
            name, sep, amount = part.partition("=")
            if not sep or not name:
                raise ValueError(f"bad resource {part!r}: expected NAME=AMOUNT, e.g. GPU=2")
            items.append((name, amount))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError(
            f"resources must be a mapping or a 'NAME=AMOUNT,...' string, not {value!r}"
        )
    out: dict[str, float] = {}
    for name, amount in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a resource name must be a non-empty string, not {name!r}")
        out[name] = _amount(name, amount)
    return out


def _amount(name: str, amount: Any) -> float:
    if isinstance(amount, bool):
        raise ValueError(f"bad amount of resource {name!r}: {amount!r}")
    if isinstance(amount, str):
        try:
            number = float(amount)
        except ValueError:
            try:
                number = float(config.parse_size(amount) or 0)
            except (ValueError, TypeError):
                raise ValueError(f"bad amount of resource {name!r}: {amount!r}") from None
    elif isinstance(amount, (int, float)):
        number = float(amount)
    else:
        raise ValueError(f"bad amount of resource {name!r}: {amount!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"bad amount of resource {name!r}: {amount!r} (must be >= 0)")
    return number


def format_resources(resources: Mapping[str, float]) -> str:
    """The ``"NAME=AMOUNT,..."`` form of ``resources`` (for ``conveyor worker --resources``)."""
    return ",".join(f"{name}={amount!r}" for name, amount in resources.items())
