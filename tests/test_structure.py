"""The package's import direction: no circles, leaves stay leaves, nothing below the loop reaches up into it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slmtrain"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (function-level imports too)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[mod] |= {a.name for a in node.names if a.name.split(".")[0] == "slmtrain"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "slmtrain":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges[mod].add(full if full in files else base)
        edges[mod].discard(mod)
    return edges


GRAPH = _graph()


def test_the_graph_was_read() -> None:
    # Guards the checks below against passing on an empty or misread graph.
    assert {"slmtrain.run", "slmtrain.saving", "slmtrain.trainstate", "slmtrain.config"} <= GRAPH.keys()
    assert "slmtrain.saving" in GRAPH["slmtrain.run"] and "slmtrain.trainstate" in GRAPH["slmtrain.saving"]


def test_no_import_circles() -> None:
    # The package root is the API face over everything, so it is left out: a module importing the root
    # is checked separately below.
    graph = {m: {d for d in deps if d != "slmtrain"} for m, deps in GRAPH.items() if m != "slmtrain"}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_only_the_cli_imports_the_api_face() -> None:
    importers = sorted(m for m, deps in GRAPH.items() if "slmtrain" in deps)
    assert importers == ["slmtrain.__main__", "slmtrain.cli"] or importers == ["slmtrain.cli"], importers


@pytest.mark.parametrize("leaf", ["slmtrain.errors", "slmtrain.fsio", "slmtrain.log", "slmtrain.version",
                                  "slmtrain.manifest", "slmtrain.train", "slmtrain.state",
                                  "slmtrain.cpumatmul", "slmtrain.hostmem"])
def test_leaves_import_nothing_of_ours(leaf: str) -> None:
    assert GRAPH[leaf] == set(), GRAPH[leaf]


def test_config_and_model_stay_low() -> None:
    assert GRAPH["slmtrain.config"] <= {"slmtrain.errors"}
    assert GRAPH["slmtrain.model"] <= {"slmtrain.config", "slmtrain.headloss", "slmtrain.cpumatmul"}, \
        "the model knows nothing of training, data or checkpoints"
    assert GRAPH["slmtrain.headloss"] <= {"slmtrain.cpumatmul"}, "the head's products know only the matmul route"
    assert GRAPH["slmtrain.plot"] <= {"slmtrain.errors", "slmtrain.log"}, "plot reads files, imports no training code"


def test_nothing_below_the_loop_imports_it() -> None:
    # The loop (run) builds the state and hands it down; the saver, restorer, rollback and budget planning
    # receive it (TrainState, RunContext) and never reach back into the loop.
    importers = sorted(m for m, deps in GRAPH.items() if "slmtrain.run" in deps)
    assert importers == ["slmtrain"], importers
    for low in ("slmtrain.trainstate", "slmtrain.saving", "slmtrain.rollback", "slmtrain.budgeting"):
        assert not GRAPH[low] & {"slmtrain.run", "slmtrain.cli", "slmtrain.use_cli"}, (low, GRAPH[low])
    assert not GRAPH["slmtrain.trainstate"] & {"slmtrain.saving", "slmtrain.rollback", "slmtrain.budgeting"}
    assert not GRAPH["slmtrain.saving"] & {"slmtrain.rollback", "slmtrain.budgeting"}
