"""The one shape of a domain error that the web layer turns into `{"error": {"code", "message", "field"}}`."""
from __future__ import annotations


class FieldError(ValueError):
    """Bad input: a machine-readable `code`, a sentence for people, and the offending `field` (or None)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
