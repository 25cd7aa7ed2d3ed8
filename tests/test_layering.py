"""One direction of dependencies (README, "Architecture"): every import of the project's own
modules, at top level or inside a function, read from the source with the AST, points down the
layers, and no two modules of a package import each other round in a circle.

    base          skyloop.frames, .rowlog, .autopilot, .inputs (pure Python, no project imports)
    sim           the C core's binding, the env, training, evaluation
    policy_export the exported policy and its contract
    flight, thrust_stand   (side by side: neither imports the other)
    calibration   fitting, sim-vs-real comparison, all plotting and reports
    cli           skyloop.cli, skyloop.verbs (compose the verbs), skyloop.__main__
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("skyloop", "sim", "policy_export", "flight", "thrust_stand", "calibration")
TOP = ("skyloop.cli", "skyloop.verbs", "skyloop.__main__")
RANK = {"base": 0, "sim": 1, "policy_export": 2, "flight": 3, "thrust_stand": 3, "calibration": 4, "cli": 5}


def layer(module: str) -> str:
    if any(module == t or module.startswith(t + ".") for t in TOP):
        return "cli"
    top = module.split(".")[0]
    return "base" if top == "skyloop" else top


def project_sources(root: str = ROOT) -> dict[str, str]:
    """{module name: source} of every .py file in the project's packages."""
    out = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, root)[:-3].split(os.sep)
                    with open(path, encoding="utf-8") as f:
                        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = f.read()
    return out


def imports(module: str, source: str, known: set[str], is_package: bool = False) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement anywhere in the source; `from P
    import name` counts as importing P.name when that is a module, else P."""
    edges = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, module)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            targets = [node.args[0].value]
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rpartition(".")[0]
            if t in known and (t, node.lineno) not in edges:
                edges.append((t, node.lineno))
    return edges


def graph(sources: dict[str, str]) -> dict[str, list[tuple[str, int]]]:
    known = set(sources)
    packages = {m for m in known if any(k.startswith(m + ".") for k in known)}
    return {m: imports(m, src, known, m in packages) for m, src in sources.items()}


def upward_edges(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports from a module to one in a higher layer, or to another package of the same layer."""
    bad = []
    for module, targets in edges.items():
        for target, line in targets:
            a, b = layer(module), layer(target)
            same_package = a == b and module.split(".")[0] == target.split(".")[0]
            if not same_package and RANK[b] >= RANK[a]:
                bad.append(f"{module}:{line} imports {target} ({a} -> {b})")
    return bad


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Groups of modules that import each other round a circle (Tarjan's strongly connected
    components). Importing a.b.c runs the packages a and a.b first: those are edges too, except
    to the importer's own packages (Python has them running already)."""
    def with_parents(m, targets):
        out = set()
        for t in targets:
            parts = t.split(".")
            out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        return sorted(t for t in out if t in edges and t != m and not m.startswith(t + "."))
    graph_ = {m: with_parents(m, [t for t, _ in ts]) for m, ts in edges.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph_.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph_):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def project_graph():
    return graph(project_sources())


def test_every_import_points_down_the_layers(project_graph):
    bad = upward_edges(project_graph)
    assert not bad, "upward imports (move the shared code down, or compose in skyloop/verbs/):\n  " + "\n  ".join(bad)


def test_no_modules_import_each_other_in_a_circle(project_graph):
    found = cycles(project_graph)
    assert not found, "import cycles (split out what both need):\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_the_walk_sees_every_package_and_function_level_imports(project_graph):
    assert {m.split(".")[0] for m in project_graph} == set(PACKAGES)
    # a function-level import the CLI relies on is seen (skyloop.verbs.fly draws with calibration)
    assert any(t == "calibration.flight_plot" for t, _ in project_graph["skyloop.verbs.fly"])


def test_a_planted_upward_import_fails_at_top_level_and_inside_a_function():
    sources = project_sources()
    for planted in ("from calibration.flight_plot import plot_flight\n",
                    "def later():\n    from flight.course import load_course\n    return load_course\n",
                    "def later():\n    import skyloop.cli\n"):
        bad = upward_edges(graph({**sources, "sim.planted": planted}))
        assert any(b.startswith("sim.planted:") for b in bad), planted
    # the base layer may import nothing of the project above it, not even sim
    bad = upward_edges(graph({**sources, "skyloop.planted": "import sim.core\n"}))
    assert [b for b in bad if b.startswith("skyloop.planted")] == ["skyloop.planted:1 imports sim.core (base -> sim)"]
    # and side by side is not down: flight may not import thrust_stand
    bad = upward_edges(graph({**sources, "flight.planted": "from thrust_stand.log import COLUMNS\n"}))
    assert [b for b in bad if b.startswith("flight.planted")] == [
        "flight.planted:1 imports thrust_stand.log (flight -> thrust_stand)"]


def test_a_planted_cycle_is_found():
    sources = {"flight.a": "def f():\n    from flight import b\n", "flight.b": "import flight.a\n", "flight": ""}
    assert cycles(graph(sources)) == [["flight.a", "flight.b"]]
    assert cycles(graph({**sources, "flight.b": ""})) == []
    # through a package's __init__: a imports p.q, which runs p, whose __init__ imports a
    sources = {"flight": "", "flight.a": "from flight.p.q import x\n", "flight.p": "from flight.a import y\n",
               "flight.p.q": "x = 1\n"}
    assert cycles(graph(sources)) == [["flight.a", "flight.p"]]
