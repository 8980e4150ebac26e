"""The layering rules of docs/architecture.md, checked on the source: imports flow down."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"
LAYERS = [
    "core",
    "protocol",
    "comm",
    "rpc",
    "server",
    "deploy",
    "client",
    "diagnostics",
    "cli",
]
RANK = {name: i for i, name in enumerate(LAYERS)}
#: modules beside the layers, importable from comm upwards
NEUTRAL = {"config"}
FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "threading",
    "selectors",
    "ssl",
    "time",
    "tornado",
    "uvloop",
    "concurrent",
    "multiprocessing",
    "subprocess",
    "random",
    "pickle",
    "cloudpickle",
}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:  # imports only needed by the type checker count as top level
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top.update(map(id, node.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, id(node) in top))
    return out


def _layer(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_downwards(path: Path) -> None:
    layer = _layer(path)
    if layer not in RANK:
        return
    for module, line, _ in _imports(path):
        parts = module.split(".")
        if parts[0] != "conveyor" or len(parts) < 2:
            continue
        target = parts[1]
        if target in NEUTRAL:
            assert RANK[layer] >= RANK["comm"], f"{path}:{line} {layer} imports {module}"
        elif target in RANK:
            assert RANK[target] <= RANK[layer], f"{path}:{line}: {layer} imports {module}"


@pytest.mark.parametrize("path", sorted((SRC / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_has_no_io_threads_clocks_or_pickle(path: Path) -> None:
    for module, line, top_level in _imports(path):
        assert module.split(".")[0] not in FORBIDDEN_IN_CORE, f"{path.name}:{line} {module}"
        assert top_level or module.startswith("typing"), f"{path.name}:{line} local import"


#: server modules that run only in worker processes, which unpickle tasks and data (and
#: spilled values), and in nannies, which unpickle nanny plugins and run(nanny=True) calls
WORKER_SIDE = {
    "worker.py",
    "worker_control.py",
    "execute.py",
    "runner.py",
    "actors.py",
    "nanny.py",
    "spill.py",
}


#: a name part that deserializes (``preloads`` is not one: ``loads`` must start a part)
_DESERIALIZER = re.compile(r"(?:^|_)(?:loads|unpickle)")


def _deserializes(path: Path) -> bool:
    """Whether ``path`` names a loads/unpickle function or imports a pickle module."""
    for node in ast.walk(ast.parse(path.read_text())):
        name = getattr(node, "id", None) or getattr(node, "attr", None) or ""
        if _DESERIALIZER.search(name):  # loads, loads_function, unpickle_bytes...
            return True
    return any("pickle" in module or "serialize" in module for module, _, _ in _imports(path))


def test_scheduler_modules_never_deserialize() -> None:
    """The scheduler's state machine, server, plugins and extensions never name a
    loads/unpickle function, with one exception: ``server/remote_code.py``, which opens
    code from clients only on a scheduler whose operator allowed it."""
    server = [p for p in sorted((SRC / "server").rglob("*.py")) if p.name not in WORKER_SIDE]
    scheduler_side = [*sorted((SRC / "core").rglob("*.py")), *server]
    assert SRC / "server" / "scheduler.py" in scheduler_side
    offenders = {str(p.relative_to(SRC)) for p in scheduler_side if _deserializes(p)}
    assert offenders == {"server/remote_code.py"}


def test_client_imports_nothing_from_the_servers() -> None:
    """The client shares the ``rpc`` layer with the servers, not their modules: a client
    process needs no scheduler or worker code (LocalCluster, in ``deploy``, does)."""
    for path in sorted((SRC / "client").rglob("*.py")):
        for module, line, _ in _imports(path):
            assert not module.startswith("conveyor.server"), f"{path.name}:{line} {module}"
