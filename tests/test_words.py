"""Words a newcomer understands: no tracker numbers ("issue 6", "(issue #5)") in code, comments, templates,
tests, benchmarks or docs. The reason for a rule is written out; its history lives in commit messages and
docs/performance.md. Shipped migration revision ids (strings such as "0009_issue9") are the one exception."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKER = re.compile(r"\bissues? ?#?\d+|\(#\d+\)", re.IGNORECASE)
REVISION_ID = re.compile(r"['\"]\d{4}_issue\d+['\"]")
WHERE = ["service", "tests", "bench", "docs", "migrations", "email_templates", ".ci"]
SUFFIXES = {".py", ".md", ".html", ".txt", ".css", ".toml", ".ini", ""}


def texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for top in WHERE:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts]
    return files


def test_no_tracker_numbers_anywhere() -> None:
    """Every line is read; only a quoted migration revision id may contain an issue number."""
    found = []
    for path in texts():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if TRACKER.search(REVISION_ID.sub("", line)) and path.name != "test_words.py":
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert found == []
