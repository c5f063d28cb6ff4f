"""The package's shape, read from its source with `ast`: which module may import which, and
how big the modules may grow. Nothing is imported or run, so they need no stack, and each
failure names the offending modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "stock_assets"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
MAX_MODULE_LINES = 350
# The one module outside local/ that may import it (see the test that says how).
COMMAND_LINE = f"{PACKAGE}.cli"
# The Dagster layer only wires pipeline/ to Dagster and reports; it should stay small.
DAGSTER_LAYER = ("definitions", "assets", "checks", "sensors", "resources", "jobs", "sharded")
# issue 15: about 600; the downstream assets of issue 17 add 42; the sharded job of issue 18
# (sharded.py, 120 lines, plus its setting and its place in definitions.py) about 125; the
# marker sensor's wait while one of its runs is queued (a stream of markers) 16; the sensor that
# sends again the emails SNS refused (sns_redelivery) 11
MAX_DAGSTER_LAYER_LINES = 787


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _import_nodes(node: ast.AST, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        elif deferred or not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            found += _import_nodes(child, deferred)
    return found


def _import_statements(module: str, deferred: bool = True) -> list[tuple[str, list[str]]]:
    """(module imported from, names imported) for every import statement of the module, inside
    functions too unless `deferred` is False (a deferred import still ties two modules together
    for whoever reads or changes them). A plain `import x.y` imports no names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _import_nodes(tree, deferred):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{target}" if target else base
            found.append((target, [alias.name for alias in node.names]))
    return found


def _imports(module: str, deferred: bool = True) -> set[str]:
    """The modules this one imports. `from stock_assets import settings` is the module
    stock_assets.settings, not the package's `__init__`."""
    found: set[str] = set()
    for target, names in _import_statements(module, deferred):
        submodules = {f"{target}.{name}" for name in names} & MODULES.keys()
        found |= submodules
        if not names or len(submodules) < len(names):
            found.add(target)
    return found


IMPORTS: dict[str, set[str]] = {module: _imports(module) for module in MODULES}


def _internal(module: str) -> set[str]:
    """The package's own modules this one imports."""
    return {target for target in IMPORTS[module] if target in MODULES and target != module}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles() -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), as a path
    through it that returns to its start, so the failure shows the chain of imports."""
    graph = {module: sorted(_internal(module)) for module in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return [_cycle_path(graph, component) for component in components]


def _cycle_path(graph: dict[str, list[str]], component: list[str]) -> list[str]:
    """A shortest import chain from the component's first module back to itself."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in graph[module]:
            if target == start:
                return [*paths[module], start]
            if target in members and target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    return component


def _non_blank_lines(module: str) -> int:
    return sum(1 for line in MODULES[module].read_text().splitlines() if line.strip())


def _is_dagster(module: str) -> bool:
    top = module.split(".")[0]
    return top == "dagster" or top.startswith("dagster_")


def test_the_graph_sees_the_package():
    # Guards the tests below against passing because they read nothing.
    assert {f"{PACKAGE}.settings", f"{PACKAGE}.definitions", f"{PACKAGE}.local.stack"} <= set(
        MODULES
    )
    assert any(_internal(module) for module in MODULES)
    assert any(_is_dagster(target) for module in MODULES for target in IMPORTS[module])


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_production_code_never_imports_the_local_stack():
    local = f"{PACKAGE}.local"
    offenders = {
        module: sorted(t for t in IMPORTS[module] if _within(t, local))
        for module in MODULES
        if not _within(module, local) and module != COMMAND_LINE
    }
    offenders = {module: targets for module, targets in offenders.items() if targets}
    assert not offenders, f"modules outside {local} importing it: {offenders}"


def test_the_command_line_loads_the_local_stack_only_for_its_commands():
    # `stock-assets demo/dev/stack/notifications` run the dev stack, so cli.py may import
    # local/, but only inside those commands: provision, trigger and iam must not load it.
    local = f"{PACKAGE}.local"
    eager = sorted(t for t in _imports(COMMAND_LINE, deferred=False) if _within(t, local))
    assert not eager, f"{COMMAND_LINE} imports {eager} at module level"


def test_pipeline_is_free_of_dagster():
    offenders = {
        module: sorted(t for t in IMPORTS[module] if _is_dagster(t))
        for module in MODULES
        if _within(module, f"{PACKAGE}.pipeline")
    }
    offenders = {module: targets for module, targets in offenders.items() if targets}
    assert not offenders, f"pipeline modules importing Dagster: {offenders}"


def test_no_private_dagster_imports():
    # Dagster's underscored modules and names change without notice between releases.
    offenders: dict[str, list[str]] = {}
    for module in MODULES:
        for target, names in _import_statements(module):
            private = [f"{target}.{n}" for n in names if n.startswith("_")]
            if any(part.startswith("_") for part in target.split(".")[1:]):
                private.append(target)
            if _is_dagster(target) and private:
                offenders.setdefault(module, []).extend(private)
    assert not offenders, f"modules importing Dagster's private API: {offenders}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = _non_blank_lines(module)
    assert lines <= MAX_MODULE_LINES, (
        f"{module} has {lines} non-blank lines (at most {MAX_MODULE_LINES}): split it"
    )


def test_dagster_layer_size():
    sizes = {name: _non_blank_lines(f"{PACKAGE}.{name}") for name in DAGSTER_LAYER}
    total = sum(sizes.values())
    by_size = sorted(sizes.items(), key=lambda item: -item[1])
    assert total <= MAX_DAGSTER_LAYER_LINES, (
        f"the Dagster layer has {total} non-blank lines (at most {MAX_DAGSTER_LAYER_LINES}): "
        + ", ".join(f"{name}.py {lines}" for name, lines in by_size)
    )
