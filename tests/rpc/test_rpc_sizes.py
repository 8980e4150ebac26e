"""Sizes of values (``conveyor.rpc.sizes``) and sizes travelling with data (``rpc.data``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dask.sizeof import sizeof

import conveyor.rpc.data as data_mod
import conveyor.rpc.sizes as sizes_mod
from conveyor.protocol import dumps
from conveyor.rpc.data import SMALL, pack_data, unpack_data
from conveyor.rpc.sizes import SHALLOW_ITEMS, nbytes

pd = pytest.importorskip("pandas")


def _no_dask_sizeof(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(value: Any) -> int:
        raise AssertionError(f"dask's sizeof was asked about a {type(value).__name__}")

    monkeypatch.setattr(sizes_mod, "sizeof", refuse)


def _numeric_frame(rows: int = 1000) -> Any:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"k": rng.integers(0, 9, rows), "x": rng.random(rows)})


def test_a_numeric_frame_is_sized_from_its_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    df = _numeric_frame().iloc[::2]  # a non-range index counts too
    expected_data = df["k"].to_numpy().nbytes + df["x"].to_numpy().nbytes + df.index.nbytes
    _no_dask_sizeof(monkeypatch)
    size = nbytes(df)
    assert expected_data < size < expected_data + 2_000
    assert nbytes(df["x"]) >= df["x"].to_numpy().nbytes + df.index.nbytes


def test_the_estimate_is_close_to_dasks() -> None:
    df = _numeric_frame(10_000)
    assert abs(nbytes(df) - sizeof(df)) < 0.05 * sizeof(df)


def test_arrow_strings_are_sized_from_their_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame({"s": pd.array(["abc", "defgh"] * 500, dtype="string[pyarrow]")})
    _no_dask_sizeof(monkeypatch)
    assert nbytes(df) >= df["s"].array.nbytes >= 8 * 1000


@pytest.mark.parametrize(
    "make",
    [
        lambda: pd.DataFrame({"o": np.array([object(), "x"] * 50, dtype=object)}),
        lambda: pd.DataFrame({"c": pd.Categorical(["a", "b"] * 50)}),
        lambda: pd.DataFrame({"s": pd.array(["a", "b"] * 50, dtype="string[python]")}),
        lambda: _numeric_frame().set_index(["k", "x"]),  # a MultiIndex
        lambda: pd.DataFrame({"x": [1.0]}, index=pd.Index([object()], dtype=object)),
    ],
    ids=["object", "categorical", "python-strings", "multiindex", "object-index"],
)
def test_python_objects_and_odd_indexes_go_to_dask(make: Any) -> None:
    value = make()
    assert nbytes(value) == sizeof(value)


def test_a_frame_subclass_goes_to_dask() -> None:
    class Sub(pd.DataFrame):  # type: ignore[misc]
        pass

    value = Sub({"x": [1, 2, 3]})
    assert nbytes(value) == sizeof(value)


def test_shuffle_groups_are_the_sum_of_their_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    backends = pytest.importorskip("dask.dataframe.backends")
    frames = {i: _numeric_frame(100 * (i + 1)) for i in range(20)}
    groups = backends.ShuffleGroupResult(frames)
    total = sum(nbytes(df) for df in frames.values())
    _no_dask_sizeof(monkeypatch)
    size = nbytes(groups)
    assert total < size < total + 4_000  # the dict and its keys, counted once


def test_small_containers_sum_their_items_and_large_ones_go_to_dask() -> None:
    items = [_numeric_frame(10 * (i + 1)) for i in range(3)]
    assert nbytes(items) > sum(nbytes(df) for df in items)
    assert nbytes((1, "ab")) > 0
    many = list(range(SHALLOW_ITEMS + 1))
    assert nbytes(many) == sizeof(many)


def test_a_registered_size_wins_over_the_container_rule() -> None:
    class Sized(dict):  # type: ignore[type-arg]
        pass

    sizeof.register(Sized)(lambda d: 12_345)
    assert nbytes(Sized(a=1)) == 12_345


def test_anything_else_is_dasks_sizeof() -> None:
    array = np.ones(1000)
    assert nbytes(array) == sizeof(array)
    assert nbytes(b"x" * 100) == sizeof(b"x" * 100)


# ---------------------------------------------------------------- sizes travel with data


def test_known_sizes_travel_with_small_values(monkeypatch: pytest.MonkeyPatch) -> None:
    store = {"a": 1, "b": [1, 2], "c": 3}
    reply = pack_data(store, ["a", "b", "gone"], sizes={"a": 111, "b": 222})
    assert reply["missing"] == ["gone"]
    assert reply["small_sizes"] == [111, 222]

    def refuse(value: Any) -> int:
        raise AssertionError("measured again on receipt")

    monkeypatch.setattr(data_mod, "nbytes", refuse)
    values, sizes, missing = unpack_data(reply)
    assert values == {"a": 1, "b": [1, 2]}
    assert sizes == {"a": 111, "b": 222}
    assert missing == ["gone"]


def test_unknown_sizes_are_measured_and_decide_small_or_large() -> None:
    big = np.ones(SMALL)  # 8 bytes each: well over SMALL bytes
    store = {"small": 5, "big": big, "said-small": big}
    reply = pack_data(store, ["small", "big", "said-small"], sizes={"small": -1})
    assert set(reply["data"]) == {"big", "said-small"}  # no size given: measured
    values, sizes, _ = unpack_data(reply)
    assert sizes["small"] == nbytes(5)
    assert sizes["big"] >= big.nbytes
    np.testing.assert_array_equal(values["said-small"], big)
    # a size the sender knew is trusted: a value it calls small travels batched
    reply = pack_data(store, ["said-small"], sizes={"said-small": 10})
    assert reply["data"] == {}
    assert unpack_data(reply)[1] == {"said-small": 10}


def test_a_reply_without_sizes_is_measured_on_receipt() -> None:
    reply = {"data": {}, "missing": [], "small": dumps([("k", [1, 2, 3])])}
    values, sizes, _ = unpack_data(reply)
    assert values == {"k": [1, 2, 3]}
    assert sizes == {"k": nbytes(values["k"])}
