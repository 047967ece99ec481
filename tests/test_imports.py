"""The package's shape: no import circle anywhere in ttx/ (imports inside functions count), and
the docs' strategy table is the registry's."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _modules() -> dict[str, Path]:
    mods = {}
    for base, prefix in ((REPO / "ttx", "ttx"), (REPO / "commands", "ttx.cli")):
        for f in base.rglob("*.py"):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = f
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level \
                    else (node.module or "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def test_no_import_circle():
    graph = _graph(_modules())
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_docs_strategy_table_is_the_registry():
    import re

    from ttx.tts.registry import STRATEGIES

    text = (REPO / "docs" / "tts-run.md").read_text(encoding="utf-8")
    table = text[text.index("| strategy | what it does |"):].split("\n\n")[0]
    names = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert names == list(STRATEGIES)
