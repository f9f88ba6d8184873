"""The package reads as its data flow: one folder per stage, imports only run down the stages.

The layer order is the README's "Layout"; a module may import its own folder and the folders
before it, never one after it. Imports under ``if TYPE_CHECKING:`` are annotations, not arrows.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "casbi_store"
LAYERS = ["plots", "store", "mock", "surrogate", "compose", "learn", "apply", "evaluation", "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, inner.end_lineno + 1))
    return lines


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("casbi_store.")}


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_top_level_holds_only_the_package_face():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a stage folder: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS)


def test_imports_only_run_down_the_stages():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        if module == "casbi_store":
            continue
        rank = LAYERS.index(_layer(module))
        for target in _imports(module, path, modules):
            if target != "casbi_store" and LAYERS.index(_layer(target)) > rank:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {m: {t for t in _imports(m, p, modules) if t in modules and t != m}
             for m, p in modules.items()}
    # a package's __init__ re-exporting its own modules is not a circle of jobs
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []
