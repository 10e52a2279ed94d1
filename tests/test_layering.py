"""The domain core never imports the web framework or the scheduler: data flows one way."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = ["signups", "campaigns", "dispatch", "compose", "events", "suppression", "unsubscribe", "reporting",
        "accounts", "tokens", "ratelimit", "models", "db", "config", "metrics"]
FORBIDDEN = ("flask", "werkzeug", "apscheduler", "gunicorn", "service.web", "service.app", "service.cli")


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(("service." if node.level else "") + (node.module or ""))
    return found


def test_core_modules_do_not_import_frameworks() -> None:
    """signups, dispatch, compose, events and friends take a session and plain values only."""
    root = Path(__file__).resolve().parent.parent / "service"
    for name in CORE:
        bad = [i for i in imports(root / f"{name}.py") if i.startswith(FORBIDDEN)]
        assert bad == [], f"service/{name}.py imports {bad}"
