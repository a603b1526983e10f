"""The import graph is one-way: no cycles, and no layer imports a higher one.

Read from the source with ``ast`` (nothing is imported), counting every
import -- inside functions and ``TYPE_CHECKING`` blocks too: a cycle there
is still a cycle in the design.  The layer order is the one ARCHITECTURE.md
draws; a new package must be placed in it before it can land.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lmgate

ROOT = Path(lmgate.__file__).parent

#: Lowest first.  A module may import its own package and anything ranked below.
LAYERS = [
    "lmgate._errors",
    "lmgate._validate",
    "lmgate._backend",
    "lmgate.observability",
    "lmgate.security",
    "lmgate.context",
    "lmgate.policies",
    "lmgate.detect",
    "lmgate._endpoint",
    "lmgate.config",
    "lmgate.sim",
    "lmgate.transports",
    "lmgate.actors",
    "lmgate.scheduler",
    "lmgate.coordination",
    "lmgate.bench",
    "lmgate.events",
    "lmgate.prometheus",
    "lmgate.otel",
    "lmgate",
    "lmgate.cli",
    "lmgate.__main__",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges() -> dict[str, set[str]]:
    files = _modules()
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    src = node.module or ""
                targets = [
                    f"{src}.{a.name}" if f"{src}.{a.name}" in files else src for a in node.names
                ]
            edges[mod] |= {t for t in targets if t in files and t != mod}
    return edges


def _layer(module: str) -> int:
    best = -1
    for rank, prefix in enumerate(LAYERS):
        inside = module == prefix or module.startswith(prefix + ".")
        if inside and (best < 0 or len(prefix) > len(LAYERS[best])):
            best = rank
    assert best >= 0, f"{module} is in no layer: add its package to LAYERS"
    return best


def test_every_module_has_a_layer() -> None:
    """Each module of the package falls under one of the named layers."""
    for module in _modules():
        _layer(module)


def test_no_upward_imports() -> None:
    """A module imports only its own layer or lower ones."""
    bad = [
        f"{a} -> {b}" for a, targets in _edges().items() for b in targets if _layer(b) > _layer(a)
    ]
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    """No two modules reach each other through imports, at any depth."""
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not groups, f"import cycles: {groups}"


def test_policies_stay_sans_io() -> None:
    """Nothing in lmgate.policies imports actors, the scheduler, transports or I/O libraries."""
    for module, targets in _edges().items():
        if module.startswith("lmgate.policies"):
            assert not {t for t in targets if _layer(t) > _layer("lmgate.policies")}, module
    for module, path in _modules().items():
        if module.startswith("lmgate.policies"):
            text = path.read_text(encoding="utf-8")
            for lib in ("httpx", "psutil", "socket", "anyio"):
                assert f"import {lib}" not in text, (module, lib)


def test_top_level_stays_small() -> None:
    """At most 8 modules sit directly in ``lmgate/`` besides ``__init__.py``."""
    loose = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= 8, loose


def test_no_module_is_over_500_lines() -> None:
    """Modules stay one idea each: none grows past 500 lines."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert not long, long
