"""The one guard on what arrives from outside: JSON bodies (depth and size), form fields and request headers.

A deeply nested JSON document is tiny (2 KB of `[` is a thousand levels) yet makes a recursive parser or
any code that walks it run out of stack: an unhandled error instead of a clear answer. Every place that
reads JSON from outside (the signup webhook, the API, the provider webhooks, the SES message inside an
SNS notification) parses it with `load_json`, which refuses more than MAX_JSON_DEPTH levels with a
`BadInput` the caller turns into a 400. The form and header limits here are handed to Flask (app.py)
and gunicorn (server.py), so the numbers live in one place.
"""
from __future__ import annotations

import json

MAX_JSON_DEPTH = 32  # the deepest real payload (an SES event inside SNS) is under 10 levels
MAX_FORM_PARTS = 100  # fields in one form post; the console's largest form has fewer than 10
MAX_HEADER_FIELDS = 100  # request header lines (gunicorn's limit_request_fields)
MAX_HEADER_FIELD_BYTES = 8190  # one header line (gunicorn's limit_request_field_size)


class BadInput(ValueError):
    """Input refused before it reaches any domain code; `code` and `message` go into the 400."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """The parsed document, or BadInput("malformed_json" | "too_deep")."""
    try:
        doc = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's stack: certainly deeper than max_depth
        raise BadInput("too_deep", f"the JSON body is nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError, TypeError):
        raise BadInput("malformed_json", "the request body is not valid JSON") from None
    if depth(doc) > max_depth:
        raise BadInput("too_deep", f"the JSON body is nested more than {max_depth} levels deep")
    return doc


def depth(doc: object) -> int:
    """How many containers deep `doc` goes (a scalar is 0, `[]` is 1), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest
