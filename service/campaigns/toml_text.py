"""campaign.toml written back from its parsed values, for a campaign edited in the console (the standard
library reads TOML but does not write it). Comments of the original file are not kept."""
from __future__ import annotations

import json

# The order of the top-level keys as docs/campaigns.md lists them; any other key follows.
ORDER = ("title", "from", "timezone", "send_hour", "send_days", "consent", "why", "reply_to", "digest", "utm",
         "continue_into", "continue_at", "double_opt_in", "confirm_subject")


def dumps(data: dict) -> str:
    """TOML text that `tomllib.loads` reads back as `data` (strings, integers, booleans, lists of those,
    tables, and the [[steps]] array of tables)."""
    scalars = sorted((k for k, v in data.items() if not _is_table(k, v) and k != "steps"),
                     key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    out = [f"{_key(k)} = {_value(data[k])}" for k in scalars]
    for name, table in data.items():
        if _is_table(name, table):
            out += ["", f"[{_key(name)}]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    for step in data.get("steps", []):
        out += ["", "[[steps]]", *(f"{_key(k)} = {_value(v)}" for k, v in step.items())]
    return "\n".join(out) + "\n"


def _is_table(name: str, value: object) -> bool:
    return isinstance(value, dict) and name != "utm"  # `utm` reads best inline, as the documentation writes it


def _key(name: str) -> str:
    return name if name and all(c.isalnum() or c in "-_" for c in name) else json.dumps(name)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes (\" \\ \n \t \uXXXX) are TOML basic-string escapes too
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to campaign.toml")
