"""The import graph of the product: layers point one way, and no module imports itself back.

A request walks service -> rsa -> engine -> kernels and never back. Layers, lowest first:
kernels < engine < rsa < {service, evals} < cli. A module may import its own part and the
parts below it; rsa (the pure algorithm) sees only the engine's protocol; service and evals see
the engine only through its package face, protocol and settings, never an engine
implementation or vLLM. Read from the source with ``ast``, so nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"kernels": 0, "engine": 1, "rsa": 2, "service": 3, "evals": 3, "cli": 4}
FOLDERS = {"kernels": "kernels", "engine": "engine", "rsa": "rsa", "service": "service", "evals": "evals"}
# What the upper layers may take from the engine: its face, its protocol, its settings.
ENGINE_FACE = {"mrsa.engine", "mrsa.engine.base", "mrsa.engine.config"}


def _module_name(path: Path) -> str:
    if path.parts[len(ROOT.parts)] == "mrsa":
        rel = path.relative_to(ROOT / "mrsa").with_suffix("")
        return ".".join(("mrsa", *rel.parts)).removesuffix(".__init__")
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(("mrsa", *rel.parts)).removesuffix(".__init__")


def _sources() -> dict[str, Path]:
    files = list((ROOT / "mrsa").glob("*.py"))
    for folder in FOLDERS.values():
        files += (ROOT / folder).rglob("*.py")
    return {_module_name(p): p for p in files}


def _imports(path: Path, module: str) -> set[str]:
    """Every mrsa module ``path`` imports (``from x import y`` counts x and, if a module, x.y)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name == "mrsa" or name.startswith("mrsa.")}


def _part(module: str) -> str:
    second = module.split(".")[1] if "." in module else ""
    return second if second in FOLDERS else "cli"


SOURCES = _sources()
GRAPH = {m: {i for i in _imports(p, m) if i in SOURCES} for m, p in SOURCES.items()}


def test_the_product_is_found_and_read() -> None:
    assert {"mrsa.cli", "mrsa.service.app", "mrsa.rsa.plan", "mrsa.engine.local", "mrsa.kernels.cca.reference"} <= set(SOURCES)
    assert "mrsa.rsa.plan" in GRAPH["mrsa.rsa"]  # the face re-exports its parts


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_imports_point_down(module: str) -> None:
    part = _part(module)
    for target in sorted(GRAPH[module]):
        other = _part(target)
        if other == part or target == "mrsa":
            continue
        assert PARTS[other] < PARTS[part], f"{module} ({part}) imports {target} ({other}): a lower layer"
        if other == "engine" and part in ("rsa", "service", "evals"):
            allowed = {"mrsa.engine.base"} if part == "rsa" else ENGINE_FACE
            assert target in allowed, f"{module} reaches into the engine: {target} (allowed: {sorted(allowed)})"


def test_no_import_cycles() -> None:
    """Among modules (a package's face excluded: it only hands names on)."""
    graph = {m: {t for t in ts if not SOURCES[t].name == "__init__.py"} for m, ts in GRAPH.items()
             if SOURCES[m].name != "__init__.py"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_nothing_shipped_imports_the_benchmarks_research_or_vllm_above_the_engine() -> None:
    for module, path in SOURCES.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add((node.module or "").split(".")[0])
        if module != "mrsa.cli":  # `mrsa bench` imports them from a checkout, and says so
            assert "benchmarks" not in names, f"{module} imports benchmarks/ (not shipped)"
        assert "research" not in names, f"{module} imports research/ (not shipped)"
        if _part(module) in ("service", "evals"):
            assert not names & {"vllm", "torch"}, f"{module} imports {sorted(names & {'vllm', 'torch'})}"
        if _part(module) == "rsa":
            assert not names & {"fastapi", "vllm", "httpx", "torch"}, f"{module} is not pure"
