"""The package's shape: no import circles between its modules (function-level imports count),
and no private name imported from another module (tests, jobs and benchmarks included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from bsm_ray... import names` in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bsm_ray"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("bsm_ray")]
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "bsm_ray").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for target, names in _imports(path):
            for t in [target, *(f"{target}.{n}" for n in names)]:
                if t in files and t != module:
                    graph[module].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circles():
    graph = _graph()
    assert "bsm_ray.train.batches" in graph["bsm_ray.train.streaming"]  # the graph is real
    assert _cycles(graph) == []


def test_ingestion_imports_nothing_of_the_training_data_side():
    """Files -> shards (bsm_ray/ingest) comes before shards -> batches (bsm_ray/data): data
    imports ingest (its contract module, shards.py, above all), never the other way."""
    graph = _graph()
    ingest = [m for m in graph if m.startswith("bsm_ray.ingest.")]
    assert "bsm_ray.ingest.shards" in ingest and "bsm_ray.ingest.shards" in graph[
        "bsm_ray.data.stream_plan"]  # fmt: skip
    for module in ingest:
        wrong = sorted(t for t in graph[module] if t.startswith("bsm_ray.data."))
        assert wrong == [], (module, wrong)


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for folder in ("bsm_ray", "tests", "jobs", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for target, names in _imports(path):
                offenders += [f"{path.relative_to(ROOT)}: {target}.{n}" for n in names
                              if n.startswith("_") and n != "__version__"]  # fmt: skip
    assert offenders == []


def test_library_code_logs_through_logging_in_the_familiar_format(capsys):
    """No bare print in the package (cli.py is the jobs' own output); the default handler
    prints `[bsm_ray] ...` lines to whatever stdout is at the time."""
    prints = []
    for path in (ROOT / "bsm_ray").rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                prints.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert prints == []

    from bsm_ray.log import get_logger

    get_logger("bsm_ray.train.loop").info("model logo: 4,933,125 parameters")
    get_logger("bsm_ray.train.loop").debug("not shown at the default level")
    assert capsys.readouterr().out == "[bsm_ray] model logo: 4,933,125 parameters\n"
