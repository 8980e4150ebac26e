"""An actor's object as its worker holds it (see :mod:`conveyor.server.actors`).

Shared by the client, which submits :func:`make_actor` as an actor's task, and the
worker, which serves calls on the instance it holds.
"""

from __future__ import annotations

from typing import Any


class ActorInstance:
    """An actor's object as a worker holds it: it cannot be pickled, so it never moves."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> Any:
        raise TypeError(
            f"an actor ({type(self.obj).__name__}) lives on its worker and cannot be "
            "copied or moved: call its methods through its Actor handle instead of "
            "passing its future to another task"
        )

    def __repr__(self) -> str:
        return f"<ActorInstance of {type(self.obj).__name__}>"


def make_actor(cls: Any, *args: Any, **kwargs: Any) -> ActorInstance:
    """The task an actor's future computes: its instance, kept where it was made."""
    return ActorInstance(cls(*args, **kwargs))
