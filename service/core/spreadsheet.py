"""One rule for every CSV Drip writes (the console's send log, `drip export-subscribers`): a cell must stay
text when a spreadsheet opens it."""
from __future__ import annotations

# Spreadsheets run a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...), and a
# reader's name or address is whatever the reader typed. A leading apostrophe makes the cell plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    return "'" + text if text[:1] in FORMULA_STARTS else text
