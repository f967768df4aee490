"""The code stays legible as it grows: no function over 60 lines or with more than 8 parameters
in the shipped packages (benches and tests aside), and no import circle anywhere in the tree."""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("askexpert", "edge_node", "expert_hub", "trainer", "evaluation")
MAX_LINES, MAX_PARAMS = 60, 8


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []), *([a.kwarg] if a.kwarg else [])]
            if params and params[0].arg in ("self", "cls"):
                params = params[1:]
            yield node, node.end_lineno - node.lineno + 1, len(params)


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_are_short_with_few_parameters(package):
    too_big = [
        f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name} ({lines} lines, {params} parameters)"
        for p in _sources(package)
        for fn, lines, params in _functions(p)
        if lines > MAX_LINES or params > MAX_PARAMS
    ]
    assert not too_big, f"over {MAX_LINES} lines or {MAX_PARAMS} parameters: {too_big}"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_anywhere():
    """Every import between our own modules, those inside functions too, forms no cycle."""
    files = _sources(*PACKAGES, "bench", "tests")
    ours = {_module(p) for p in files}
    graph = nx.DiGraph()
    for p in files:
        me = _module(p)
        graph.add_node(me)
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph.add_edges_from((me, n) for n in names if n in ours and n != me)
    assert list(nx.simple_cycles(graph)) == []
