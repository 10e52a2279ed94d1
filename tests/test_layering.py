"""The folder is the map: `service/` is grouped by pipeline stage and data flows one way. Each package
imports only itself and the stages below it, nothing below the web layer imports a web framework, the
scheduler or the command line, and no two modules import each other, directly or round a loop."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "service"
# Lowest first. A module may import its own stage and any stage before it in this list.
STAGES = ["core", "campaigns", "enrollment", "transports", "audience", "compose", "feedback", "dispatch",
          "operator", "web", "wiring"]
FRAMEWORKS = ("flask", "werkzeug", "apscheduler", "gunicorn", "click")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in STAGES else "wiring"


def imports(path: Path, *, top_level_only: bool = False, root: Path = ROOT) -> set[str]:
    """Modules `path` (a file under `root`) imports, relative imports resolved, leaving out `if
    TYPE_CHECKING:` blocks (names for type hints only, never imported at run time). With `top_level_only`,
    imports inside functions are left out too: those cannot make an import loop at start-up."""
    tree = ast.parse(path.read_text())
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = _top_level(tree.body) if top_level_only else _walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _walk(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        yield child
        yield from _walk(child)


def _top_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from _top_level(node.body)
            yield from _top_level(getattr(node, "orelse", []))


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_sits_in_a_stage_package() -> None:
    """Only the wiring (app, cli, commands, runtime, scheduler, server and its gunicorn worker) lives at the top
    of service/."""
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top == ["__init__", "__main__", "app", "buffered_worker", "cli", "runtime", "scheduler", "server"]
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(
        [*(s for s in STAGES if s != "wiring"), "commands"])


def test_each_stage_imports_only_itself_and_the_stages_below() -> None:
    """A stage never reaches up: the core imports nothing else of Drip, the pass never imports the web."""
    known = modules()
    wrong = []
    for name, path in known.items():
        rank = STAGES.index(stage_of(name))
        for imported in imports(path):
            if imported.startswith("service.") and STAGES.index(stage_of(imported)) > rank:
                wrong.append(f"{name} ({stage_of(name)}) imports {imported} ({stage_of(imported)})")
    assert wrong == []


def test_nothing_below_the_web_layer_imports_a_framework() -> None:
    """Domain code takes a session and plain values; Flask, the scheduler and click stay at the edges."""
    wrong = [f"{name} imports {i}" for name, path in modules().items()
             if STAGES.index(stage_of(name)) < STAGES.index("web")
             for i in imports(path) if i.split(".")[0] in FRAMEWORKS]
    assert wrong == []


def test_no_import_cycles() -> None:
    """Following module-level imports from any module never comes back to it."""
    known = modules()
    graph = {name: {i for i in imports(path, top_level_only=True) if i in known and i != name}
             for name, path in known.items()}
    for name in graph:  # a package's __init__ is not a dependency of its own modules' imports
        graph[name] = {i for i in graph[name] if not name.startswith(i + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    """The import reader resolves relative imports, so an upward `from ..web import x` is caught. The probe
    is written under a copy of the layout in `tmp_path`, never into `service/`, where another test process
    scanning or copying the package would find it."""
    root = tmp_path / "service"
    path = root / "core" / "_probe.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ..web import admin\n")
    assert "service.web.admin" in imports(path, root=root)
    assert stage_of("service.web.admin") == "web"
