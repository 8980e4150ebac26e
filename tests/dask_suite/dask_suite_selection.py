"""Which of dask's tests run on the cluster, and which are excluded and why.

Test ids read ``dask/<module path>::<test name>[<parameters>]``. An id without
``[...]`` covers every parametrization of the test; in an id with ``*``, the ``*``
matches anything. Every entry carries a one-line reason.
"""

from __future__ import annotations

#: the full selection: dask test modules, relative to the dask package directory
FULL = [
    "array/tests/test_reductions.py",
    "array/tests/test_slicing.py",
    "array/tests/test_creation.py",
    "array/tests/test_rechunk.py",
    "array/tests/test_random.py",
    "array/tests/test_linalg.py",
    "array/tests/test_routines.py",
    "array/tests/test_ufunc.py",
    "dataframe/tests/test_groupby.py",
    "dataframe/tests/test_shuffle.py",
    "dataframe/tests/test_multi.py",
    "dataframe/tests/test_indexing.py",
    "dataframe/tests/test_rolling.py",
    "dataframe/tests/test_reshape.py",
    "bag/tests/test_bag.py",
    "bag/tests/test_random.py",
    "tests/test_delayed.py",
]

#: the subset .ci/test runs: a few minutes on 2 cores (modules, or single tests by id)
CI = [
    "array/tests/test_slicing.py",
    "array/tests/test_rechunk.py",
    "array/tests/test_random.py",
    "array/tests/test_ufunc.py",
    "dataframe/tests/test_shuffle.py",
    "dataframe/tests/test_multi.py",
    "dataframe/tests/test_indexing.py",
    "dataframe/tests/test_reshape.py",
    *(
        f"dataframe/tests/test_groupby.py::{name}"
        for name in (
            "test_groupby_multilevel_getitem",
            "test_apply_or_transform_shuffle",
            "test_hash_groupby_aggregate",
            "test_groupby_get_group",
        )
    ),
    "bag/tests/test_bag.py",
    "bag/tests/test_random.py",
    "tests/test_delayed.py",
]

_WORKER_WARNING = "expects a warning in the test process; it is raised in a worker process"
_STALE_XFAIL = "XPASS(strict) under dask's own synchronous scheduler too (stale xfail in dask)"
_IDENTITY = "compares results by object identity; results from worker processes are copies"

#: not run: they fail whatever the scheduler, or are not about the scheduler at all
DESELECT: dict[str, str] = {
    "dask/bag/tests/test_bag.py::test_temporary_directory": (
        "asserts the disk shuffle's partd files are still there after compute; on a "
        "cluster (conveyor or distributed) the partd store is freed, its directory removed"
    ),
    "dask/dataframe/tests/test_groupby.py::test_groupby_aggregate_categorical_observed"
    "[cov-*-observed-groupby1-*]": _STALE_XFAIL,
    "dask/dataframe/tests/test_groupby.py::test_groupby_aggregate_categorical_observed"
    "[corr-*-observed-groupby1-*]": _STALE_XFAIL,
    "dask/tests/test_delayed.py::test_p2p_as_delayed": "runs its own dask.distributed "
    "cluster; importing distributed.utils_test deep-copies dask.config (holding client.get)",
}

#: run, and expected to fail on any multi-process scheduler (conveyor and distributed)
XFAIL_MULTIPROCESS: dict[str, str] = {
    "dask/array/tests/test_reductions.py::test_array_cumreduction_axis"
    "[blelloch-None-*cumprod]": _WORKER_WARNING,
    "dask/array/tests/test_reductions.py::test_nanquantile_all_nan": _WORKER_WARNING,
    "dask/array/tests/test_routines.py::test_average_raises": _WORKER_WARNING,
    "dask/array/tests/test_ufunc.py::test_frompyfunc": "the graph holds a numpy "
    "frompyfunc ufunc, which cannot be pickled",
    "dask/dataframe/tests/test_shuffle.py::test_disk_shuffle_with_unknown_compression": (
        "sets dataframe.shuffle.compression in the test process; worker processes do "
        "not see the test's dask.config"
    ),
    "dask/bag/tests/test_bag.py::test_to_delayed_optimize_graph": "counts calls of a "
    "monkeypatched function in the test process; the calls happen in worker processes",
    "dask/bag/tests/test_bag.py::test_repartition_partition_size_complex_dtypes": (
        "bag's assert_eq compares lists of arrays with ==, which holds only for the very "
        "same array objects"
    ),
    "dask/bag/tests/test_bag.py::test_bag_with_single_callable": _IDENTITY,
    "dask/bag/tests/test_bag.py::test_reductions_are_lazy": "the graph holds a generator "
    "(cannot be pickled) and the test reads a closure the task mutates",
    "dask/tests/test_delayed.py::test_traverse_false": _IDENTITY,
    "dask/tests/test_delayed.py::test_callable_obj": _IDENTITY,
}

#: conveyor bugs this suite found: expected to fail on conveyor only, strictly, so that
#: a fix shows up as XPASS(strict) until its entry goes
CONVEYOR_BUGS: dict[str, str] = {}

#: conveyor differs from dask's local schedulers on purpose (the lead's call)
CONVEYOR_BY_DESIGN: dict[str, str] = {
    "dask/bag/tests/test_bag.py::test_bag_compute_forward_kwargs": "Client.get refuses "
    "keywords it does not know (TypeError); distributed and dask's schedulers ignore them",
    "dask/tests/test_delayed.py::test_delayed_compute_forward_kwargs": "Client.get refuses "
    "keywords it does not know (TypeError); distributed and dask's schedulers ignore them",
}
