"""Message schemas: wire dicts to and from the core's events and instructions.

Every message is a msgpack map with an ``"op"``. On a stream, messages travel in
batches (a list of maps per wire message). Opaque values (run specs, exceptions,
tracebacks) are passed through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from conveyor.core import events as se
from conveyor.core import instructions as si
from conveyor.core import worker_events as we

Msg = dict[str, Any]


# ------------------------------------------------------ scheduler -> worker/client


def scheduler_instruction_to_msg(instr: si.Instruction) -> Msg:
    """Encode a scheduler instruction as the message its recipient understands."""
    if type(instr) is si.ComputeTask:
        msg = {
            "op": "compute-task",
            "key": instr.key,
            "run_spec": instr.run_spec,
            "priority": instr.priority,
            "who_has": instr.who_has,
            "nbytes": instr.nbytes,
            "duration": instr.duration,
            "run_id": instr.run_id,
        }
        if instr.inline:
            msg["inline"] = True
        if instr.resources:
            msg["resources"] = instr.resources
        if instr.function is not None:
            msg["function"] = instr.function
            if instr.blobs:
                msg["blobs"] = instr.blobs
        return msg
    if isinstance(instr, si.FreeKeys):
        return {"op": "free-keys", "keys": instr.keys}
    if isinstance(instr, si.FreeFunctions):
        return {"op": "free-functions", "ids": instr.ids}
    if isinstance(instr, si.KeyInMemory):
        msg = {
            "op": "key-in-memory",
            "key": instr.key,
            "type": instr.type,
            "workers": instr.workers,
        }
        if instr.result is not None:
            msg["result"] = instr.result
        return msg
    if isinstance(instr, si.KeyErred):
        return {
            "op": "task-erred",
            "key": instr.key,
            "exception": instr.exception,
            "traceback": instr.traceback,
            "exception_text": instr.exception_text,
            "traceback_text": instr.traceback_text,
        }
    if isinstance(instr, si.LostData):
        return {"op": "lost-data", "key": instr.key}
    if isinstance(instr, si.KeysCancelled):
        msg = {"op": "cancelled-keys", "keys": instr.keys}
        if instr.reason:
            msg["reason"] = instr.reason
        return msg
    if isinstance(instr, si.AcquireReplicas):
        return {"op": "acquire-replicas", "who_has": instr.who_has, "nbytes": instr.nbytes}
    if isinstance(instr, si.RefreshWhoHas):
        return {"op": "refresh-who-has", "who_has": instr.who_has}
    if isinstance(instr, si.CloseWorker):
        return {"op": "close", "reason": instr.reason}
    raise TypeError(f"no wire form for {instr!r}")


def worker_event_from_msg(msg: Msg, now: float) -> we.WorkerEvent:
    """Decode a scheduler->worker stream message into a worker event."""
    op = msg["op"]
    if op == "compute-task":
        return we.ComputeTaskEvent(
            now,
            _hashable(msg["key"]),
            (msg.get("function"), msg["run_spec"]),
            tuple(msg["priority"]),
            _who_has(msg.get("who_has")),
            _sizes(msg.get("nbytes")),
            float(msg.get("duration", 0.5)),
            int(msg.get("run_id", 0)),
            bool(msg.get("inline", False)),
            resource_amounts(msg.get("resources")),
        )
    if op == "free-keys":
        return we.FreeKeysEvent(now, list(_keys(msg["keys"])))
    if op == "refresh-who-has":
        return we.RefreshWhoHasEvent(now, _who_has(msg["who_has"]))
    if op == "acquire-replicas":
        return we.AcquireReplicasEvent(now, _who_has(msg["who_has"]), _sizes(msg.get("nbytes")))
    raise ValueError(f"unknown worker op {op!r}")


# Decoders check what they can up front (keys hashable, numbers numbers, addresses
# strings), so that a malformed message is refused whole before any state changes.


def _who_has(value: Any) -> dict[Any, list[str]]:
    """Where each key is: a map of keys to lists of addresses. TypeError if malformed."""
    out: dict[Any, list[str]] = {}
    for key, addresses in dict(value or {}).items():
        if isinstance(addresses, (str, bytes)) or not all(isinstance(a, str) for a in addresses):
            raise TypeError(f"addresses of {key!r} must be a list of strings: {addresses!r}")
        out[key] = list(addresses)
    return out


def _sizes(value: Any) -> dict[Any, int]:
    """A map of keys to byte counts. TypeError or ValueError if malformed."""
    return {key: int(n) for key, n in dict(value or {}).items()}


# ------------------------------------------------------------ worker -> scheduler


def worker_instruction_to_msg(instr: we.WorkerInstruction) -> Msg:
    """Encode a worker's outgoing scheduler message."""
    if type(instr) is we.TaskFinishedMsg:
        return {
            "op": "task-finished",
            "key": instr.key,
            "nbytes": instr.nbytes,
            "type": instr.type,
            "start": instr.start,
            "stop": instr.stop,
            "run_id": instr.run_id,
        }
    if isinstance(instr, we.TaskErredMsg):
        return {
            "op": "task-erred",
            "key": instr.key,
            "exception": instr.exception,
            "traceback": instr.traceback,
            "exception_text": instr.exception_text,
            "traceback_text": instr.traceback_text,
            "start": instr.start,
            "stop": instr.stop,
            "run_id": instr.run_id,
        }
    if isinstance(instr, we.AddKeysMsg):
        return {"op": "add-keys", "keys": instr.keys}
    if isinstance(instr, we.MissingDataMsg):
        return {"op": "missing-data", "key": instr.key, "errant_worker": instr.errant_worker}
    if isinstance(instr, we.LongRunningMsg):
        return {"op": "long-running", "key": instr.key, "run_id": instr.run_id}
    if isinstance(instr, we.PausedMsg):
        return {"op": "worker-paused", "paused": instr.paused}
    raise TypeError(f"no wire form for {instr!r}")


def _task_finished(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.TaskFinished(
        now,
        w,
        _hashable(m["key"]),
        int(m["nbytes"]),
        m.get("type"),
        float(m["start"]),
        float(m["stop"]),
        int(m.get("run_id", 0)),
        m.get("result"),
    )


def _task_erred(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.TaskErred(
        now,
        w,
        _hashable(m["key"]),
        m.get("exception"),
        m.get("traceback"),
        str(m.get("exception_text", "")),
        str(m.get("traceback_text", "")),
        float(m.get("start", 0.0)),
        float(m.get("stop", 0.0)),
        int(m.get("run_id", 0)),
    )


def _add_keys(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.WorkerAddKeys(now, w, _sizes(m["keys"]))


def _missing_data(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.MissingData(now, w, _hashable(m["key"]), str(m["errant_worker"]))


def _long_running(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.TaskLongRunning(now, w, _hashable(m["key"]), int(m.get("run_id", 0)))


def _paused(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    paused = m["paused"]
    if not isinstance(paused, bool):
        raise TypeError(f"'paused' must be a bool, not {type(paused).__name__}")
    return se.WorkerPaused(now, w, paused)


def _memory_synced(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.WorkerMemorySynced(now, w, _keys(m.get("missing")), _keys(m.get("extra")))


def _heartbeat(w: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.WorkerHeartbeat(now, w, dict(m.get("metrics") or {}))


#: op -> constructor of the scheduler event for a message from a worker
WORKER_STREAM_OPS: dict[str, Callable[[str, Msg, float], se.SchedulerEvent]] = {
    "task-finished": _task_finished,
    "task-erred": _task_erred,
    "add-keys": _add_keys,
    "missing-data": _missing_data,
    "long-running": _long_running,
    "heartbeat-worker": _heartbeat,
    "worker-paused": _paused,
    "memory-synced": _memory_synced,
}


# ------------------------------------------------------------ client -> scheduler


def resource_amounts(
    value: Any, cache: dict[Any, dict[str, float]] | None = None
) -> dict[str, float] | None:
    """Resource amounts from the wire: a map of names to finite numbers >= 0 (zero
    amounts dropped); None when there are none. ``cache`` shares one dict between the
    tasks of a message that need the same (most tasks of an annotated graph do).
    ValueError if malformed."""
    if not value:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"resources must be a map of names to amounts, not {value!r}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name or isinstance(amount, bool):
            raise ValueError(f"bad resource {name!r}: {amount!r}")
        amount = float(amount)
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"bad amount of resource {name!r}: {amount!r}")
        if amount:
            out[name] = amount
    if not out:
        return None
    if cache is None:
        return out
    return cache.setdefault(tuple(sorted(out.items())), out)


def _priority(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"a priority must be a number, not {value!r}")
    return value


def _task_spec(t: Msg, cache: dict[Any, dict[str, float]] | None = None) -> se.TaskSpec:
    workers = t.get("workers")
    return se.TaskSpec(
        _hashable(t["key"]),
        t["spec"],
        _keys(t.get("deps")),
        int(t.get("order", 0)),
        _keys(workers) if workers else None,
        bool(t.get("allow_other_workers", False)),
        int(t.get("retries", 0)),
        t.get("fn"),
        resource_amounts(t.get("resources"), cache),
        _priority(t.get("priority")),
    )


def _hashable(key: Any) -> Any:
    """``key``, if it can be a key (a map or list from the wire cannot)."""
    hash(key)  # TypeError: malformed message
    return key


def _keys(items: Any) -> tuple[Any, ...]:
    return tuple(_hashable(k) for k in items or ())


#: most tasks the batches of one message may name by prefix and count (a message's byte
#: size is capped by the comm, but a count is not)
MAX_BATCH = 100_000


def _task_batch(b: Msg, budget: int) -> se.TaskBatch:
    """One batch; ``budget``: how many more keys this message may name by count."""
    if "prefix" in b:
        prefix, start, count = str(b["prefix"]), int(b["start"]), int(b["count"])
        if not 0 <= count <= budget:
            raise ValueError(f"a batch of {count} tasks (at most {MAX_BATCH} a message)")
        keys: list[Any] = [f"{prefix}-{i}" for i in range(start, start + count)]
        one_group = True
    else:
        keys = [_hashable(k) for k in b["keys"]]
        group = b.get("group")
        one_group = isinstance(group, str) and _one_group(group, keys)
    row_deps = b.get("row_deps")
    if row_deps is not None:
        if len(row_deps) != len(keys):
            raise ValueError(f"{len(row_deps)} rows of dependencies for {len(keys)} tasks")
        row_deps = [_keys(d) for d in row_deps]
    workers = b.get("workers")
    return se.TaskBatch(
        keys,
        str(b["function"]),
        str(b["chunk"]),
        _keys(b.get("deps")),
        row_deps,
        int(b.get("order", 0)),
        _keys(workers) if workers else None,
        bool(b.get("allow_other_workers", False)),
        int(b.get("retries", 0)),
        one_group,
        bool(b.get("wanted", True)),
        resource_amounts(b.get("resources")),
    )


def _one_group(prefix: str, keys: list[Any]) -> bool:
    """Whether every key is ``<prefix>-<token>``, the token one word and not all letters.

    dask's ``key_split`` then stops at the token, so every key is in the group of
    ``<prefix>-0``: checked here in a fraction of what splitting each key would cost.
    """
    head = prefix + "-"
    n = len(head)
    for key in keys:
        if type(key) is not str or not key.startswith(head):
            return False
        token = key[n:]
        if not token or "-" in token or token.isalpha():
            return False
    return True


def _update_graph(c: str, m: Msg, now: float) -> se.SchedulerEvent:
    cache: dict[Any, dict[str, float]] = {}
    tasks = [_task_spec(t, cache) for t in m.get("tasks") or ()]
    functions = dict(m.get("functions") or {})
    keys = _keys(m.get("keys"))
    batches: list[se.TaskBatch] = []
    budget = MAX_BATCH
    for b in m.get("batches") or ():
        batch = _task_batch(b, budget)
        if batch.one_group:
            budget -= len(batch.keys)
        batches.append(batch)
    priority = _priority(m.get("priority")) or 0
    return se.UpdateGraph(now, c, tasks, list(keys), priority, functions, batches)


def _desires(c: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.ClientDesiresKeys(now, c, list(_keys(m["keys"])))


def _releases(c: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.ClientReleasesKeys(now, c, list(_keys(m["keys"])))


def _cancel(c: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.CancelKeys(now, c, list(_keys(m["keys"])), bool(m.get("force", False)))


def _update_data(c: str, m: Msg, now: float) -> se.SchedulerEvent:
    return se.UpdateData(now, c, _who_has(m["who_has"]), _sizes(m.get("nbytes")))


#: op -> constructor of the scheduler event for a message from a client
CLIENT_STREAM_OPS: dict[str, Callable[[str, Msg, float], se.SchedulerEvent]] = {
    "update-graph": _update_graph,
    "client-desires-keys": _desires,
    "client-releases-keys": _releases,
    "cancel-keys": _cancel,
    "update-data": _update_data,
}
