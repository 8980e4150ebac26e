"""Calling a function a client sent (``Client.run``, ``run_on_scheduler``) and packing
the outcome for the reply: the result pickled, or the exception pickled with its
traceback, so that the client raises what the function raised.

Nothing here unpickles: the caller has opened the function already (on a worker, or in
:mod:`conveyor.server.remote_code` on a scheduler that allows it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from conveyor.protocol import pack_exception, pickle_bytes


def accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` names a parameter ``name`` (``dask_worker``, ``dask_scheduler``)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):  # no signature (some builtins)
        return False
    param = parameters.get(name)
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def error_reply(error: BaseException) -> dict[str, Any]:
    """The reply for a call that raised ``error``."""
    tb = error.__traceback__
    exception, traceback = pack_exception(error, tb.tb_next if tb is not None else None)
    return {
        "status": "error",
        "exception": exception,
        "traceback": traceback,
        "text": f"{type(error).__name__}: {error}",
    }


async def call_packed(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Call ``func`` on the running event loop (awaiting it if it returns an awaitable)
    and pack the outcome: ``{"status": "OK", "result": pickle}`` or an error reply."""
    try:
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        data = pickle_bytes(result)
    except Exception as e:
        return error_reply(e)
    return {"status": "OK", "result": data}
