"""dumps/loads of user data, function pickling caches, in-band helpers."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from conveyor.protocol import (
    Serialized,
    dumps,
    dumps_function,
    loads,
    loads_function,
    pickle_bytes,
    unpickle_bytes,
)


class CustomError(Exception):
    pass


def test_plain_object_round_trip() -> None:
    obj = {"a": [1, 2.5, "x"], ("t", 1): None}
    ser = dumps(obj)
    assert ser.buffers == []
    assert ser.nbytes == len(ser.header)
    assert loads(ser) == obj


def test_large_array_is_out_of_band_and_not_copied() -> None:
    arr = np.arange(100_000, dtype="i8")
    ser = dumps(arr)
    assert len(ser.buffers) == 1
    assert np.shares_memory(np.frombuffer(ser.buffers[0], dtype="i8"), arr)
    assert ser.nbytes > arr.nbytes
    np.testing.assert_array_equal(loads(ser), arr)


def test_small_array_stays_in_band() -> None:
    arr = np.arange(100, dtype="i8")
    ser = dumps(arr)
    assert ser.buffers == []
    np.testing.assert_array_equal(loads(ser), arr)


def test_non_contiguous_array() -> None:
    arr = np.arange(200_000, dtype="i8")[::2]
    np.testing.assert_array_equal(loads(dumps(arr)), arr)


def test_fortran_array_out_of_band() -> None:
    arr = np.asfortranarray(np.arange(100_000, dtype="f8").reshape(100, 1000))
    ser = dumps(arr)
    assert len(ser.buffers) == 1
    np.testing.assert_array_equal(loads(ser), arr)


def test_received_buffers_give_writable_arrays() -> None:
    arr = np.arange(100_000, dtype="f8")
    ser = dumps(arr)
    received = Serialized(
        memoryview(bytearray(ser.header)),
        [memoryview(bytearray(b)) for b in ser.buffers],
    )
    back = loads(received)
    assert isinstance(back, np.ndarray)
    assert back.flags.writeable
    back[0] = 42.0


def test_lambda_and_closure() -> None:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    lam = loads(dumps(lambda x: x * 2))
    closure = loads(dumps(add))
    assert callable(lam) and lam(4) == 8
    assert callable(closure) and closure(1) == 11


def test_local_class_instance() -> None:
    class Local:
        def __init__(self) -> None:
            self.value = 3

    back = loads(dumps(Local()))
    assert back.value == 3  # type: ignore[attr-defined]


def test_unpicklable_object_gives_clear_type_error() -> None:
    with pytest.raises(TypeError, match=r"type dict: cannot pickle .*lock") as info:
        dumps({"lock": threading.Lock()})
    assert info.value.__cause__ is not None


def test_exceptions_round_trip() -> None:
    for exc in [ValueError("bad", 1), CustomError("custom"), KeyError(("k", 1))]:
        back = unpickle_bytes(pickle_bytes(exc))
        assert type(back) is type(exc)
        assert isinstance(back, BaseException) and back.args == exc.args


def test_pickle_bytes_falls_back_to_cloudpickle() -> None:
    back = unpickle_bytes(pickle_bytes(lambda: "hi"))
    assert callable(back) and back() == "hi"
    with pytest.raises(TypeError, match="Could not serialize"):
        pickle_bytes(threading.Lock())


def test_dumps_function_is_cached_per_function() -> None:
    def f(x: int) -> int:
        return x + 1

    first = dumps_function(f)
    assert dumps_function(f) is first
    g = loads_function(first)
    assert g(1) == 2
    assert loads_function(first) is g
    assert loads_function(memoryview(first)) is g


def test_functions_closing_over_big_data_are_not_cached() -> None:
    big = b"x" * 1_000_000

    def f() -> int:
        return len(big)

    first = dumps_function(f)
    second = dumps_function(f)
    assert first == second and first is not second
    assert loads_function(first) is not loads_function(first)
    assert loads_function(first)() == 1_000_000


class UnhashableCallable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnhashableCallable)

    def __call__(self) -> str:
        return "called"


def test_dumps_function_handles_unhashable_callables() -> None:
    data = dumps_function(UnhashableCallable())
    assert loads_function(data)() == "called"


def test_loads_function_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="callable"):
        loads_function(pickle.dumps([1, 2]))


def test_dumps_function_error_is_clear() -> None:
    class Bad:
        def __reduce__(self) -> str:
            raise RuntimeError("nope")

        def __call__(self) -> None:
            pass

    with pytest.raises(TypeError, match="Could not serialize object of type Bad: nope"):
        dumps_function(Bad())


def test_values_of_script_classes_travel_by_value_to_other_processes() -> None:
    import subprocess
    import sys

    from conveyor.protocol.serialize import dumps, pickle_bytes

    # a class as a script defines it: module __main__, found there by plain pickle
    script: dict[str, object] = {"__name__": "__main__"}
    exec("class ScriptPoint:\n    def __init__(self, x):\n        self.x = x\n", script)
    point = script["ScriptPoint"]
    main = sys.modules["__main__"]
    main.ScriptPoint = point
    try:
        ser = dumps([point(41), np.ones(20_000)])  # type: ignore[operator]
        small = pickle_bytes(point(7))  # type: ignore[operator]
    finally:
        delattr(main, "ScriptPoint")
    assert ser.buffers  # large buffers still travel out of band
    code = (
        "import pickle, sys\n"
        "h, b, s = pickle.loads(sys.stdin.buffer.read())\n"
        "p, arr = pickle.loads(h, buffers=[b])\n"
        "print(p.x + pickle.loads(s).x + int(arr.sum()))\n"
    )
    payload = pickle.dumps((ser.header, bytes(ser.buffers[0]), small))
    out = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, check=False, timeout=60
    )
    assert out.stdout.decode().strip() == "20048", out.stderr.decode()
