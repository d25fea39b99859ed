"""The import graph read from the top of each file is the real one: no cycles between covidnetx's modules,
and an import inside a function only where it is marked ``# lazy: REASON`` (a heavy or optional
dependency, or a subcommand's module)."""
import ast

from tests.conftest import REPO

PACKAGES = ("covidnetx", "data_tools")


def _modules() -> dict:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out[name] = f
    return out


def _resolve(name: str, node: ast.ImportFrom, mods: dict, here: str, is_pkg: bool) -> list:
    base = node.module or ""
    if node.level:
        parts = here.split(".")[: len(here.split(".")) - node.level + (1 if is_pkg else 0)]
        base = ".".join(parts + ([base] if base else []))
    got = []
    for a in node.names:
        full = f"{base}.{a.name}"
        got.append(full if full in mods else base)
    return got


def _top_level_imports(mods: dict) -> dict:
    graph = {}
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                deps |= set(_resolve(name, node, mods, name, f.name == "__init__.py"))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = _top_level_imports(mods)
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package's __init__ importing its own submodules (to register them) is not a cycle of modules
    cycles = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_import_inside_a_function_says_why():
    unmarked = []
    for name, f in _modules().items():
        lines = f.read_text().splitlines()
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    text = " ".join(lines[inner.lineno - 1: inner.end_lineno])
                    if "# lazy:" not in text:
                        unmarked.append(f"{f.relative_to(REPO)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not sorted(set(unmarked)), "function-local imports without '# lazy: REASON':\n" + "\n".join(sorted(set(unmarked)))


def test_the_checks_see_a_cycle_and_an_unmarked_import(tmp_path, monkeypatch):
    """The two checks above can fail: a planted cycle and a planted unmarked import are reported."""
    import tests.test_imports as me
    pkg = tmp_path / "covidnetx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from covidnetx import b\n")
    (pkg / "b.py").write_text("import covidnetx.a\n\ndef f():\n    import json\n    return json\n")
    (tmp_path / "data_tools").mkdir()
    monkeypatch.setattr(me, "REPO", tmp_path)
    import pytest
    with pytest.raises(AssertionError, match="covidnetx.a -> covidnetx.b -> covidnetx.a"):
        me.test_no_import_cycles_between_modules()
    with pytest.raises(AssertionError, match=r"b.py:4: import json"):
        me.test_every_import_inside_a_function_says_why()
