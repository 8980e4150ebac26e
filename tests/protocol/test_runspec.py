"""Argument chunks (``CallChunk``) and how a worker turns a run spec into a callable."""

from __future__ import annotations

import operator

import pytest
from dask._task_spec import TaskRef

from conveyor.protocol import (
    CallChunk,
    FunctionStore,
    dumps_function,
    dumps_spec,
    pickle_bytes,
    unpickle_bytes,
)
from conveyor.server.execute import run_task


def store(chunk: CallChunk, func: object = operator.add) -> FunctionStore:
    functions = FunctionStore()
    functions.add("f", dumps_function(func))
    functions.add("c", dumps_spec(chunk))
    return functions


def test_rows_of_a_chunk_run_with_the_shared_keyword_arguments() -> None:
    functions = store(CallChunk("f", [(1, 2), (3, 4)], {}, False))
    assert run_task("k-1", ("c", 1), {}, functions).value == 7
    assert run_task("k-0", ("c", 0), {}, functions).value == 3


def test_parsed_rows_take_dependencies_from_the_task_inputs() -> None:
    def scaled(x: int, y: int, factor: int = 1) -> int:
        return (x + y) * factor

    chunk = CallChunk("f", [(TaskRef("a"), 1)], {"factor": TaskRef("b")}, True)
    functions = store(chunk, scaled)
    assert run_task("k", ("c", 0), {"a": 10, "b": 3}, functions).value == 33


def test_a_bad_row_or_a_missing_function_fails_the_task_not_the_worker() -> None:
    functions = store(CallChunk("f", [(1, 2)], {}, False))
    out = run_task("k", ("c", 5), {}, functions)
    assert not out.ok and "no row 5" in out.exception_text
    lost = FunctionStore()
    lost.add("c", dumps_spec(CallChunk("gone", [(1, 2)], {}, False)))
    out = run_task("k", ("c", 0), {}, lost)
    assert not out.ok and "KeyError" in out.exception_text
    notfunc = store(CallChunk("f", [(1,)], {}, False), func=42)
    assert "not a function" in run_task("k", ("c", 0), {}, notfunc).exception_text


def test_a_chunk_survives_pickling() -> None:
    chunk = CallChunk("f", [(1,), ("x",)], {"a": None}, False)
    back = unpickle_bytes(pickle_bytes(chunk))
    assert isinstance(back, CallChunk) and len(back) == 2
    assert (back.function, back.rows, back.kwargs, back.parsed) == (
        "f",
        [(1,), ("x",)],
        {"a": None},
        False,
    )


@pytest.mark.parametrize("index", [-1, 2])
def test_out_of_range_indices_are_refused(index: int) -> None:
    with pytest.raises(IndexError):
        CallChunk("f", [(1,), (2,)], {}, False).task("k", index, print)
