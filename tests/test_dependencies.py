"""What is installed where: every package a module of service/ imports is in the runtime lock (the
production install), except the optional extra, imported only by the module that needs it; every
package the tests, bench and migrations import is in some lock; the locks are layered without overlap,
every entry hashed, and every directly imported package declared in pyproject.toml."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ["requirements.lock", "requirements-redis.lock", "requirements-dev.lock"]
# An optional extra's package and the only modules allowed to import it (loaded only when the setting
# that needs it is set: DRIP_RATE_LIMIT_STORAGE=redis://...). SES needs none: Drip signs its requests.
EXTRA_IMPORTERS = {"redis": {"service/audience/ratelimit.py"}}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(filename: str) -> dict[str, str]:
    """name -> the entry's text, for one lock file."""
    text = (ROOT / filename).read_text()
    starts = [(m.start(), norm(m.group(1))) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.M)]
    return {name: text[pos:(starts[i + 1][0] if i + 1 < len(starts) else len(text))]
            for i, (pos, name) in enumerate(starts)}


def imported_distributions(folder: str) -> dict[str, set[str]]:
    """Distribution -> the files under `folder` that import it (absolute imports of non-stdlib modules)."""
    owners = packages_distributions()
    local = {"service", "tests", "bench", "conftest", "fakes", "tlshelp", "common"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local or (path.parent / f"{top}.py").exists():
                    continue
                for dist in owners.get(top, [f"<no installed package provides {top}>"]):
                    found.setdefault(norm(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_service_imports_only_the_runtime_set_and_extras_where_allowed() -> None:
    """A module under service/ that imports a package outside the runtime lock fails here: it would crash
    the production install (`make install`, `pip install --require-hashes -r requirements.lock`)."""
    runtime = set(locked("requirements.lock"))
    outside = {dist: files for dist, files in imported_distributions("service").items() if dist not in runtime}
    extras = {dist: files for dist, files in outside.items() if files <= EXTRA_IMPORTERS.get(dist, set())}
    assert {d: sorted(f) for d, f in outside.items() if d not in extras} == {}
    for dist in extras:
        assert dist in set(locked("requirements-redis.lock"))


def test_the_extras_are_imported_only_when_their_setting_is_used() -> None:
    """Importing every module of the service (SES's transport included) never imports an extra or botocore;
    the one module that needs redis imports it inside the functions that use it."""
    import importlib
    import pkgutil

    import service

    for info in pkgutil.walk_packages(service.__path__, "service."):
        if info.name != "service.__main__":
            importlib.import_module(info.name)
    # In a fresh interpreter: this one may hold them already, imported by other tests.
    probe = ("import importlib, pkgutil, sys, service\n"
             "for info in pkgutil.walk_packages(service.__path__, 'service.'):\n"
             "    if info.name != 'service.__main__': importlib.import_module(info.name)\n"
             "print(sorted({n.split('.')[0] for n in sys.modules} & {'redis', 'botocore'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
    ratelimit = ast.parse((ROOT / "service/audience/ratelimit.py").read_text())
    assert not any(isinstance(n, ast.Import) and any(a.name == "redis" for a in n.names) for n in ratelimit.body)
    transports = (ROOT / "service/transports/__init__.py").read_text()
    assert "import_module" in transports and "from service.transports.ses" not in transports


def test_the_audit_and_the_installs_read_every_lock_and_no_other() -> None:
    """`.ci/audit` checks the locks that exist, each once (a lock it still named after it was removed made
    pip-audit fail and report nothing); `make install-dev` installs the same set."""
    audit = re.findall(r"-r (\S+\.lock)", (ROOT / ".ci" / "audit").read_text())
    assert sorted(audit) == sorted(LOCKS) == sorted(p.name for p in ROOT.glob("requirements*.lock"))
    dev = re.search(r"^DEV_LOCKS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert dev is not None and sorted(dev.group(1).split()) == sorted(LOCKS)


def test_tests_bench_and_migrations_import_only_locked_packages() -> None:
    everything = set().union(*(locked(f) for f in LOCKS))
    for folder in ("tests", "bench", "migrations"):
        missing = {d: sorted(f) for d, f in imported_distributions(folder).items() if d not in everything}
        assert missing == {}, folder


def test_every_directly_imported_package_is_declared() -> None:
    """click, itsdangerous, jinja2, werkzeug come with Flask, but Drip imports them itself: a Flask release
    that dropped one would break Drip, so each is a declared dependency with its own bounds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {norm(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}
    extras = {name: {norm(re.split(r"[\[<>=!~; ]", s, maxsplit=1)[0]) for s in specs}
              for name, specs in project["optional-dependencies"].items()}
    used = set(imported_distributions("service"))
    assert used - declared - extras["redis"] == set()
    assert extras["redis"] == {"redis"} and set(extras) == {"redis", "test"}
    assert any(spec.startswith("itsdangerous") and "<3" in spec for spec in project["dependencies"])


def test_locks_are_layered_hashed_and_agree_with_pyproject() -> None:
    """No package in two layers (one version each); every entry hashed; the runtime lock holds every
    runtime dependency and none of the test tools or extras."""
    layers = [locked(f) for f in LOCKS]
    seen: dict[str, str] = {}
    for filename, entries in zip(LOCKS, layers, strict=True):
        for name, entry in entries.items():
            assert name not in seen, f"{name} is in {seen.get(name)} and {filename}"
            seen[name] = filename
            assert "--hash=sha256:" in entry, f"{filename}: {name} has no hash"
    runtime = set(layers[0])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        assert norm(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0]) in runtime, spec
    assert runtime.isdisjoint({"pytest", "playwright", "ruff", "hypothesis", "schemathesis", "botocore", "redis"})
