"""The package's imports run one way (docs/architecture.md): no cycle, lazy imports included, and each
lower layer imports nothing above it. Read from the source with ast, so a function-level import counts."""

import ast
from pathlib import Path

import sinkscope

ROOT = Path(sinkscope.__file__).parent
PIPELINES = ("cli", "commands", "probe", "chain", "verdicts", "experts", "peers", "intervene", "intervene_massive",
             "demo", "stream", "train", "report")
LOWER = {  # layer -> top-level names it must never import
    "capture": PIPELINES + ("interventions",),
    "interventions": PIPELINES,
    "metrics": PIPELINES + ("capture", "interventions", "adapters", "config", "criteria", "loading", "data"),
    "adapters": PIPELINES + ("capture", "interventions", "metrics"),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, name: str, package: str, modules) -> set[str]:
    """The package modules that ``source`` (module ``name`` in ``package``) imports, in either form:
    ``from x import y`` (relative or absolute) and plain ``import sinkscope.x`` (``as`` or not)."""
    deps = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in modules)
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
        deps.update(subs or ([target] if target in modules else []))
    deps.discard(name)
    return deps


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py") if "assets" not in p.parts}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = _imports(path.read_text(), name, package, modules)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_import_reader_sees_every_form_of_import():
    modules = {"sinkscope.metrics.sink", "sinkscope.probe", "sinkscope.capture.sink", "sinkscope.verdicts",
               "sinkscope.chain"}
    source = ("def lazy():\n    import sinkscope.probe\n    import sinkscope.capture.sink as s\n"
              "from ..verdicts import reduce_sink\nfrom sinkscope import chain\nimport torch\n")
    assert _imports(source, "sinkscope.metrics.sink", "sinkscope.metrics", modules) == {
        "sinkscope.probe", "sinkscope.capture.sink", "sinkscope.verdicts", "sinkscope.chain"}


def test_no_import_cycle_in_the_package():
    assert _cycles(_graph()) == []


def test_lower_layers_import_nothing_above_them():
    wrong = []
    for name, deps in _graph().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in LOWER:
            continue
        for dep in deps:
            top = dep.split(".")[1] if "." in dep else ""
            if top in LOWER[parts[1]]:
                wrong.append(f"{name} -> {dep}")
    assert wrong == []
