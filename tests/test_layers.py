"""The layering of the package (CONTRIBUTING.md): no import runs up a layer, no import circle, no module
left out of the table. Read from the source with ``ast``; nothing is imported."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "finetune"
TABLE = re.compile(r"<!-- layers: begin.*?-->\n(.*?)<!-- layers: end -->", re.S)


def layer_table() -> list[list[str]]:
    """The module prefixes of each layer, bottom first, as CONTRIBUTING.md lists them."""
    rows = TABLE.search((ROOT / "CONTRIBUTING.md").read_text()).group(1).strip().splitlines()[2:]
    return [re.findall(r"`([\w.]+)`", row.split("|")[2]) for row in reversed(rows)]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (in functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def layer_of(module: str, table: list[list[str]]) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(table) for prefix in prefixes  # `finetune`: itself
               if module == prefix or (module.startswith(prefix + ".") and prefix != PACKAGE.name)]
    assert matches, f"{module} is in no layer of CONTRIBUTING.md's table: add it to one"
    return max(matches)[1]  # the longest prefix decides


def test_every_module_has_a_layer_and_imports_only_downwards():
    table, found = layer_table(), modules()
    assert len(table) >= 5
    upward = []
    for module, path in found.items():
        own = layer_of(module, table)
        for target in imports(module, path, set(found)):
            if layer_of(target, table) > own:
                upward.append(f"{module} (layer {own}) imports {target} (layer {layer_of(target, table)})")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    found = modules()
    graph = {module: imports(module, path, set(found)) for module, path in found.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk must see imports inside functions, relative ones included, or the tests above prove nothing."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..pipeline import run\n    import finetune.resolve\n")
    known = {"finetune.pipeline", "finetune.resolve", "finetune.data.m"}
    assert imports("finetune.data.m", source, known) == {"finetune.pipeline", "finetune.resolve"}
    table = layer_table()
    assert (layer_of("finetune.data.m", table) < layer_of("finetune.pipeline", table)
            < layer_of("finetune.resolve", table))
