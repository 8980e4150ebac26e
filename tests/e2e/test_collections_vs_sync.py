"""Real dask collections on worker processes give what dask's synchronous scheduler gives.

Each computation runs twice: ``x.compute()`` on the default conveyor client (a
LocalCluster with two worker processes) and ``dask.compute(x, scheduler="sync")`` in this
process; the results must match exactly (or to float tolerance).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest

from conveyor import Client, LocalCluster

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as c,
    ):
        yield c


def both(x: Any) -> tuple[Any, Any]:
    """(result on the cluster, result of the synchronous scheduler)."""
    (expected,) = dask.compute(x, scheduler="sync")
    return x.compute(), expected


def same_array(x: Any) -> None:
    got, expected = both(x)
    np.testing.assert_allclose(got, expected)


def same_frame(x: Any, sort: bool = True) -> None:
    got, expected = both(x)
    if sort:
        got, expected = got.sort_index(), expected.sort_index()
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        pd.testing.assert_series_equal(got, expected)


# ---------------------------------------------------------------------- dask.array


@pytest.fixture(scope="module")
def arr() -> Any:
    return da.random.default_rng(42).random((300, 200), chunks=(50, 40))


def test_array_reductions(client: Client, arr: Any) -> None:
    for x in (arr.sum(), arr.mean(axis=0), arr.std(axis=1), arr.max(), arr.argmin(axis=0)):
        same_array(x)


def test_array_transpose_matmul_rechunk_slicing(client: Client, arr: Any) -> None:
    same_array(arr.T @ arr)
    same_array(arr.rechunk((100, 100)) + arr.T.T)
    same_array(arr[10:250:3, ::7])
    same_array(arr[arr[:, 0] > 0.5])


def test_array_random_with_a_seed_is_reproducible(client: Client) -> None:
    first = da.random.default_rng(7).normal(size=(100, 100), chunks=25).compute()
    second = da.random.default_rng(7).normal(size=(100, 100), chunks=25).compute()
    np.testing.assert_array_equal(first, second)
    same_array(da.random.default_rng(7).normal(size=(100, 100), chunks=25))


def test_array_map_blocks(client: Client, arr: Any) -> None:
    same_array(arr.map_blocks(lambda b: b * 2 + b.shape[0], dtype=arr.dtype))
    same_array(da.map_blocks(np.add, arr, arr, dtype=arr.dtype))


# ------------------------------------------------------------------ dask.dataframe


@pytest.fixture(scope="module")
def frame() -> Any:
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame(
        {
            "k": rng.integers(0, 20, 5000),
            "v": rng.random(5000),
            "w": rng.integers(0, 1000, 5000),
            "name": rng.choice(["a", "b", "c", "d"], 5000),
        }
    )
    return dd.from_pandas(pdf, npartitions=8)


def test_dataframe_groupby_aggregate(client: Client, frame: Any) -> None:
    same_frame(frame.groupby("k").agg({"v": "sum", "w": "max"}))
    same_frame(frame.groupby(["name", "k"]).v.mean())


def test_dataframe_merge(client: Client, frame: Any) -> None:
    right = dd.from_pandas(pd.DataFrame({"k": range(20), "label": [f"l{i}" for i in range(20)]}), 3)
    got, expected = both(frame.merge(right, on="k"))
    order = ["k", "v", "w"]
    pd.testing.assert_frame_equal(
        got.sort_values(order).reset_index(drop=True),
        expected.sort_values(order).reset_index(drop=True),
    )


def test_dataframe_set_index_and_sort_values(client: Client, frame: Any) -> None:
    same_frame(frame.set_index("w").v)
    got, expected = both(frame.sort_values(["w", "v"]))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))


def test_dataframe_rolling_and_value_counts(client: Client, frame: Any) -> None:
    same_frame(frame.v.rolling(5).mean(), sort=False)
    same_frame(frame.name.value_counts())


def test_dataframe_read_csv_and_parquet(client: Client, frame: Any, tmp_path: Path) -> None:
    # written by the worker processes, read back both ways
    frame.to_csv(str(tmp_path / "csv-*.csv"), index=False)
    assert len(list(tmp_path.glob("csv-*.csv"))) == frame.npartitions
    same_frame(dd.read_csv(str(tmp_path / "csv-*.csv")).groupby("k").v.sum())
    pytest.importorskip("pyarrow")
    frame.to_parquet(str(tmp_path / "pq"))
    same_frame(dd.read_parquet(str(tmp_path / "pq")).groupby("name").w.sum())


# ------------------------------------------------------------------------ dask.bag


def test_bag_map_filter_foldby_frequencies(client: Client) -> None:
    bag = db.from_sequence(range(1000), npartitions=7)
    got, expected = both(bag.map(lambda x: x * 3).filter(lambda x: x % 2 == 0))
    assert got == expected
    got, expected = both(bag.foldby(lambda x: x % 10, operator.add, 0))
    assert sorted(got) == sorted(expected)
    got, expected = both(bag.map(lambda x: x % 13).frequencies())
    assert sorted(got) == sorted(expected)


# -------------------------------------------------------------------- dask.delayed


def test_delayed_chains(client: Client) -> None:
    value = dask.delayed(1)
    for i in range(50):
        value = dask.delayed(operator.add)(value, i)
    got, expected = both(value)
    assert got == expected == 1 + sum(range(50))


def test_delayed_tree_reduction_of_a_thousand_leaves(client: Client) -> None:
    level = [dask.delayed(lambda i: i * i)(i) for i in range(1000)]
    while len(level) > 1:
        level = [
            dask.delayed(lambda *xs: reduce(operator.add, xs))(*level[i : i + 4])
            for i in range(0, len(level), 4)
        ]
    got, expected = both(level[0])
    assert got == expected == sum(i * i for i in range(1000))
